"""What the paper config reads: the rehearsal's demo data (preset voc), the routing of each stage to its
own tree, `cebench run --data`, and stage overrides with or without their section prefix."""

import dataclasses
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from cebench.benchmarks.cli import main as cli_main
from cebench.benchmarks.cli import resolve_config
from cebench.benchmarks.pipeline import data_problems, resolve
from cebench.data.demo import DEMO_PRESETS, generate_demo, paper_layout_paths
from cebench.data.sources import DataConfig, pretrain_folder, source_of, voc_root
from cebench.data.voc import VOC_CLASSES, VOCIndex, find_voc_root, read_classes, read_segmentation
from cebench.errors import CebenchError
from cebench.transfer.det.proposals import read_proposal_file

SMALL_VOC = dataclasses.replace(DEMO_PRESETS["voc"], n_pretrain=5, n_trainval=6, n_test=3, n_seg_trainval=4, workers=1)


@pytest.fixture(scope="module")
def rehearsal_data(tmp_path_factory):
    base = tmp_path_factory.mktemp("voc")
    return base, generate_demo(base, SMALL_VOC)


def test_voc_preset_writes_what_the_paper_config_reads(rehearsal_data):
    base, voc07 = rehearsal_data
    extra = paper_layout_paths(base)
    assert voc07 == base / "VOCdevkit" / "VOC2007" and not (voc07 / "classes.txt").exists()
    assert read_classes(voc07) == VOC_CLASSES  # the 20 names, as real VOC (no classes.txt)
    n = {s: len(VOCIndex(voc07, s).ids) for s in ("train", "val", "trainval", "test")}
    assert n == {"train": 3, "val": 3, "trainval": 6, "test": 3}
    sizes, flags = set(), set()
    idx = VOCIndex(voc07, "trainval")
    for i in range(len(idx)):
        with Image.open(idx.image_path(i)) as im:
            assert im.format == "JPEG"
            sizes.add(im.size)
        root = ET.parse(idx.annotation_path(i)).getroot()
        assert (int(root.findtext("size/width")), int(root.findtext("size/height"))) == im.size
        for obj in root.iter("object"):
            assert obj.findtext("name") in VOC_CLASSES
            flags.add((obj.findtext("truncated"), obj.findtext("difficult")))
    assert all(max(s) == 500 and 333 <= min(s) <= 500 for s in sizes) and len(sizes) > 1  # VOC's sizes, varied
    assert {t for t, _ in flags} == {"0", "1"}
    # VOC2012: its own segmentation splits (no test), palette PNG masks of the images' sizes
    seg = VOCIndex(extra["voc2012"], "train", kind="segmentation")
    assert len(seg) == 2 and len(VOCIndex(extra["voc2012"], "val", kind="segmentation")) == 2
    assert not (extra["voc2012"] / "ImageSets" / "Segmentation" / "test.txt").exists()
    with Image.open(seg.segmentation_path(0)) as m, Image.open(seg.image_path(0)) as im:
        assert m.mode == "P" and m.size == im.size
    assert set(np.unique(read_segmentation(seg.segmentation_path(0)))) - {0, 255} <= set(range(1, 21))
    assert len(list(extra["pretrain_images"].glob("*.jpg"))) == 5
    # proposal files in the published format, one per VOC2007 split
    for split in ("train", "val", "trainval", "test"):
        boxes = read_proposal_file(extra["selective_search_data"] / f"voc_2007_{split}.mat", VOCIndex(voc07, split).ids)
        assert all(b.shape == (SMALL_VOC.proposals_per_image, 4) and (b[:, 2] > b[:, 0]).all() for b in boxes.values())


def test_torchvision_reads_the_voc2012_tree(rehearsal_data):
    import torchvision

    base, _ = rehearsal_data
    ds = torchvision.datasets.VOCSegmentation(root=str(base), year="2012", image_set="train")
    img, mask = ds[0]
    assert mask.mode == "P" and mask.size == img.size


def test_each_stage_reads_its_own_source(tmp_path):
    real = DataConfig(demo="", root="A/VOC2007", seg_root="B/VOC2012", pretrain_images="C")
    assert source_of(real, "voc") == ("data.root", "A/VOC2007")
    assert source_of(real, "seg") == ("data.seg_root", "B/VOC2012")
    assert source_of(real, "pretrain") == ("data.pretrain_images", "C")
    assert source_of(real, "seg", override="X") == ("--data", "X")
    only_root = DataConfig(demo="", root="A")
    assert source_of(only_root, "seg") == ("data.root", "A")  # seg_root empty: the same tree
    assert source_of(only_root, "pretrain") == ("data.root split pretrain", "A")
    cfg = DataConfig(demo="voc", demo_dir=str(tmp_path))  # the rehearsal's data, generated on first use
    assert voc_root(cfg).parts[-2:] == ("VOCdevkit", "VOC2007")
    assert voc_root(cfg, segmentation=True).parts[-2:] == ("VOCdevkit", "VOC2012")
    assert pretrain_folder(cfg).name == "pretrain_images"
    assert pretrain_folder(DataConfig(demo="tiny", demo_dir=str(tmp_path))) is None  # the VOC pretrain split
    assert voc_root(DataConfig(demo="tiny", demo_dir=str(tmp_path)), segmentation=True).name == "VOC2007"


def test_a_vocdevkit_with_both_years_routes_each_stage_to_its_year(rehearsal_data):
    """data.root may be the VOCdevkit real VOC extracts into: VOC2007 for classification, detection, the SVMs
    and pretraining's VOC split, VOC2012 for segmentation and retrieval, unless data.seg_root names a tree."""
    base, voc07 = rehearsal_data
    devkit, voc12 = base / "VOCdevkit", base / "VOCdevkit" / "VOC2012"
    for root in (devkit, base):  # the VOCdevkit or the folder above it
        cfg = DataConfig(demo="", root=str(root))
        assert source_of(cfg, "voc") == ("data.root VOC2007", str(voc07))
        assert source_of(cfg, "seg") == ("data.root VOC2012", str(voc12))
        assert source_of(cfg, "pretrain") == ("data.root VOC2007 split pretrain", str(voc07))
        assert voc_root(cfg) == voc07 and voc_root(cfg, segmentation=True) == voc12
        assert voc_root(DataConfig(demo=""), str(root), segmentation=True) == voc12  # --data DIR of a stage
    assert source_of(DataConfig(demo="", root=str(devkit), seg_root=str(voc07)), "seg") == ("data.seg_root", str(voc07))
    assert source_of(DataConfig(demo="", root=str(voc07)), "seg") == ("data.root", str(voc07))  # one tree: as given
    with pytest.raises(CebenchError, match="several VOC years .*give the VOCyyyy folder itself"):
        find_voc_root(devkit)  # a reader asked for no year


def test_paper_dry_run_on_a_vocdevkit_plans_cls_on_voc2007_and_seg_on_voc2012(rehearsal_data, tmp_path, capsys):
    base, voc07 = rehearsal_data
    devkit, voc12 = base / "VOCdevkit", base / "VOCdevkit" / "VOC2012"
    images = base / "pretrain_images"
    assert cli_main(["run", "--config", "paper", "--dry-run", "--out", str(tmp_path / "out"), f"data.root={devkit}",
                     f"data.pretrain_images={images}"]) == 0
    text = capsys.readouterr().out
    assert "not found on this machine" not in text  # nothing missing: data.seg_root is not needed
    reads = dict(re.findall(r"^(\S+): cebench .*\n    reads (.*)$", text, flags=re.M))
    assert reads["cls/random"] == reads["det/random"] == reads["svm/random"] == f"data.root VOC2007 ({voc07})"
    assert reads["seg/random"] == reads["retrieval"] == f"data.root VOC2012 ({voc12})"
    assert reads["pretrain/ce"] == f"data.pretrain_images ({images}), data.root VOC2012 ({voc12})"
    # the same data for a real run: nothing missing, so check_real_data lets it start
    cfg = resolve(resolve_config("paper"), [f"data.root={devkit}", f"data.pretrain_images={images}"])
    assert data_problems(cfg) == []
    only07 = resolve(resolve_config("paper"), [f"data.root={voc07}", f"data.pretrain_images={images}"])
    assert [k for k, _ in data_problems(only07)] == ["data.seg_root"]  # VOC2007 alone: segmentation has no tree


def _err(capsys) -> str:
    """The one `error:` line a failing command ends with (log lines of the run may precede it)."""
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines[-5:]
    return errors[0]


def test_run_data_flag_is_data_root(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(["run", "--config", "paper", "--dry-run", "--out", str(out), "--data", "A/VOC2007",
                     "data.seg_root=B/VOC2012", "data.pretrain_images=C"]) == 0
    text = capsys.readouterr().out
    assert "cls/random: cebench transfer cls" in text and "reads data.root (A/VOC2007)" in text
    assert "reads data.seg_root (B/VOC2012)" in text and " --data " not in text
    assert cli_main(["run", "--config", "paper", "--dry-run", "--out", str(out), "--data", "A", "data.root=B"]) == 2
    assert "--data A and data.root=B disagree" in _err(capsys)


def test_stage_overrides_with_or_without_the_section_prefix(tmp_path, capsys):
    data = f"data.demo_dir={tmp_path / 'data'}"
    def base(out):
        return ["pretrain", "--config", "tiny", "--out", str(tmp_path / out), data, "batch_size=8", "eval_images=0",
                "sample_every=0"]

    assert cli_main([*base("a"), "pretrain.steps=2"]) == 0
    assert cli_main([*base("b"), "steps=2"]) == 0
    import torch

    for d in ("a", "b"):
        assert torch.load(tmp_path / d / "checkpoint.pt", weights_only=True)["step"] == 2
    for wrong in ("pretrain.stepz=2", "stepz=2"):
        assert cli_main([*base("c"), wrong]) == 2
        err = _err(capsys)
        assert f"override {wrong.split('=')[0]}: unknown key 'stepz'; valid keys:" in err and "steps" in err
    # transfer takes transfer.cls.iterations as well as cls.iterations; a wrong key in either form: one line
    for wrong in ("transfer.cls.iteratoins=2", "cls.iteratoins=2"):
        assert cli_main(["transfer", "cls", "--config", "tiny", "--out", str(tmp_path / "t"), data, wrong]) == 2
        assert "unknown key 'cls.iteratoins'; valid keys:" in _err(capsys)
