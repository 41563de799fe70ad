"""`check_dataset` reports each problem with its path; a clean tree is ok."""

from __future__ import annotations

import shutil

import numpy as np
from PIL import Image
from test_data_voc import make_voc, write_bad_images  # noqa: E402  (pytest puts tests/ on sys.path)

from cebench.data.check import check_dataset, format_report
from cebench.data.cli import cmd_check


def _problems(report) -> list[str]:
    return [f"{i.severity} {i.path}: {i.problem}" for i in report.issues]


def test_clean_voc_tree_is_ok(tmp_path):
    voc = make_voc(tmp_path)
    for root in (voc, voc.parent, tmp_path):
        r = check_dataset(root)
        assert r.ok and r.kind == "voc" and r.n_images == 3, _problems(r)
    assert r.split_counts == {"Main/trainval": 3, "Segmentation/val": 2}
    assert r.class_counts["trainval"]["dog"] == 1 and r.object_counts["dog"] == 3
    assert "OK" in format_report(r)


def test_every_problem_reported_with_its_path(tmp_path, capsys):
    voc = make_voc(tmp_path)
    jp, an, sc = voc / "JPEGImages", voc / "Annotations", voc / "SegmentationClass"
    bad = write_bad_images(tmp_path / "bad")
    # image problems: corrupt and truncated (errors), grayscale / CMYK (warnings)
    shutil.copy(bad["corrupt"], jp / "000011.jpg")
    shutil.copy(bad["truncated"], jp / "000012.jpg")
    shutil.copy(bad["gray"], jp / "000013.jpg")
    shutil.copy(bad["cmyk"], jp / "000014.jpg")
    # XML size differs from the real image; box outside; empty box
    x5 = an / "000005.xml"
    x5.write_text(x5.read_text().replace("<width>500</width>", "<width>640</width>"))
    x7 = an / "000007.xml"
    x7.write_text(x7.read_text().replace("<xmax>333</xmax>", "<xmax>400</xmax>"))
    x9 = an / "000009.xml"
    x9.write_text(x9.read_text().replace("<xmax>50</xmax>", "<xmax>4</xmax>"))
    # segmentation PNG of the wrong size
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="P").save(sc / "000009.png")
    # ids listed in a split without image / annotation
    (voc / "ImageSets/Main/test.txt").write_text("000005\n000099\n")
    (an / "000005.xml").rename(an / "keep.xml")
    shutil.copy(an / "keep.xml", an / "000005.xml")
    (voc / "ImageSets/Main/val.txt").write_text("000013\n")  # image 000013 has no annotation

    r = check_dataset(tmp_path)
    text = "\n".join(_problems(r))
    assert not r.ok
    expect = [
        ("error", jp / "000011.jpg", "image"),  # corrupt bytes: "unreadable" or "truncated"
        ("error", jp / "000012.jpg", "truncated"),
        ("warning", jp / "000013.jpg", "mode L"),
        ("warning", jp / "000014.jpg", "mode CMYK"),
        ("error", x5, "640x375 in XML but the image is 500x375"),
        ("warning", x7, "1 box(es) in 1 annotation(s) reach outside their image; they are clipped"),
        ("error", x9, "empty box"),
        ("error", sc / "000009.png", "mask size 10x10"),
        ("error", voc / "ImageSets/Main/test.txt", "id 000099: no image"),
        ("error", voc / "ImageSets/Main/test.txt", "id 000099: no annotation"),
        ("error", voc / "ImageSets/Main/val.txt", "id 000013: no annotation"),
    ]
    for sev, path, needle in expect:
        assert any(i.severity == sev and i.path == str(path) and needle in i.problem for i in r.issues), \
            f"{sev} {path} {needle}\n{text}"
    out = format_report(r)
    assert str(jp / "000011.jpg") in out and "PROBLEMS FOUND" in out

    class Args:
        root, max_issues = str(tmp_path), 50
    assert cmd_check(Args) == 1
    capsys.readouterr()


def test_image_folder_and_missing(tmp_path):
    bad = write_bad_images(tmp_path / "imgs")
    r = check_dataset(tmp_path / "imgs")
    assert r.kind == "folder" and r.n_images == 8 and not r.ok
    errors = {i.path for i in r.errors}
    assert errors == {str(bad["corrupt"]), str(bad["truncated"])}
    warned = {i.path for i in r.warnings}
    assert {str(bad[k]) for k in ("gray", "cmyk", "png16", "palette", "alpha")} <= warned
    assert str(bad["good"]) not in warned
    (tmp_path / "empty").mkdir()
    assert not check_dataset(tmp_path / "empty").ok
    assert not check_dataset(tmp_path / "missing").ok
