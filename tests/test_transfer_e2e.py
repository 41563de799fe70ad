"""End to end: `cebench transfer cls|seg|svm` on the tiny demo tree and on a hand-made VOCdevkit tree."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cebench.benchmarks.cli import main as cli_main
from cebench.data.demo import DEMO_PRESETS, generate_demo
from cebench.data.voc import voc_palette
from cebench.pretrain.loading import save_encoder_checkpoint
from cebench.pretrain.models import AlexNetConfig, build_encoder
from cebench.transfer.svm import SvmConfig, layer_features

torch.set_num_threads(1)
FAST = ["cls.iterations=4", "cls.batch_size=8", "cls.test_crops=2", "seg.iterations=4", "seg.batch_size=8",
        "cls.lrs=[1e-3,3e-3]", "seg.lrs=[1e-3]", "svm.layers=[conv2,conv5]", "svm.costs=[0.1,1.0]",
        "svm.knn_ks=[3,5]", "cls.fc_dim=32", "seg.fc_dim=32"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return generate_demo(tmp_path_factory.mktemp("demo"), DEMO_PRESETS["tiny"])


@pytest.fixture(scope="module")
def handmade_root(tmp_path_factory):
    """A real VOCdevkit/VOC2007 layout (no classes.txt -> the 20 VOC classes), 12 odd-sized images."""
    voc = tmp_path_factory.mktemp("handmade") / "VOCdevkit" / "VOC2007"
    for d in ("JPEGImages", "Annotations", "ImageSets/Main", "ImageSets/Segmentation", "SegmentationClass"):
        (voc / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = [f"{i:06d}" for i in range(12)]
    for i, name in enumerate(ids):
        h, w = 70 + i, 90 - i
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{name}.jpg")
        cls = ["dog", "cat"][i % 2]
        objs = f"<object><name>{cls}</name><difficult>0</difficult><bndbox><xmin>5</xmin><ymin>5</ymin>" \
               f"<xmax>40</xmax><ymax>40</ymax></bndbox></object>"
        if i % 3 == 0:
            objs += "<object><name>person</name><difficult>1</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>" \
                    "<xmax>20</xmax><ymax>20</ymax></bndbox></object>"
        (voc / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>")
        m = np.zeros((h, w), np.uint8)
        m[4:40, 4:40] = 12 if cls == "dog" else 8
        m[40, :] = 255
        png = Image.fromarray(m, mode="P")
        png.putpalette(voc_palette())
        png.save(voc / "SegmentationClass" / f"{name}.png")
    splits = {"train": ids[:4], "val": ids[4:8], "trainval": ids[:8], "test": ids[8:]}
    for sub in ("Main", "Segmentation"):
        for s, lst in splits.items():
            (voc / "ImageSets" / sub / f"{s}.txt").write_text("\n".join(lst) + "\n")
    return voc


def _rows(out):
    return json.loads((out / "results.json").read_text())["rows"]


def test_cls_seg_svm_on_tiny_demo(tiny_root, tmp_path):
    ckpt = save_encoder_checkpoint(tmp_path / "ce.pt", build_encoder(AlexNetConfig()), method="ce")
    out = tmp_path / "out"
    for task in ("cls", "seg", "svm"):
        rc = cli_main(["transfer", task, "--config", "tiny", "--data", str(tiny_root), "--out", str(out),
                       "--init", "random", "--init", f"ce={ckpt}", "--init", "imagenet", "--seeds", "0,1", *FAST])
        assert rc == 0
    rows = {(r["task"], r["metric"], r["init"]): r for r in _rows(out)}
    for task, metric in (("cls", "mAP"), ("seg", "mean IU"), ("svm", "svm conv5 mAP"), ("svm", "knn conv2 mAP")):
        for init in ("random", "context encoder"):
            r = rows[(task, metric, init)]
            assert r["seeds"] == 2 and 0.0 <= r["mean"] <= 1.0, r
    assert rows[("cls", "mAP", "imagenet")]["status"] == "unavailable"
    assert "alexnet-owt" in rows[("cls", "mAP", "imagenet")]["reason"]
    assert rows[("cls", "mAP", "random")]["lr"] in (1e-3, 3e-3)  # chosen on val
    assert set(rows[("cls", "mAP", "random")]["val_scores"]) == {"0.001", "0.003"}
    jobs = sorted(p.name for p in (out / "jobs" / "cls" / "random").glob("*.json"))
    assert [j for j in jobs if j.startswith("select")] == ["select_lr0.001_seed100.json", "select_lr0.003_seed100.json"]
    assert len([j for j in jobs if j.startswith("final")]) == 2
    curves = sorted(p.name for p in (out / "jobs" / "cls" / "random").glob("final_*.metrics.jsonl"))
    assert len(curves) == 2  # every fine-tuning job logs its curve (tiny: transfer.log.every=2)
    assert not list((out / "jobs" / "svm").rglob("*.metrics.jsonl"))  # frozen features: no training loop
    text = (out / "results.csv").read_text()
    assert text.startswith("init,task,metric,mean,std,seeds,status")


def test_handmade_vocdevkit_layout(handmade_root, tmp_path):
    out = tmp_path / "out"
    for task in ("cls", "seg", "svm"):
        rc = cli_main(["transfer", task, "--config", "tiny", "--data", str(handmade_root.parent.parent),
                       "--out", str(out), "--seeds", "0", *FAST, "cls.load_size=64", "seg.load_size=64"])
        assert rc == 0
    rows = {(r["task"], r["metric"]): r for r in _rows(out)}
    assert rows[("cls", "mAP")]["status"] == "ok" and rows[("seg", "mean IU")]["status"] == "ok"
    details = rows[("cls", "mAP")]["details"]["0"]["ap"]
    assert len(details) == 20 and details["dog"] is not None and details["person"] is None  # difficult only


def test_missing_dataset_is_one_line(tmp_path, capsys):
    rc = cli_main(["transfer", "cls", "--config", "tiny", "--data", str(tmp_path / "nope"), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and "\n" not in err and "VOC" in err


def test_frozen_backbone_unchanged_by_feature_extraction():
    enc = build_encoder(AlexNetConfig())
    enc.train()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    images = torch.randint(0, 255, (10, 3, 64, 64), dtype=torch.uint8)
    both = layer_features(enc, images, ["conv2", "conv4"], SvmConfig(), "cpu")
    feats = both["conv4"]
    assert feats.shape == (10, 96 * 4) and np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    assert both["conv2"].shape == (10, 64 * 4)
    # one pass for several layers gives each layer's features exactly as a pass for that layer alone
    np.testing.assert_allclose(layer_features(enc, images, ["conv4"], SvmConfig(), "cpu")["conv4"], feats, atol=1e-6)
    for k, v in enc.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN running stats included
