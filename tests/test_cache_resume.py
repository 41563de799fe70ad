"""Derived files survive hard kills: proposals killed midway (SIGKILL) resume with every finished image
reused, and a process killed while it writes a cache entry or a result leaves the previous one intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cebench.transfer.data import _load as _load_split_entry
from cebench.transfer.det.proposals import _load_npz

N_IMAGES = 16


def _tree(root: Path) -> Path:
    """A VOC tree of 120x90 noisy images with one box each (selective search takes a while on each)."""
    voc = root / "VOCdevkit" / "VOC2007"
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = [f"{k:06d}" for k in range(N_IMAGES)]
    for k, i in enumerate(ids):
        img = np.clip(rng.normal(120, 40, (90, 120, 3)), 0, 255).astype(np.uint8)
        x0, y0 = 10 + 2 * k, 10 + k
        img[y0:y0 + 40, x0:x0 + 50] = rng.integers(0, 255, 3)
        Image.fromarray(img).save(voc / "JPEGImages" / f"{i}.jpg", quality=90)
        (voc / "Annotations" / f"{i}.xml").write_text(
            f"<annotation><size><width>120</width><height>90</height></size><object><name>dog</name><bndbox>"
            f"<xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x0 + 50}</xmax><ymax>{y0 + 40}</ymax></bndbox>"
            f"</object></annotation>")
    for s, lst in {"train": ids[:6], "val": ids[6:10], "trainval": ids[:10], "test": ids[10:]}.items():
        (voc / "ImageSets" / "Main" / f"{s}.txt").write_text("\n".join(lst) + "\n")
    return voc


def _entries(cache: Path) -> dict[str, tuple[int, int]]:
    """Finished proposal entries: name -> (inode, mtime_ns); a rewritten file gets a new inode."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.glob("proposals/*/*.npz")}


def test_proposals_resume_after_sigkill(tmp_path):
    voc, cache = _tree(tmp_path / "data"), tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CEBENCH_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "cebench.benchmarks.cli", "transfer", "det", "--proposals-only", "--config", "tiny",
           "--data", str(voc), "--out", str(tmp_path / "out"), "--cache", str(cache), "det.proposals.workers=1",
           "det.proposals.method=selective_search"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(_entries(cache)) < 3:
        time.sleep(0.02)
    assert proc.poll() is None, f"ended before the kill, {len(_entries(cache))} of {N_IMAGES} done: " + \
        proc.stdout.read().decode(errors="replace")[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)  # a hard kill, mid-computation
    proc.wait()
    before = _entries(cache)
    assert 3 <= len(before) < N_IMAGES, f"killed with {len(before)} of {N_IMAGES} done: {proc.stdout.read()[-2000:]}"

    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    after = _entries(cache)
    assert len(after) == N_IMAGES  # one entry per image of the four splits
    assert all(after[name] == stamp for name, stamp in before.items())  # finished ones reused, not rewritten
    assert not [p for p in voc.rglob("*") if "proposals" in p.name]  # nothing in the data


# For each kind of file written atomically: a script that writes the old content, then dies (SIGKILL)
# halfway through writing the new one, and how the test reads the file back.
PRELUDE = """
import builtins, os, signal, sys
from pathlib import Path
import numpy as np
import torch
path = Path(sys.argv[1])
def half(fh):  # part of the new file reaches the disk, then the process is killed
    fh.write(b"PK\\x03\\x04 half of a file")
    fh.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""
WRITERS = {
    "proposal entry": ("""
from cebench.transfer.det.proposals import _save_npz
_save_npz(path, np.ones((3, 4), np.float32))
real_open = builtins.open
builtins.open = lambda f, *a, **kw: half(real_open(f, "wb"))  # the open() of the temp file
_save_npz(path, np.zeros((5, 4), np.float32))
""", lambda p: np.array_equal(_load_npz(p), np.ones((3, 4), np.float32))),
    "decoded split": ("""
from cebench.io import atomic_torch_save
atomic_torch_save({"images": torch.ones(2, 3)}, path)
torch.save = lambda obj, f: half(open(f, "wb"))  # torch writes the temp file itself (C++), so: torch.save
atomic_torch_save({"images": torch.zeros(4, 3)}, path)
""", lambda p: torch.equal(_load_split_entry(p)["images"], torch.ones(2, 3))),
    "results file": ("""
from cebench.io import atomic_write_text
atomic_write_text(path, "init,mAP\\nrandom,61.9\\n")
real_open = builtins.open
builtins.open = lambda f, *a, **kw: half(real_open(f, "wb"))  # the open() of the temp file
atomic_write_text(path, "init,mAP\\nrandom,62.0\\nce,66.0\\n")
""", lambda p: p.read_text() == "init,mAP\nrandom,61.9\n"),
}


@pytest.mark.parametrize("kind", list(WRITERS))
def test_kill_while_writing_keeps_the_previous_file(tmp_path, kind):
    script, same_as_old = WRITERS[kind]
    path = tmp_path / "entry"
    res = subprocess.run([sys.executable, "-c", PRELUDE + script, str(path)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert same_as_old(path)  # the previous result, whole
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["entry"]  # (+ a dot-temp file)
