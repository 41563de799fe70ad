"""Performance code has one home, `benchmarks/perf/` (`cebench.benchmarks.perf`): every benchmark module
lives there, nothing else imports it, `cebench run` never loads it, `cebench bench` reads its names from
the one table (`BENCHES`), and its one timing helper counts what it says it counts."""

from __future__ import annotations

import argparse
import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from cebench.benchmarks import cli
from cebench.benchmarks.perf import bench, timing
from cebench.errors import CebenchError

ROOT = Path(__file__).resolve().parents[1]
PERF = ROOT / "benchmarks" / "perf"
SOURCE = ("cebench", "pretrain", "transfer", "retrieval", "benchmarks")  # the package's folders


def _sources() -> list[Path]:
    return [p for folder in SOURCE for p in sorted((ROOT / folder).rglob("*.py"))]


def _cebench_modules_after(argv: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`cebench ARGV` in a fresh interpreter: the process and the `cebench.*` modules it had imported."""
    code = ("import sys\nfrom cebench.benchmarks.cli import main\n"
            f"try:\n    rc = main({argv!r})\nexcept SystemExit as e:\n    rc = e.code\n"
            "print('LOADED', ' '.join(sorted(m for m in sys.modules if m.startswith('cebench.'))))\n"
            "sys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("LOADED"), last
    return proc, last.split()[1:]


def test_cebench_run_imports_no_benchmark_module(tmp_path):
    proc, loaded = _cebench_modules_after(["run", "--config", "tiny", "--dry-run", "--out", str(tmp_path / "run")],
                                          tmp_path)
    assert ": cebench " in proc.stdout  # it planned the run's jobs
    last = [m.split(".")[-1] for m in loaded]
    perf = [m for m, name in zip(loaded, last) if m.startswith("cebench.benchmarks.perf") or (
        name != "benchmarks" and any(w in name for w in ("throughput", "bench", "profile", "timing")))]
    assert perf == []


def test_every_performance_module_lives_under_perf():
    named = [p.relative_to(ROOT).as_posix() for p in _sources()
             if PERF not in p.parents and any(w in p.stem for w in ("throughput", "bench", "profile", "timing"))]
    assert not named, named
    assert {p.stem for p in PERF.glob("*.py")} >= {*bench.BENCHES, "bench", "tables", "timing", "gpu_check"}


def test_nothing_outside_perf_imports_it():
    """The CLI loads it by name (`cli.PERF`) when `cebench bench` runs; no import statement reaches it."""
    found = []
    for path in _sources():
        if PERF in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):  # `from . import perf` -> ".perf"
                targets = [f"{node.module or ''}.{a.name}" for a in node.names]
            else:
                continue
            found += [f"{path.relative_to(ROOT)}:{node.lineno} {t}" for t in targets if "perf" in t.split(".")]
    assert not found, found
    assert cli.PERF == bench.__name__


def test_bench_names_come_from_the_one_table(capsys):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["bench"]
    which = next(a for a in sub._actions if a.dest == "which")
    assert list(which.choices) == ["all", *bench.BENCHES] == list(bench.NAMES)
    assert parser.parse_args(["bench", "knn", "--quick"]).which == "knn"
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["bench", "nope"])
    assert exc.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


def test_all_runs_the_table_minus_what_needs_more():
    opts = bench.Options()
    assert bench.selected("all", opts) == ["pretrain", "transfer", "retrieval", "training", "knn", "folder"]
    with_ref = bench.Options(reference="model.py")
    assert bench.selected("all", with_ref)[-1] == "reference" and "profile" not in bench.selected("all", with_ref)
    assert bench.selected("pretrain", with_ref) == ["pretrain", "reference"]
    assert bench.selected("profile", opts) == ["profile"]
    with pytest.raises(CebenchError, match="--old REPORT --new REPORT"):
        bench.selected("demo", bench.Options(old="a"))
    with pytest.raises(CebenchError, match="unknown benchmark 'nope'"):
        bench.selected("nope", opts)


def test_timed_and_clock_count_calls_and_seconds(monkeypatch):
    ticks = iter(range(100))
    monkeypatch.setattr(timing.time, "perf_counter", lambda: float(next(ticks)))  # one second a reading
    calls = []
    out, secs = timing.timed(lambda: calls.append(1) or len(calls), "cpu", repeat=3, warmup=2)
    # 2 untimed calls, then 3 between two clock readings (0 and 1): the last call's result, 1 second
    assert (len(calls), out, secs) == (5, 5, 1.0)
    clock = timing.Clock([(range(4),), (range(4),), (range(2),)])
    assert [len(item[0]) for item in clock] == [4, 4, 2]
    # from the first batch on (the readings 2 then 3): the 6 images after it in 1 second
    assert (clock.n, clock.first, clock.rate()) == (10, 4, 6.0)
    assert timing.rate(7, 0.0) == 7e9  # a zero time counts as one nanosecond


def test_each_command_imports_only_the_stage_that_owns_it(tmp_path):
    """`COMMANDS` names, for every command, the module that registers it (checked by registering each module
    alone), and `cebench pretrain` / `cebench transfer` start without importing the other stages' CLIs."""
    for module in dict.fromkeys(cli.COMMANDS.values()):
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register(sub, cli.common_parser())
        assert sorted(sub.choices) == sorted(c for c, m in cli.COMMANDS.items() if m == module), module
    assert sorted(cli.build_parser()._subparsers._group_actions[0].choices) == sorted([*cli.COMMANDS, "bench"])
    for command, absent in (("pretrain", "cebench.transfer.cli"), ("transfer", "cebench.pretrain.cli")):
        _, loaded = _cebench_modules_after([command, "--help"], tmp_path)
        assert f"cebench.{command}.cli" in loaded and absent not in loaded, loaded
