import contextlib
import hashlib
import io
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

os.environ.setdefault("CEBENCH_NO_PROGRESS", "1")
# amp=auto on CPU: fp32, not the start-up probe, whose verdict could differ between two runs a test compares
# (subprocesses inherit it); tests/test_precision.py unsets it to test the probe
os.environ.setdefault("CEBENCH_CPU_AMP", "none")


@pytest.fixture(autouse=True)
def _no_user_cache(monkeypatch, tmp_path_factory):
    """Library calls that name no cache folder fall back to the user's cache directory: in tests, a
    temporary one (never ~/.cache); and a developer's $CEBENCH_CACHE does not leak into the tests."""
    monkeypatch.delenv("CEBENCH_CACHE", raising=False)
    monkeypatch.setattr("cebench.cache.user_cache_dir", lambda: tmp_path_factory.getbasetemp() / "user-cache")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield


# --------------------------------------------------------------------------------------------------
# one tiny pipeline run for the whole session
# --------------------------------------------------------------------------------------------------


def tree_state(root: Path) -> dict[str, str]:
    """Every entry under `root`: files by content hash, folders by name (additions show up too)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def set_writable(root: Path, writable: bool) -> None:
    w = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
    for p in [root, *root.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod((mode | stat.S_IWUSR) if writable else (mode & ~w))


def cebench_env() -> dict:
    """The environment of a `cebench` subprocess in the tests: one thread, no progress bars, and neither a
    developer's cache nor data folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("CEBENCH_CACHE", "CEBENCH_DATA")}
    return {**env, "OMP_NUM_THREADS": "1", "CEBENCH_NO_PROGRESS": "1"}


@dataclass(frozen=True)
class TinyRun:
    """A finished `cebench run --config tiny --out run`, started in `root` (so its demo data is `run/data`
    and every path in its config, job commands and cache keys is relative to `root`)."""

    root: Path
    stdout: str
    data: Path          # the demo tree the run read, read-only while it ran
    data_before: dict   # tree_state of `data` before the run and after it
    data_after: dict

    @property
    def out(self) -> Path:
        return self.root / "run"

    def copy(self, dest: Path) -> Path:
        """A copy of the whole folder: `cebench run --config tiny --out run` started in `dest` finds every job
        of this run finished (the same cache keys), so a test can mutate it (delete jobs, kill, rerun)."""
        shutil.copytree(self.root, dest, symlinks=True)
        return dest


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """`cebench run --config tiny` (every stage, the config's defaults), once per session, on its demo data
    made read-only. Tests read its report, outputs and log (test_pipeline, test_data_readonly) or copy it
    to kill, resume or rerun it (TinyRun.copy); none writes into it."""
    from cebench.benchmarks.cli import main as cli_main
    from cebench.benchmarks.cli import resolve_config
    from cebench.config import load_config
    from cebench.data.sources import DataConfig, demo_root, voc_root

    root = tmp_path_factory.mktemp("tiny-run")
    # the demo tree where the run would generate it (OUT/data), generated first so it can be made read-only
    data_cfg = load_config(DataConfig, resolve_config("tiny"), [f"demo_dir={root / 'run' / 'data'}"],
                           section="data")
    voc_root(data_cfg)
    data = demo_root(data_cfg)
    before = tree_state(data)
    set_writable(data, False)
    # the run's controller in this process, from `root`, with cebench_env's variables (its jobs are
    # subprocesses all the same): a second interpreter would spend seconds importing torch
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            mp.chdir(root)
            for key in ("CEBENCH_CACHE", "CEBENCH_DATA"):
                mp.delenv(key, raising=False)
            mp.setenv("OMP_NUM_THREADS", "1")
            mp.setenv("CEBENCH_NO_PROGRESS", "1")
            rc = cli_main(["run", "--config", "tiny", "--out", "run"])
    finally:
        set_writable(data, True)
    if rc != 0:
        pytest.fail(f"the shared tiny run failed (exit {rc}):\n{stdout.getvalue()[-3000:]}\n"
                    f"{stderr.getvalue()[-3000:]}")
    return TinyRun(root, stdout.getvalue(), data, before, tree_state(data))
