"""The tiny pipeline on a data tree made read-only: every stage runs, and nothing in the data changes
(derived files - proposals, decoded splits, features - go to the run's cache folder)."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from cebench.data.demo import DEMO_PRESETS, generate_demo


def tree_state(root: Path) -> dict[str, str]:
    """Every entry under `root`: files by content hash, folders by name (additions show up too)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def _set_writable(root: Path, writable: bool) -> None:
    w = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
    for p in [root, *root.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod((mode | stat.S_IWUSR) if writable else (mode & ~w))


@pytest.mark.slow
def test_tiny_pipeline_on_read_only_data(tmp_path):
    data = tmp_path / "data"
    generate_demo(data / "demo-tiny-seed0", replace(DEMO_PRESETS["tiny"], seed=0))
    before = tree_state(data)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CEBENCH_NO_PROGRESS": "1"}
    env.pop("CEBENCH_CACHE", None)
    _set_writable(data, False)
    try:
        # the random init only, one seed, grid proposals and a few steps keep it short; every stage that reads
        # the data runs
        cmd = ["run", "--config", "tiny", "--out", str(out), f"data.demo_dir={data}", "run.methods=[]",
               "transfer.seeds=[0]", "transfer.det.proposals.method=grid", "transfer.det.iterations=4",
               "transfer.cls.iterations=4", "transfer.seg.iterations=4", "inpaint.train.steps=2",
               "retrieval.max_queries=20", "transfer.svm.layers=[conv5]"]
        res = subprocess.run([sys.executable, "-m", "cebench.benchmarks.cli", *cmd], capture_output=True, text=True,
                             env=env, timeout=900)
    finally:
        _set_writable(data, True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert tree_state(data) == before  # not one byte changed, not one file added (as root, chmod stops nothing)
    for stage in ("inpaint", "retrieval", "det-proposals", "cls/", "seg/", "det/", "svm/"):
        assert f"done   {stage}" in res.stdout, stage
    assert (out / "report" / "results.md").is_file()
    assert list((out / "cache" / "proposals").rglob("*.npz"))  # the derived files went to the run's cache
    assert list((out / "cache" / "splits").glob("*.pt"))
