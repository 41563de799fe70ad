"""End to end: `cebench retrieve` through argparse (HOG only, and with a checkpoint), and the
retrieval table on a small generated demo tree."""

import argparse

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cebench.retrieval import cli

torch.set_num_threads(1)


def _parser():
    from cebench.benchmarks.cli import common_parser

    p = argparse.ArgumentParser()
    cli.register(p.add_subparsers(dest="cmd"), common_parser())
    return p


@pytest.fixture()
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "imgs"
    d.mkdir()
    for i, (h, w) in enumerate([(40, 50), (64, 48), (20, 30), (50, 50)]):  # any sizes, one tiny
        arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        arr[: h // 2] = [200, 30, 30]
        Image.fromarray(arr).save(d / (f"im{i}.png" if i % 2 else f"im{i}.jpg"))
    (d / "broken.jpg").write_bytes(b"not a jpeg")
    return d


def test_retrieve_hog_writes_png_and_reuses_its_cache(image_folder, tmp_path):
    out = tmp_path / "out" / "grid.png"
    before = sorted(p.name for p in image_folder.iterdir())
    args = _parser().parse_args(["retrieve", "--images", str(image_folder), "--query",
                                 f"{image_folder / 'im0.jpg'}:5,5,30,30", "--features", "hog",
                                 "--patch-size", "32", "--k", "3", "--out", str(out)])
    assert args.func(args) == 0
    assert out.is_file() and Image.open(out).size[0] > 100
    entries = list((tmp_path / "out" / "cache" / "retrieve").iterdir())  # default: beside the output
    assert len(entries) == 1
    chunks = sorted(entries[0].glob("chunk_*.npz"))
    assert chunks and (entries[0] / "meta.json").is_file()
    with np.load(chunks[0]) as z:
        assert z["feats"].dtype == np.float16 and z["boxes"].shape[1] == 3
    mtime = chunks[0].stat().st_mtime_ns
    assert args.func(args) == 0  # reuses the cached features
    assert chunks[0].stat().st_mtime_ns == mtime
    assert sorted(p.name for p in image_folder.iterdir()) == before  # nothing written into the data


def test_retrieve_with_checkpoint_and_errors(image_folder, tmp_path):
    from cebench.errors import CebenchError
    from cebench.pretrain.loading import save_encoder_checkpoint
    from cebench.pretrain.models import AlexNetConfig, build_encoder

    ckpt = save_encoder_checkpoint(tmp_path / "enc.pt", build_encoder(AlexNetConfig.demo()), method="ce")
    out = tmp_path / "grid2.png"
    q = str(image_folder / "im1.png")
    args = _parser().parse_args(["retrieve", "--images", str(image_folder), "--query", q, "--features",
                                 "hog,ce", "--checkpoint", str(ckpt), "--patch-size", "32", "--k", "2",
                                 "--out", str(out), "--layer", "conv3"])
    assert args.func(args) == 0 and out.is_file()
    bad = _parser().parse_args(["retrieve", "--images", str(image_folder), "--query", q, "--features", "ce",
                                "--out", str(out)])
    with pytest.raises(CebenchError, match="--checkpoint"):
        bad.func(bad)
    box = _parser().parse_args(["retrieve", "--images", str(image_folder), "--query", q + ":0,0,500,5",
                                "--out", str(out)])
    with pytest.raises(CebenchError, match="outside"):
        box.func(box)


def test_retrieval_table_on_small_demo_tree(tmp_path):
    from cebench.data.demo import demo_config, generate_demo
    from cebench.pretrain.models import AlexNetConfig, build_encoder
    from cebench.retrieval.evaluate import HOGFeatures, RetrievalConfig, run_retrieval

    root = generate_demo(tmp_path / "demo", demo_config("tiny", n_pretrain=0, n_trainval=4, n_test=24, workers=1))
    cfg = RetrievalConfig(device="cpu", layers=["pool5"], masked=[False, True], max_queries=30, figure_queries=2)
    torch.manual_seed(0)
    df = run_retrieval(cfg, root, {"hog": HOGFeatures(), "random": build_encoder(AlexNetConfig.demo())},
                       tmp_path / "res")
    assert list(df.columns[:7]) == ["method", "layer", "masked", "p_at_1", "p_at_10", "map", "chance"]
    assert len(df) == 3 and df[["p_at_1", "p_at_10", "map"]].apply(lambda c: c.between(0, 100)).all().all()
    assert (df["chance"] < 50).all()
    back = pd.read_csv(tmp_path / "res" / "retrieval.csv")
    assert len(back) == 3 and (tmp_path / "res" / "fig_retrieval.png").is_file()
