"""Every file the suite reads, fed random bytes, a truncated copy of a valid file, an empty file and a
folder in its place, through the command that reads it: one line on stderr naming the file, exit
status 2, no traceback, no output written.

Readers and the command that drives each: checkpoint, JPEG and PNG image, user mask (`cebench
inpaint`); VOC XML, JPEG inside a VOC tree, split file, classes.txt (`transfer cls`); segmentation PNG
(`transfer seg`); YAML config (`transfer cls --config`); published proposals .mat (`transfer det` with
det.proposals.file). The retrieval feature cache is read by the retrieval stage and fuzzed with it.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cebench.benchmarks.cli import main as cli_main
from cebench.checkpoint import save_checkpoint
from cebench.data.demo import DEMO_PRESETS, generate_demo
from cebench.data.voc import read_split
from cebench.pretrain.models import AlexNetConfig, ContextEncoder

torch.set_num_threads(1)
VARIANTS = ("random", "truncated", "empty", "folder")


@dataclass
class Env:
    voc: Path            # the tiny demo tree (shared by the module; each test swaps one file and restores it)
    ckpt: Path           # a valid `ce` checkpoint `cebench inpaint` can use
    jpg: Path
    png: Path
    mask: Path
    first: str           # first id of trainval (read by the first transfer job)
    seg_first: str       # first id of Segmentation/trainval


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    base = tmp_path_factory.mktemp("fuzz")
    voc = generate_demo(base / "demo", DEMO_PRESETS["tiny"])
    enc = AlexNetConfig.demo()
    net = ContextEncoder(enc, decoder_widths=(32, 32, 16, 16), decoder_layers=4)
    ckpt = save_checkpoint(base / "ce.pt", {
        "model": net.state_dict(), "optimizer": None, "scaler": None, "step": 1, "epoch": 0,
        "config": {"target_patch": 0},
        "arch": {"name": "ce", "encoder": enc.to_dict(), "dropout": 0.5, "decoder_widths": [32, 32, 16, 16],
                 "decoder_layers": 4}})
    rng = np.random.default_rng(0)
    jpg, png, mask = base / "photo.jpg", base / "photo.png", base / "mask.png"
    pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(jpg, quality=90)
    Image.fromarray(pixels).save(png)
    m = np.zeros((48, 64), np.uint8)
    m[16:32, 20:44] = 255
    Image.fromarray(m).save(mask)
    return Env(voc, ckpt, jpg, png, mask, read_split(voc, "trainval")[0],
               read_split(voc, "trainval", kind="segmentation")[0])


def _mat(path: Path, ids) -> Path:
    from scipy.io import savemat

    images, boxes = np.empty(len(ids), dtype=object), np.empty(len(ids), dtype=object)
    for k, i in enumerate(ids):
        images[k], boxes[k] = i, np.array([[2, 3, 30, 40], [1, 1, 60, 60]], dtype=np.float64)
    savemat(str(path), {"images": images, "boxes": boxes})
    return path


def _yaml(path: Path) -> Path:
    path.write_text("{data: {demo: tiny}, transfer: {seeds: [0], cls: {iterations: 2, fc_dim: 16}}}\n")
    return path


CLS = ["cls.iterations=2", "cls.batch_size=8", "cls.fc_dim=16", "cls.test_crops=1", "magic_images=4"]


@dataclass
class Reader:
    target: Callable[[Env, Path], Path]           # the file to spoil (a copy, or a file inside the tree)
    command: Callable[[Env, Path, Path], list]    # (env, file, out) -> argv
    truncate: Callable[[bytes], bytes] = lambda b: b[: len(b) // 2]
    variants: tuple = VARIANTS


def _inpaint(image, ckpt, mask=None):
    return lambda e, f, out: ["inpaint", str(image(e, f)), "--checkpoint", str(ckpt(e, f)), "--out",
                              str(out / "filled.png"), "--device", "cpu"] + \
        (["--mask", str(mask(e, f))] if mask else [])


def _copy(name):
    def target(e: Env, tmp: Path) -> Path:
        dst = tmp / Path(getattr(e, name)).name
        shutil.copy(getattr(e, name), dst)
        return dst
    return target


def _transfer(task, *extra):
    return lambda e, f, out: ["transfer", task, "--config", "tiny", "--data", str(e.voc), "--out", str(out),
                              "--seeds", "0", *extra]


def _split_cut(b: bytes) -> bytes:
    """End the file in the middle of an id (a cut at a line end would leave a valid shorter split)."""
    return b[: b.index(b"\n", len(b) // 2) + 4]


READERS = {
    "checkpoint": Reader(_copy("ckpt"), _inpaint(lambda e, f: e.jpg, lambda e, f: f)),
    "jpeg image": Reader(_copy("jpg"), _inpaint(lambda e, f: f, lambda e, f: e.ckpt)),
    "png image": Reader(_copy("png"), _inpaint(lambda e, f: f, lambda e, f: e.ckpt)),
    "user mask": Reader(_copy("mask"), _inpaint(lambda e, f: e.jpg, lambda e, f: e.ckpt, lambda e, f: f)),
    "voc xml": Reader(lambda e, t: e.voc / "Annotations" / f"{e.first}.xml", _transfer("cls", *CLS)),
    "jpeg in a voc tree": Reader(lambda e, t: e.voc / "JPEGImages" / f"{e.first}.jpg", _transfer("cls", *CLS)),
    "split file": Reader(lambda e, t: e.voc / "ImageSets" / "Main" / "trainval.txt", _transfer("cls", *CLS),
                         truncate=_split_cut),
    # a classes.txt cut short is a valid shorter list (the annotations then name the missing class)
    "classes.txt": Reader(lambda e, t: e.voc / "classes.txt", _transfer("cls", *CLS),
                          variants=("random", "empty", "folder")),
    "segmentation png": Reader(lambda e, t: e.voc / "SegmentationClass" / f"{e.seg_first}.png",
                               _transfer("seg", "seg.iterations=2", "seg.batch_size=8", "seg.fc_dim=16",
                                         "magic_images=4")),
    "yaml config": Reader(lambda e, t: _yaml(t / "config.yaml"),
                          lambda e, f, out: ["transfer", "cls", "--config", str(f), "--data", str(e.voc), "--out",
                                             str(out), "--seeds", "0"]),
    "proposals mat": Reader(lambda e, t: _mat(t / "props.mat", read_split(e.voc, "trainval")),
                            _transfer("det", "det.iterations=2", "workers=1", f"det.proposals.file={'{FILE}'}")),
}


LOG_LINE = re.compile(r"^\[\d\d:\d\d:\d\d cebench[.\w]*\] ")  # cebench.logs' progress lines (info, not errors)


def _not_log(err: str) -> list[str]:
    return [line for line in err.strip().splitlines() if not LOG_LINE.match(line)]


def _spoil(path: Path, variant: str, truncate) -> None:
    data = path.read_bytes()
    path.unlink()
    if variant == "random":
        path.write_bytes(np.random.default_rng(len(data)).bytes(2048))
    elif variant == "truncated":
        path.write_bytes(truncate(data))
    elif variant == "empty":
        path.write_bytes(b"")
    else:
        path.mkdir()


CASES = [(name, v) for name, r in READERS.items() for v in r.variants]


@pytest.mark.parametrize("reader,variant", CASES, ids=[f"{n}-{v}" for n, v in CASES])
def test_bad_file_gives_one_line_naming_it(env, tmp_path, capsys, reader, variant):
    r = READERS[reader]
    path = r.target(env, tmp_path)
    original = path.read_bytes()
    out = tmp_path / "out"
    argv = [a.replace("{FILE}", str(path)) for a in r.command(env, path, out)]
    capsys.readouterr()
    _spoil(path, variant, r.truncate)
    try:
        rc = cli_main(argv)  # an exception escaping here (a traceback) fails the test
    finally:
        if path.is_dir():
            path.rmdir()
        path.write_bytes(original)
    err = capsys.readouterr().err
    lines = _not_log(err)
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert str(path) in lines[0], lines[0]
    assert "Traceback" not in err
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) if out.exists() else []
    # the resolved config and the record of what the command read, at most: no result, no cache entry
    assert set(written) <= {"config.yaml", "data.yaml"}, written


@pytest.mark.parametrize("content", ["state_dict", "tensor", "list"])
@pytest.mark.parametrize("command", ["det", "inpaint"])
def test_a_torch_file_that_is_not_a_cebench_checkpoint(env, tmp_path, capsys, content, command):
    """A valid torch file of the wrong kind (a bare state_dict, a tensor, a list) is named in one line too."""
    net = ContextEncoder(AlexNetConfig.demo(), decoder_widths=(32, 32, 16, 16), decoder_layers=4)
    obj = {"state_dict": net.state_dict(), "tensor": torch.zeros(3), "list": [1, 2]}[content]
    path = tmp_path / "foreign.pt"
    torch.save(obj, path)
    out = tmp_path / "out"
    argv = (_transfer("det", "det.iterations=2", "workers=1", "arch=auto", "--init", f"mine={path}")(env, path, out)
            if command == "det" else _inpaint(lambda e, f: e.jpg, lambda e, f: f)(env, path, out))
    capsys.readouterr()
    assert cli_main(argv) == 2
    lines = _not_log(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), lines


def test_every_reader_is_driven_by_a_valid_file_first(env, tmp_path, capsys):
    """The unspoiled files go through the same readers (so each case above fails on the spoiled file)."""
    from cebench.checkpoint import load_checkpoint
    from cebench.config import read_yaml
    from cebench.data.voc import VOCIndex, read_segmentation
    from cebench.images import open_rgb
    from cebench.transfer.det.proposals import read_proposal_file

    assert load_checkpoint(env.ckpt)["arch"]["name"] == "ce"
    assert open_rgb(env.jpg).size == open_rgb(env.png).size == (64, 48)
    out = tmp_path / "filled.png"
    assert cli_main(["inpaint", str(env.jpg), "--checkpoint", str(env.ckpt), "--mask", str(env.mask), "--out",
                     str(out), "--device", "cpu"]) == 0 and Image.open(out).size == (64, 48)
    index = VOCIndex(env.voc, "trainval")
    assert index.ids[0] == env.first and index.annotation(0)["boxes"].shape[1] == 4
    assert read_segmentation(env.voc / "SegmentationClass" / f"{env.seg_first}.png").ndim == 2
    assert read_yaml(_yaml(tmp_path / "c.yaml"))["transfer"]["seeds"] == [0]
    ids = read_split(env.voc, "trainval")
    props = read_proposal_file(_mat(tmp_path / "p.mat", ids), ids)
    assert set(props) == set(ids) and props[ids[0]].shape == (2, 4)
    capsys.readouterr()
