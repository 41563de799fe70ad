"""Trainer: kill-and-resume equals an uninterrupted run, non-finite loss error, CLI end to end."""

import json
import math
import os

import pytest
import torch

from cebench.data.sources import DataConfig
from cebench.errors import NonFiniteLossError
from cebench.logs import LogConfig
from cebench.pretrain import train as T

os.environ["CEBENCH_NO_PROGRESS"] = "1"
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    d = DataConfig(demo="tiny", demo_dir=str(tmp_path_factory.getbasetemp() / "cedata"))
    from cebench.data.sources import voc_root

    voc_root(d)  # generate once
    return d


def small(method="ce", **kw):
    base = dict(method=method, steps=6, batch_size=8, ckpt_every=2, sample_every=3, eval_images=8,
                log=LogConfig(every=1))
    base.update(kw)
    return T.PretrainConfig(**base)


@pytest.mark.parametrize("method,schedule", [("ce", "constant"), ("ce-adv", "cosine")])
def test_kill_and_resume_is_bit_exact(tmp_path, tiny_data, method, schedule):
    # batch 16 on 200 images: 12 steps per epoch, so 14 steps cross an epoch boundary
    kw = dict(steps=14, batch_size=16, ckpt_every=3, mask="region" if method == "ce" else "center",
              lr_schedule=schedule)
    cfg = small(method, **kw)
    full = T.main(cfg, tiny_data, tmp_path / "full", device="cpu")
    with pytest.raises(T.Interrupted):
        T.main(small(method, **kw, stop_after=7), tiny_data, tmp_path / "cut", device="cpu")
    assert not (tmp_path / "cut" / "checkpoint.pt").exists()
    assert torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["step"] == 7
    resumed = T.main(cfg, tiny_data, tmp_path / "cut", device="cpu")
    a, b = torch.load(full, weights_only=True), torch.load(resumed, weights_only=True)
    assert a["step"] == b["step"] == 14
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    if method == "ce-adv":
        for k in a["disc"]:
            assert torch.equal(a["disc"][k], b["disc"][k]), k
    if schedule == "cosine":  # the last step ran at lr 2e-4 * (1 + cos(pi * 13 / 14)) / 2, D at a tenth
        want = 2e-4 * 0.5 * (1 + math.cos(math.pi * 13 / 14))
        assert b["optimizer"]["param_groups"][0]["lr"] == pytest.approx(want)
        assert b["optimizer_d"]["param_groups"][0]["lr"] == pytest.approx(want * 0.1)
    # a second call with a finished checkpoint returns at once
    assert T.main(cfg, tiny_data, tmp_path / "cut", device="cpu") == resumed


def test_outputs_and_arch(tmp_path, tiny_data):
    path = T.main(small("ae", log=LogConfig(every=1, tensorboard=True)), tiny_data, tmp_path, device="cpu")
    ck = torch.load(path, weights_only=True)
    assert ck["arch"]["name"] == "ae" and ck["arch"]["encoder"]["input_size"] == 64
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("rec" in l for l in lines) and any("epoch_val_rec" in l for l in lines)
    assert [l["step"] for l in lines if "rec" in l] == [1, 2, 3, 4, 5, 6]  # every step (log.every=1)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))  # mirrored (log.tensorboard=true)
    assert (tmp_path / "config.yaml").is_file() and list((tmp_path / "samples").glob("step_*.png"))
    from cebench.pretrain.loading import load_encoder

    load_encoder(path, expect="ae")  # the autoencoder's encoder loads from the final checkpoint
    assert torch.load(path, weights_only=True)["step"] == 6


def test_non_finite_loss_raises(tmp_path, tiny_data, monkeypatch):
    from cebench.pretrain import objectives

    monkeypatch.setattr(objectives, "weighted_l2", lambda *a, **k: (a[0] * float("nan")).mean())
    with pytest.raises(NonFiniteLossError) as exc:
        T.main(small("ce"), tiny_data, tmp_path, device="cpu")
    msg = str(exc.value)
    assert "\n" not in msg and "step 0" in msg and "rec=nan" in msg


def _parser():
    import argparse

    from cebench.benchmarks.cli import common_parser
    from cebench.pretrain.cli import register

    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="cmd"), common_parser())
    return p


def test_cli_pretrain_supervised_and_inpaint(tmp_path, tiny_data):
    p = _parser()
    for method in ("supervised", "inpaint"):
        args = p.parse_args(["pretrain", "--config", "tiny", "--method", method, "--out", str(tmp_path / method),
                             "--device", "cpu", "steps=3", "batch_size=8", "eval_images=0",
                             f"data.demo_dir={tiny_data.demo_dir}"])
        assert args.func(args) == 0
        ck = torch.load(tmp_path / method / "checkpoint.pt", weights_only=True)
        assert ck["arch"]["name"] == method and ck["step"] == 3


def test_colour_options_of_pretraining_images(tmp_path):
    """gray: ITU-R 601 luminance in 3 equal channels; permute: a per-image, per-epoch channel order."""
    import numpy as np
    from PIL import Image

    from cebench.pretrain.data import PretrainImages

    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 10
    Image.fromarray(rgb).save(tmp_path / "a.png")
    paths = [tmp_path / "a.png"]
    gray = PretrainImages(paths, 8, colour="gray", flip=False)[0][0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert int(gray[0, 0, 0]) == round(0.299 * 200 + 0.587 * 100 + 0.114 * 10)  # 120.3 -> 120
    perm = PretrainImages(paths, 8, colour="permute", flip=False)
    seen = set()
    for epoch in range(12):
        perm.set_epoch(epoch)
        x = perm[0][0]
        assert sorted(int(v) for v in x[:, 0, 0]) == [10, 100, 200]  # same values, some order
        seen.add(tuple(int(v) for v in x[:, 0, 0]))
        assert torch.equal(x, perm[0][0])  # a pure function of (seed, epoch, index)
    assert len(seen) > 1
    assert torch.equal(PretrainImages(paths, 8, colour="rgb", flip=False)[0][0][:, 0, 0], torch.tensor([200, 100, 10],
                                                                                                     dtype=torch.uint8))
    with pytest.raises(ValueError, match="colour"):
        PretrainImages(paths, 8, colour="sepia")


def test_lr_schedule_values_and_bad_name(tmp_path, tiny_data):
    assert T.lr_scale("constant", 10) is None
    f = T.lr_scale("cosine", 10)
    assert f(0) == 1.0 and f(5) == pytest.approx(0.5) and f(10) == pytest.approx(0.0) and f(12) == pytest.approx(0.0)
    with pytest.raises(T.ConfigError, match="lr_schedule"):
        T.main(small(lr_schedule="linear"), tiny_data, tmp_path, device="cpu")


def test_bad_target_patch_is_a_config_error():
    from cebench.errors import ConfigError
    from cebench.pretrain.methods import PretrainConfig, build_ce

    with pytest.raises(ConfigError, match="pretrain.target_patch=7 must be 0 or divide the input size 64"):
        build_ce(PretrainConfig(target_patch=7), probe=True)
    assert build_ce(PretrainConfig(target_patch=8), probe=True).input_size == 64
