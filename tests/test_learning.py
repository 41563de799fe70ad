"""Learning checks on the built-in tiny data: the context encoder's training loss falls over a short run, and
the inpainting context encoder (Table 1's CE (L2)) fills held-out images better than the mean colour does,
scored by `cebench inpaint-eval`'s own protocol.

Both runs are seeded and deterministic (fp32, one thread); the settings are the smallest that keep the margin
well above what changing the training seed moves (numbers below, measured on the tiny demo data)."""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest

from cebench.benchmarks.cli import resolve_config
from cebench.config import load_config
from cebench.data.sources import DataConfig, voc_root
from cebench.pretrain import inpaint_eval, train
from cebench.pretrain.config import PretrainConfig


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny config file and its data section, with the demo tree generated once for this module."""
    config = resolve_config("tiny")
    data = load_config(DataConfig, config, [f"demo_dir={tmp_path_factory.mktemp('learning-data')}"], section="data")
    voc_root(data)
    return config, data


def test_context_encoder_loss_falls(tiny, tmp_path):
    """The tiny config's context encoder (noise masks, per-patch standardised target, batch 16, Adam 2e-4)
    for 3 epochs of 12 steps: each epoch's mean reconstruction loss below the one before, the last one
    at most 95% of the first.

    Measured (training seeds 0, 1, 2): epoch means 1.161 -> 1.075 -> 1.023, 1.212 -> 1.096 -> 1.007,
    1.144 -> 1.062 -> 1.005 (last / first 0.88, 0.83, 0.88; an epoch mean averages 12 batches, whose
    losses scatter by about 0.03). Two epochs give only 0.93. Much of this early fall is the net learning
    to predict under dropout; the held-out loss of this CE moves later (over ~100 steps, by 2-9% across
    seeds), so what is learned on held-out images is checked by the fill test below. With lr 0 the epoch means
    are 1.216, 1.212, 1.209 (0.99): the check fails."""
    config, data = tiny
    cfg = load_config(PretrainConfig, config, ["steps=36", "sample_every=0", "eval_images=0"], section="pretrain")
    assert (cfg.method, cfg.batch_size, cfg.seed) == ("ce", 16, 0)
    train.main(cfg, data, tmp_path, device="cpu")
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    epochs = [line["epoch_rec"] for line in lines if "epoch_rec" in line]
    assert len(epochs) == 3, lines[-1]
    assert epochs[0] > epochs[1] > epochs[2], epochs
    assert epochs[2] < 0.95 * epochs[0], epochs


def test_inpainting_fill_beats_the_mean_colour_on_held_out_images(tiny, tmp_path):
    """The tiny config's inpainting net trained 100 steps (batch 16), scored by inpaint-eval on the 80 held-out
    test images (the central quarter, L2 over the hole): its mean L2 below 90% of the mean-colour fill's.

    Measured: CE (L2) / mean colour = 0.77, 0.74, 0.74 with training seeds 0, 1, 2 at 100 steps; 0.79 at 80
    steps, 0.92 at 60, 1.02 at 30 and 1.05 at the tiny config's 4 steps (an untrained net does not beat
    the mean colour)."""
    config, data = tiny
    cfg = load_config(inpaint_eval.InpaintEvalConfig, config, ["train.steps=100", "train.sample_every=0",
                                                                "n_test=0"], section="inpaint")
    assert (cfg.train.batch_size, cfg.train.seed) == (16, 0)
    ckpt = train.main(replace(cfg.train, method="inpaint"), data, tmp_path / "train-inpaint", device="cpu")
    # the trained net for both CE rows: the adversarial one is not what this test is about
    inpaint_eval.main(cfg, data, tmp_path / "eval", device="cpu", ce=ckpt, ce_adv=ckpt)
    table = pd.read_csv(tmp_path / "eval" / "table1.csv").set_index("method")
    assert (table["n_images"] == 80).all()
    ce, mean = table.loc["CE (L2)", "l2_pct"], table.loc["mean colour", "l2_pct"]
    assert ce < 0.9 * mean, (ce, mean)
