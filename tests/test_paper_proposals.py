"""Published Fast R-CNN selective-search proposals (.mat), the paper's proposal path."""

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from cebench.data.voc import parse_annotation
from cebench.errors import CebenchError, DatasetMissingError
from cebench.transfer.det.proposals import ProposalConfig, load_proposals, published_pattern


def _voc(tmp_path, ids, size=(120, 90)):
    """VOCdevkit/VOC2007 with images, one annotated object per image and trainval/test lists."""
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / d).mkdir(parents=True)
    for i in ids:
        Image.new("RGB", size, (90, 90, 90)).save(voc / "JPEGImages" / f"{i}.jpg")
        (voc / "Annotations" / f"{i}.xml").write_text(
            "<annotation><size><width>120</width><height>90</height></size><object><name>dog</name>"
            "<difficult>0</difficult><bndbox><xmin>21</xmin><ymin>11</ymin><xmax>80</xmax><ymax>50</ymax>"
            "</bndbox></object></annotation>")
    (voc / "ImageSets/Main/trainval.txt").write_text("".join(f"{i}\n" for i in ids[:2]))
    (voc / "ImageSets/Main/test.txt").write_text("".join(f"{i}\n" for i in ids[2:]))
    return voc


def _write_published(path, ids, boxes, with_images=True):
    """Exactly the layout of Fast R-CNN's voc_2007_<split>.mat: `boxes` a 1xN cell of [N,4] doubles
    (1-based [y1 x1 y2 x2]), `images` an Nx1 cell of id strings."""
    cell = np.empty((1, len(boxes)), dtype=object)
    for k, b in enumerate(boxes):
        cell[0, k] = np.asarray(b, dtype=np.float64)
    data = {"boxes": cell}
    if with_images:
        names = np.empty((len(ids), 1), dtype=object)
        for k, i in enumerate(ids):
            names[k, 0] = i
        data["images"] = names
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), data)


def test_published_mat_boxes_become_pixel_edge_xyxy(tmp_path):
    ids = ["000005", "000007", "000009"]
    voc = _voc(tmp_path, ids)
    gt = [11, 21, 50, 80]  # the ground-truth box of every image, as the published files write it
    mats = tmp_path / "selective_search_data"
    _write_published(mats / "voc_2007_trainval.mat", ids[:2],
                     [[gt, [1, 1, 90, 120], [5, 5, 6, 6]], [[2, 3, 40, 60], gt, gt]])
    # the test file without `images`: boxes follow the order of ImageSets/Main/test.txt (as Fast R-CNN reads it)
    _write_published(mats / "voc_2007_test.mat", ids[2:], [[[10, 20, 30, 40], [1, 1, 200, 300]]], with_images=False)
    cfg = ProposalConfig(method="mat", min_box=4.0)
    assert published_pattern(voc, cfg) == str(mats / "voc_2007_{split}.mat")
    props = load_proposals(voc, ids, cfg)
    want_gt = parse_annotation(voc / "Annotations" / "000005.xml", {"dog": 0})["boxes"][0]
    np.testing.assert_array_equal(want_gt, [20, 10, 80, 50])
    # [y1 x1 y2 x2] 1-based -> (x1 - 1, y1 - 1, x2, y2): the same convention as the ground truth
    np.testing.assert_array_equal(props["000005"], [want_gt, [0, 0, 120, 90]])  # 2x2 box dropped (min_box)
    np.testing.assert_array_equal(props["000007"], [[2, 1, 60, 40], want_gt])  # duplicate removed
    np.testing.assert_array_equal(props["000009"], [[19, 9, 40, 30], [0, 0, 120, 90]])  # clipped to the image
    assert all(p.dtype == np.float32 for p in props.values())
    # max_proposals keeps the published ranking's first boxes
    assert len(load_proposals(voc, ["000005"], ProposalConfig(method="mat", max_proposals=1))["000005"]) == 1
    # an explicit file pattern works the same
    moved = tmp_path / "elsewhere"
    (mats).rename(moved)
    with pytest.raises(DatasetMissingError, match="fetch_selective_search_data"):
        load_proposals(voc, ids, cfg)
    got = load_proposals(voc, ids, ProposalConfig(method="mat", file=str(moved / "voc_2007_{split}.mat")))
    assert {k: v.tolist() for k, v in got.items()} == {k: v.tolist() for k, v in props.items()}


def test_published_mat_errors_name_the_file(tmp_path):
    ids = ["000001", "000002", "000003"]
    voc = _voc(tmp_path, ids)
    mats = tmp_path / "selective_search_data"
    _write_published(mats / "voc_2007_trainval.mat", ids[:2], [[[1, 1, 20, 20]], [[1, 1, 20, 20]]])
    with pytest.raises(DatasetMissingError, match=r"no boxes for 1 image.*000003"):
        load_proposals(voc, ids, ProposalConfig(method="mat"))
    savemat(str(mats / "voc_2007_test.mat"), {"other": np.zeros(3)})
    with pytest.raises(CebenchError, match=r"voc_2007_test.mat: not a Fast R-CNN proposal file"):
        load_proposals(voc, ids, ProposalConfig(method="mat"))


def test_det_cli_reads_published_proposals(tmp_path):
    """`cebench transfer det --proposals-only` with method mat: every split's images found, one line otherwise."""
    from cebench.benchmarks.cli import main

    ids = ["000001", "000002", "000003", "000004"]
    voc = _voc(tmp_path, ids)
    (voc / "ImageSets/Main/train.txt").write_text("000001\n")
    (voc / "ImageSets/Main/val.txt").write_text("000002\n")
    mats = tmp_path / "selective_search_data"
    _write_published(mats / "voc_2007_trainval.mat", ids[:2], [[[1, 1, 20, 20]], [[1, 1, 20, 20]]])
    args = ["transfer", "det", "--config", "tiny", "--data", str(voc), "--proposals-only", "--out",
            str(tmp_path / "out"), "det.proposals.method=mat"]
    assert main(args) == 2  # the test images are missing from the published files
    _write_published(mats / "voc_2007_test.mat", ids[2:], [[[1, 1, 20, 20]], [[3, 3, 30, 30]]])
    assert main(args) == 0
