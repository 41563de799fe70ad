"""`cebench bench [NAME]`: the one table of benchmarks (`BENCHES`) and the run that records them.

Each benchmark is a module of this package named as its command; it measures and returns a dict.
`run_bench` runs one (or `all`), merges its numbers into `OUT/bench.json` (one key per benchmark, each
with the machine and date it was measured on, so running one keeps the others) and rewrites
`OUT/bench.md` from the whole file (`tables.summary_markdown`). GPU numbers are recorded when a GPU is
at hand. `benchmarks/cli.py` registers the command without importing this package and calls `main`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cebench.errors import CebenchError
from cebench.io import atomic_write_json, atomic_write_text
from cebench.runtime import machine_info

from .demo import compare_demo_runs
from .folder import bench_folder
from .knn import bench_knn
from .pretrain import bench_pretrain
from .profile import bench_profile
from .reference import compare_reference
from .retrieval import bench_retrieval
from .tables import summary_markdown
from .training import bench_training
from .transfer import bench_transfer


@dataclass(frozen=True)
class Options:
    """The command's options a benchmark may read."""

    device: str = "auto"
    quick: bool = False               # fewer repetitions, small sizes (the tests)
    reference: str | None = None      # reference: the port's model.py
    knn_n: int = 200_000              # knn: database vectors
    photos: int = 1000                # folder: photos in the generated folder
    old: str | None = None            # demo: the two reports
    new: str | None = None


@dataclass(frozen=True)
class Bench:
    run: Callable[[Path, Options], dict]   # (its own JSON file, options) -> its numbers
    in_all: bool = True                    # `all` (the default) runs it, when what it needs is given
    needs: tuple[str, ...] = ()            # Options fields it cannot run without ...
    missing: str = ""                      # ... and the one line said when they are not given


BENCHES: dict[str, Bench] = {
    "pretrain": Bench(lambda out, o: bench_pretrain(out, device=o.device, quick=o.quick)),
    "transfer": Bench(lambda out, o: bench_transfer(out, device=o.device, quick=o.quick)),
    "retrieval": Bench(lambda out, o: bench_retrieval(out, device=o.device, quick=o.quick)),
    "training": Bench(lambda out, o: bench_training(out, device=o.device, quick=o.quick)),
    "knn": Bench(lambda out, o: bench_knn(out, n=o.knn_n, quick=o.quick)),
    "folder": Bench(lambda out, o: bench_folder(out, n_photos=o.photos, quick=o.quick)),
    "reference": Bench(lambda out, o: compare_reference(o.reference, out, quick=o.quick), needs=("reference",),
                       missing="bench reference needs --compare-reference PATH (the port's model.py)"),
    # minutes of its own: only by name
    "profile": Bench(lambda out, o: bench_profile(out, quick=o.quick), in_all=False),
    # reads two finished runs: only by name
    "demo": Bench(lambda out, o: compare_demo_runs(o.old, o.new, out), in_all=False, needs=("old", "new"),
                  missing="bench demo needs --old REPORT --new REPORT (two `cebench run` reports of one command)"),
}
NAMES = ("all", *BENCHES)  # what `cebench bench` accepts


def _given(bench: Bench, opts: Options) -> bool:
    return all(getattr(opts, field) for field in bench.needs)


def selected(which: str, opts: Options) -> list[str]:
    """The benchmarks `cebench bench WHICH` runs, in table order; `pretrain` with --compare-reference
    adds the side-by-side reference step."""
    if which not in NAMES:
        raise CebenchError(f"unknown benchmark {which!r}; choose from {', '.join(NAMES)}")
    if which == "all":
        return [n for n, b in BENCHES.items() if b.in_all and _given(b, opts)]
    if not _given(BENCHES[which], opts):
        raise CebenchError(BENCHES[which].missing)
    return [which, "reference"] if which == "pretrain" and opts.reference else [which]


def run_bench(which: str, out_dir: Path, opts: Options = Options()) -> dict:
    """Run one benchmark (or "all") and merge its numbers into out_dir/bench.json and bench.md."""
    names = selected(which, opts)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "bench.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    machine = machine_info()  # read once: every section of this run names it, and the file's header
    for name in names:
        t0 = time.time()
        print(f"[bench] {name} ...", flush=True)
        data[name] = BENCHES[name].run(out_dir / f"bench_{name}.json", opts)
        print(f"[bench] {name} done in {time.time() - t0:.1f}s", flush=True)
        # each section keeps the machine and date it ran on: bench.json merges runs of several days and CPUs
        data.setdefault("measured_on", {})[name] = {"cpu": machine.get("cpu"), "date": time.strftime("%Y-%m-%d")}
    data["machine"] = machine
    data["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    atomic_write_json(path, data)
    atomic_write_text(out_dir / "bench.md", summary_markdown(data))
    print(f"[bench] wrote {path} and {out_dir / 'bench.md'}")
    return data


def main(args) -> int:
    """`cebench bench` (the parsed arguments of benchmarks/cli.py)."""
    opts = Options(device=args.device, quick=args.quick, reference=args.compare_reference, knn_n=args.n,
                   photos=args.photos, old=args.old, new=args.new)
    run_bench(args.which, Path(args.out or "results"), opts)
    return 0
