"""inpaint-eval (tiny, end to end through the CLI) and the user `inpaint` command."""

import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cebench.data.sources import DataConfig, voc_root
from cebench.errors import BadImageError, CheckpointError
from cebench.pretrain.inpaint_eval import score, sharpness

os.environ["CEBENCH_NO_PROGRESS"] = "1"
torch.set_num_threads(1)


def _parser():
    import argparse

    from cebench.benchmarks.cli import common_parser
    from cebench.pretrain.cli import register

    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="cmd"), common_parser())
    return p


def test_score_protocol():
    t = torch.zeros(2, 3, 8, 8)
    f = t.clone()
    f[:, :, 2:6, 2:6] = 0.5
    s = score(f, t, 2, 4)
    assert s["l1_pct"] == pytest.approx(50.0, abs=0.2) and s["l2_pct"] == pytest.approx(25.0, abs=0.2)
    assert s["psnr_db"] == pytest.approx(10 * np.log10(1 / 0.25), abs=0.05)
    f[:, :, 0, 0] = 1.0  # outside the hole: not scored
    assert score(f, t, 2, 4)["l1_pct"] == s["l1_pct"]


def test_sharpness_ratio():
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(4, 3, 16, 16, generator=g)
    assert sharpness(truth, truth) == pytest.approx(1.0)
    blurred = torch.nn.functional.avg_pool2d(truth, 3, stride=1, padding=1, count_include_pad=False)
    assert sharpness(blurred, truth) < 0.6  # box blur of noise keeps well under half the edge energy
    flat = truth.mean(dim=(2, 3), keepdim=True).expand_as(truth)
    assert sharpness(flat, truth) == 0.0
    # hand case: a vertical step edge of height 1 in a 3x3 patch -> |dx| sums 2 over 4 positions, |dy| 0
    step = torch.tensor([[0.0, 1.0, 1.0]] * 3).expand(1, 3, 3, 3)
    assert sharpness(step, torch.ones_like(step) * step) == pytest.approx(1.0)
    assert sharpness(step * 0.5, step) == pytest.approx(0.5)


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("ie")
    data_dir = str(base / "data")
    voc_root(DataConfig(demo="tiny", demo_dir=data_dir))
    args = _parser().parse_args(["inpaint-eval", "--config", "tiny", "--out", str(base / "out"), "--device", "cpu",
                                 "train.steps=4", "train.batch_size=16", "n_test=12", f"data.demo_dir={data_dir}"])
    assert args.func(args) == 0
    return base


def test_inpaint_eval_outputs(eval_run):
    out = eval_run / "out"
    table = pd.read_csv(out / "table1.csv")
    assert list(table.columns[:5]) == ["method", "l1_pct", "l2_pct", "psnr_db", "n_images"]
    assert set(table.method) == {"CE (L2)", "CE (L2+adv)", "NN (HOG)", "NN (pixels)", "Telea (OpenCV)", "mean colour"}
    assert (table.n_images == 12).all() and table.psnr_db.between(3, 60).all()
    assert (out / "fig_inpainting.png").is_file() and "1/4 of the area" in (out / "protocol.txt").read_text()


def test_inpaint_user_command(eval_run, tmp_path):
    ckpt = eval_run / "out" / "train-inpaint" / "checkpoint.pt"
    img = (np.random.default_rng(0).random((50, 90, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "in.jpg")
    p = _parser()
    for mode in ("resize", "tile"):
        args = p.parse_args(["inpaint", str(tmp_path / "in.jpg"), "--checkpoint", str(ckpt), "--out",
                             str(tmp_path / f"{mode}.png"), "--mode", mode, "--device", "cpu"])
        assert args.func(args) == 0
        res = np.asarray(Image.open(tmp_path / f"{mode}.png"))
        assert res.shape == img.shape
    res = np.asarray(Image.open(tmp_path / "resize.png")).astype(int)
    ref = np.asarray(Image.open(tmp_path / "in.jpg")).astype(int)
    assert np.abs(res[:5] - ref[:5]).max() <= 1  # context kept
    # a mask inside the centre works; one outside it is a clear error; a corrupt image too
    m = np.zeros((50, 90), np.uint8)
    m[20:30, 40:50] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    args = p.parse_args(["inpaint", str(tmp_path / "in.jpg"), "--checkpoint", str(ckpt), "--mask",
                         str(tmp_path / "m.png"), "--out", str(tmp_path / "m_out.png"), "--device", "cpu"])
    assert args.func(args) == 0
    m[0:5, 0:5] = 255
    Image.fromarray(m).save(tmp_path / "m2.png")
    from cebench.pretrain.inpaint import inpaint_file

    with pytest.raises(BadImageError, match="central square"):
        inpaint_file(tmp_path / "in.jpg", ckpt, tmp_path / "x.png", mask=tmp_path / "m2.png", device="cpu")
    Image.fromarray(m[:10]).save(tmp_path / "small.png")
    with pytest.raises(BadImageError, match="mask is 90x10"):
        inpaint_file(tmp_path / "in.jpg", ckpt, tmp_path / "x.png", mask=tmp_path / "small.png", device="cpu")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(BadImageError):
        inpaint_file(tmp_path / "bad.jpg", ckpt, tmp_path / "x.png", device="cpu")
    with pytest.raises(CheckpointError):
        inpaint_file(tmp_path / "in.jpg", tmp_path / "in.jpg", tmp_path / "x.png", device="cpu")


def test_inpaint_refuses_a_patch_standardised_ce(tmp_path):
    """A CE trained with target_patch predicts standardised patches, not pixels: a clear error, not a fill."""
    from cebench.checkpoint import save_checkpoint
    from cebench.pretrain.inpaint import load_inpainter
    from cebench.pretrain.models import AlexNetConfig, ContextEncoder

    net = ContextEncoder(AlexNetConfig(), decoder_widths=(16, 8, 8), decoder_layers=4)
    arch = {"name": "ce", "encoder": AlexNetConfig().to_dict(), "dropout": 0.5, "decoder_widths": [16, 8, 8],
            "decoder_layers": 4}
    for patch in (0, 8):
        save_checkpoint(tmp_path / f"ce{patch}.pt", {"model": net.state_dict(), "arch": arch, "step": 1,
                                                     "config": {"target_patch": patch}})
    assert load_inpainter(tmp_path / "ce0.pt").target_patch == 0  # the paper's target: an image, it inpaints
    with pytest.raises(CheckpointError, match="target_patch=8"):
        load_inpainter(tmp_path / "ce8.pt")
