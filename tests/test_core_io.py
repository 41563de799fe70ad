"""cebench.io: every write is atomic (a failure keeps the old file, leaves no temp file), files are 0644."""

import json
import stat

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cebench.io import (
    atomic_copy,
    atomic_directory,
    atomic_save_figure,
    atomic_save_image,
    atomic_target,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    p = tmp_path / "sub" / "a.txt"
    atomic_write_text(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_target(p) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("killed")
    assert p.read_text() == "old"
    assert [f.name for f in p.parent.iterdir()] == ["a.txt"]
    assert _mode(p) == 0o644


def test_each_writer_round_trips(tmp_path):
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    atomic_write_json(tmp_path / "j.json", {"a": np.float32(0.5), "b": np.arange(3), "c": np.int64(2)})
    assert json.loads((tmp_path / "j.json").read_text()) == {"a": 0.5, "b": [0, 1, 2], "c": 2}
    atomic_write_csv(tmp_path / "t.csv", pd.DataFrame({"x": [1.23456, 2.0]}), float_format="%.2f")
    assert (tmp_path / "t.csv").read_text() == "x\n1.23\n2.00\n"
    atomic_torch_save({"w": torch.ones(2)}, tmp_path / "m.pt")
    assert torch.load(tmp_path / "m.pt", weights_only=True)["w"].sum() == 2
    assert atomic_copy(tmp_path / "t.csv", tmp_path / "copy.csv") and not atomic_copy(tmp_path / "no", tmp_path / "x")
    assert (tmp_path / "copy.csv").read_text() == (tmp_path / "t.csv").read_text()
    atomic_save_image(Image.new("RGB", (4, 3), (255, 0, 0)), tmp_path / "i.png")
    assert Image.open(tmp_path / "i.png").format == "PNG"


def test_figure_format_comes_from_the_target_suffix(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(1, 1))
    atomic_save_figure(fig, tmp_path / "f.png", dpi=20)
    atomic_save_figure(fig, tmp_path / "f.pdf")
    plt.close(fig)
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "f.pdf").read_bytes()[:4] == b"%PDF"


def test_atomic_directory_replaces_a_folder_whole(tmp_path):
    d = tmp_path / "feats"
    with atomic_directory(d) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(ValueError):
        with atomic_directory(d) as tmp:
            (tmp / "b").write_text("2")
            raise ValueError
    assert sorted(f.name for f in d.iterdir()) == ["a"]  # the failed rewrite left the old folder
    with atomic_directory(d) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(f.name for f in d.iterdir()) == ["b"]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["feats"]


def test_figure_as_a_palette_png_keeps_the_picture(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # a smooth "photograph" (a colour gradient with noise): what the inpainting and retrieval grids show
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:96] / 95.0
    photo = np.stack([yy, xx, 1 - yy * xx], -1) * 0.8 + rng.uniform(0, 0.2, (96, 96, 3))
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.imshow(photo)
    atomic_save_figure(fig, tmp_path / "full.png", dpi=100)
    atomic_save_figure(fig, tmp_path / "pal.png", dpi=100, colors=64)
    atomic_save_figure(fig, tmp_path / "f.pdf", colors=64)  # the option is for PNG only
    plt.close(fig)
    full, pal = Image.open(tmp_path / "full.png"), Image.open(tmp_path / "pal.png")
    assert pal.mode == "P" and pal.size == full.size
    assert len(pal.getcolors(maxcolors=256)) <= 64
    diff = np.abs(np.asarray(pal.convert("RGB"), float) - np.asarray(full.convert("RGB"), float))
    assert diff.mean() < 6.0  # a mean error of a few grey levels out of 255
    assert (tmp_path / "pal.png").stat().st_size < (tmp_path / "full.png").stat().st_size
    assert (tmp_path / "f.pdf").read_bytes()[:4] == b"%PDF"
    assert not list(tmp_path.glob("*.tmp*"))  # nothing left beside the targets
