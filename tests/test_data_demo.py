"""Built-in demo data: a genuine VOC tree, deterministic, balanced, boxes == masks."""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cebench.data.demo import DEMO_PRESETS, MARKER_NAME, DemoDataConfig, generate_demo
from cebench.data.voc import VOCIndex
from cebench.errors import CebenchError
from cebench.locks import file_lock

SMALL = DemoDataConfig(n_pretrain=12, n_trainval=16, n_test=8, workers=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("demo"), DEMO_PRESETS["tiny"])


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_splits(tiny):
    assert tiny.parts[-2:] == ("VOCdevkit", "VOC2007")
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationObject",
                "ImageSets/Main", "ImageSets/Segmentation"):
        assert (tiny / sub).is_dir(), sub
    cfg = DEMO_PRESETS["tiny"]
    n = {s: len(VOCIndex(tiny, s).ids) for s in ("pretrain", "trainval", "train", "val", "test")}
    assert n == dict(pretrain=cfg.n_pretrain, trainval=cfg.n_trainval, train=cfg.n_trainval // 2,
                     val=cfg.n_trainval // 2, test=cfg.n_test)
    tv = set(VOCIndex(tiny, "trainval").ids)
    tr, va, te, pre = (set(VOCIndex(tiny, s).ids) for s in ("train", "val", "test", "pretrain"))
    assert tr | va == tv and not tr & va and not tv & te and not pre & (tv | te)
    assert (tiny / "classes.txt").read_text().split() == list(cfg.classes)
    assert VOCIndex(tiny, "trainval", kind="segmentation").ids == VOCIndex(tiny, "trainval").ids
    # a VOC-style XML
    root = ET.parse(tiny / "Annotations" / f"{VOCIndex(tiny, 'test').ids[0]}.xml").getroot()
    assert root.findtext("size/width") == "64" and root.findtext("segmented") == "1"
    obj = root.find("object")
    assert {c.tag for c in obj} >= {"name", "pose", "truncated", "difficult", "bndbox"}


def test_per_class_files_match_annotations(tiny):
    idx = VOCIndex(tiny, "trainval")
    labels = idx.label_matrix()
    for c, name in enumerate(idx.classes):
        rows = [line.split() for line in (tiny / "ImageSets/Main" / f"{name}_trainval.txt").read_text().splitlines()]
        assert [r[0] for r in rows] == idx.ids
        assert np.array_equal(np.array([int(r[1]) for r in rows]), labels[:, c])


def test_class_balance_and_flags(tiny):
    idx = VOCIndex(tiny, "pretrain")
    labels = np.concatenate([idx.annotation(i)["labels"] for i in range(len(idx))])
    counts = np.bincount(labels, minlength=len(idx.classes))
    assert counts.min() >= 0.85 * counts.mean() and counts.max() <= 1.15 * counts.mean(), counts
    present = (idx.label_matrix() >= 0).sum(0)
    assert present.min() >= 0.7 * present.mean(), present
    anns = [idx.annotation(i) for i in range(len(idx))]
    n_obj = np.array([len(a["labels"]) for a in anns])
    assert n_obj.min() >= 1 and n_obj.max() <= DEMO_PRESETS["tiny"].max_objects
    assert any(a["truncated"].any() for a in anns) and any(a["difficult"].any() for a in anns)
    assert not all(a["difficult"].all() for a in anns)


def test_boxes_are_tight_boxes_of_visible_masks(tiny):
    for split in ("trainval", "test"):
        idx = VOCIndex(tiny, split)
        for i in range(0, len(idx), 3):
            ann = idx.annotation(i)
            obj = np.array(Image.open(tiny / "SegmentationObject" / f"{idx.ids[i]}.png"))
            cls = idx.segmentation(i)
            assert set(np.unique(obj)) <= set(range(len(ann["labels"]) + 1)) | {255}
            for k, (box, lab) in enumerate(zip(ann["boxes"], ann["labels"])):
                ys, xs = np.nonzero(obj == k + 1)
                assert ys.size > 0
                assert np.array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]), (idx.ids[i], k)
                assert (cls[ys, xs] == lab + 1).all()
            assert ((cls == 255) == (obj == 255)).all() and (cls == 255).any()


def test_torchvision_reads_the_tree_unchanged(tiny):
    import torchvision

    root = tiny.parent.parent
    det = torchvision.datasets.VOCDetection(root=str(root), year="2007", image_set="trainval")
    img, target = det[0]
    assert img.size == (64, 64) and target["annotation"]["object"]
    test = torchvision.datasets.VOCDetection(root=str(root), year="2007", image_set="test")
    assert len(test) == DEMO_PRESETS["tiny"].n_test
    seg = torchvision.datasets.VOCSegmentation(root=str(root), year="2007", image_set="val")
    img, mask = seg[0]
    assert mask.mode == "P" and mask.size == img.size
    ours = VOCIndex(tiny, "trainval")
    assert len(ours) == len(det) and len(ours.annotation(0)["boxes"]) == len(target["annotation"]["object"])


def test_deterministic(tmp_path):
    a = generate_demo(tmp_path / "a", SMALL)
    b = generate_demo(tmp_path / "b", dataclasses.replace(SMALL, workers=2))
    fa, fb = _files(a), _files(b)
    assert fa.keys() == fb.keys() and all(fa[k] == fb[k] for k in fa)
    c = generate_demo(tmp_path / "c", dataclasses.replace(SMALL, seed=1))
    fc = _files(c)
    jpgs = [k for k in fa if k.endswith(".jpg")]
    assert sum(fa[k] != fc[k] for k in jpgs) >= len(jpgs) - 1


def test_reuse_interrupt_and_foreign_tree(tmp_path):
    voc = generate_demo(tmp_path, SMALL)
    jpg = next((voc / "JPEGImages").iterdir())
    mtime = jpg.stat().st_mtime_ns
    assert generate_demo(tmp_path, SMALL) == voc and jpg.stat().st_mtime_ns == mtime  # reused
    # a stale temp folder from an interrupted run is removed; another config replaces the tree
    stale = voc.parent / ".VOC2007.tmp-deadbeef-1"
    (stale / "JPEGImages").mkdir(parents=True)
    voc2 = generate_demo(tmp_path, dataclasses.replace(SMALL, seed=5))
    assert not stale.exists() and '"seed": 5' in (voc2 / MARKER_NAME).read_text()
    # never overwrite a VOC2007 that is not ours
    other = tmp_path / "real" / "VOCdevkit" / "VOC2007"
    (other / "JPEGImages").mkdir(parents=True)
    with pytest.raises(CebenchError, match="not a cebench demo tree"):
        generate_demo(tmp_path / "real", SMALL)


def test_cli_demo_and_check(tmp_path, capsys):
    from cebench.data.cli import register

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"), common)
    args = parser.parse_args(["data", "demo", "--out", str(tmp_path), "--size", "tiny", "--seed", "3",
                              "n_pretrain=10", "n_trainval=8", "n_test=8"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "VOCdevkit/VOC2007" in out and "pretrain 10" in out and "took" in out
    args = parser.parse_args(["data", "check", str(tmp_path)])
    assert args.func(args) == 0
    assert "OK" in capsys.readouterr().out


def _generate_in_child(out, barrier):
    barrier.wait()
    generate_demo(out, SMALL)


def test_side_by_side_generators_share_one_tree(tmp_path):
    """Two stage commands started at once on a fresh data folder: the second waits for the first's tree.

    Without the lock the second deleted the first's temporary folder as stale (and later its finished
    tree), and the first failed with a missing image."""
    ctx = multiprocessing.get_context("fork")
    out = tmp_path / "shared"
    with file_lock(out / "VOCdevkit" / ".VOC2007.lock"):
        barrier = ctx.Barrier(2)
        procs = [ctx.Process(target=_generate_in_child, args=(out, barrier)) for _ in range(2)]
        for p in procs:
            p.start()
        time.sleep(1.0)  # both children are past the barrier and blocked on the lock we hold
        assert all(p.is_alive() for p in procs)
        assert not list((out / "VOCdevkit").glob(".VOC2007.tmp-*"))
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert not list((out / "VOCdevkit").glob(".VOC2007.tmp-*"))
    ref, got = _files(generate_demo(tmp_path / "ref", SMALL)), _files(out / "VOCdevkit" / "VOC2007")
    assert ref.keys() == got.keys() and all(ref[k] == got[k] for k in ref)
