"""Performance code, in one place: `cebench bench [NAME]` and the prepared GPU check.

One module per benchmark, named as its command (`cebench bench pretrain` is `pretrain.py`, ... `demo.py`),
beside what they share: `bench.py` (the table of benchmarks, `BENCHES`, and the run that merges their
numbers into results/bench.json), `tables.py` (results/bench.md), `timing.py` (the one timing helper) and
`gpu_check.py` (`python -m cebench.benchmarks.perf.gpu_check`, behind scripts/gpu_check.sh).

Every benchmark times the code that trains: the trainers' own model builders, optimiser builders and
step functions. Nothing outside this package imports it (`cebench run` never does); the `cebench bench`
subcommand imports it when it runs (`benchmarks/cli.py`).
"""
