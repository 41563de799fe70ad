"""Users' own VOC-format data: one custom class ('raccoon'), XML as labelling tools write it (optional
fields missing, <size> last or absent, boxes past the border, float coordinates), 16:9 images;
`cebench data check`, `transfer det` and `transfer cls` on it at the tiny config; nothing written into it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cebench.benchmarks.cli import main as cli_main
from cebench.data.check import check_dataset, format_report
from cebench.data.voc import VOCIndex, parse_annotation, resolve_classes
from cebench.errors import CebenchError

torch.set_num_threads(1)

W, H = 192, 108  # 1920x1080 at a tenth: the aspect of camera and phone data sets, small enough for speed


def _obj(box, *, full: bool, name: str = "raccoon") -> str:
    fields = "<pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>" if full else ""
    b = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True))
    return f"<object><name>{name}</name>{fields}<bndbox>{b}</bndbox></object>"


def _xml(i: str, variant: int, boxes) -> str:
    """Six XML styles seen in public VOC-format data sets."""
    size = f"<size><width>{W}</width><height>{H}</height><depth>3</depth></size>"
    head = f"<folder>VOC2007</folder><filename>{i}.jpg</filename>"
    if variant == 0:  # complete, as the VOC devkit writes it
        objs = "".join(_obj(b, full=True) for b in boxes)
        return f"<annotation>{head}{size}<segmented>0</segmented>{objs}</annotation>"
    if variant == 1:  # no <truncated>/<difficult>/<pose>/<segmented>
        return f"<annotation>{head}{size}{''.join(_obj(b, full=False) for b in boxes)}</annotation>"
    if variant == 2:  # <size> after the objects
        return f"<annotation>{head}{''.join(_obj(b, full=False) for b in boxes)}{size}</annotation>"
    if variant == 3:  # no <size> at all: read from the image
        return f"<annotation>{head}{''.join(_obj(b, full=False) for b in boxes)}</annotation>"
    if variant == 4:  # <size> 0 x 0 (some exporters), float coordinates
        z = "<size><width>0</width><height>0</height><depth>3</depth></size>"
        return f"<annotation>{head}{z}{''.join(_obj([f'{v}.0' for v in b], full=False) for b in boxes)}</annotation>"
    # variant 5: a box reaching past the right and bottom borders (clipped when loaded)
    bad = [(b[0], b[1], W + 25, H + 9) for b in boxes[:1]] + list(boxes[1:])
    return f"<annotation>{head}{size}{''.join(_obj(b, full=True) for b in bad)}</annotation>"


def make_raccoon_tree(root: Path, n: int = 24) -> Path:
    """VOCdevkit/VOC2007 with one custom class and no classes.txt; every 4th image has no raccoon."""
    voc = root / "VOCdevkit" / "VOC2007"
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:H, :W]
    ids = []
    for k in range(n):
        i = f"raccoon-{k:03d}"
        ids.append(i)
        img = (rng.random((H, W, 3)) * 80 + 90).astype(np.uint8)
        boxes = []
        if k % 4 != 3:
            bw, bh = int(rng.integers(40, 70)), int(rng.integers(35, 60))
            x0, y0 = int(rng.integers(0, W - bw)), int(rng.integers(0, H - bh))
            ring = ((xx - x0 - bw / 2) // 6 % 2 == 0)[y0:y0 + bh, x0:x0 + bw]  # a striped grey-brown body
            img[y0:y0 + bh, x0:x0 + bw] = np.where(ring[..., None], (70, 60, 50), (150, 140, 120))
            boxes.append((x0 + 1, y0 + 1, x0 + bw, y0 + bh))  # VOC: 1-based, inclusive
        Image.fromarray(img).save(voc / "JPEGImages" / f"{i}.jpg", quality=90)
        (voc / "Annotations" / f"{i}.xml").write_text(_xml(i, k % 6, boxes))
    splits = {"train": ids[:10], "val": ids[10:16], "trainval": ids[:16], "test": ids[16:]}
    for s, lst in splits.items():
        (voc / "ImageSets" / "Main" / f"{s}.txt").write_text("\n".join(lst) + "\n")
    return voc


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path -> sha256): compared before and after a run."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def raccoons(tmp_path_factory) -> Path:
    return make_raccoon_tree(tmp_path_factory.mktemp("raccoons"))


def test_classes_come_from_the_annotations_with_one_line_saying_so(raccoons, tmp_path):
    assert resolve_classes(raccoons) == (("raccoon",), "annotations")
    assert resolve_classes(raccoons, ["raccoon", "dog"]) == (("raccoon", "dog"), "data.classes")
    names = tmp_path / "names.txt"
    names.write_text("dog\nraccoon\n")
    assert resolve_classes(raccoons, str(names)) == (("dog", "raccoon"), "data.classes")
    with pytest.raises(CebenchError, match="duplicate class names raccoon"):
        resolve_classes(raccoons, ["raccoon", "raccoon"])
    with pytest.raises(CebenchError, match="nosuch.txt not found"):
        resolve_classes(raccoons, str(tmp_path / "nosuch.txt"))

    r = check_dataset(raccoons)
    assert r.ok, format_report(r)
    text = format_report(r)
    assert "classes (1, from annotations): raccoon" in text
    outside = [i for i in r.issues if "outside the VOC list" in i.problem]
    assert len(outside) == 1 and outside[0].severity == "warning"  # once, not once per file
    assert outside[0].problem.startswith("18 annotations use classes outside the VOC list: raccoon - they will be "
                                         "read from the annotations (or set data.classes)")
    clipped = [i for i in r.issues if "clipped" in i.problem]
    assert len(clipped) == 1 and clipped[0].problem.startswith("2 box(es) in 2 annotation(s) reach outside")
    assert r.object_counts == {"raccoon": 18}
    assert r.class_counts["test"] == {"raccoon": 6}


def test_a_given_class_list_reports_missing_names_once(raccoons, tmp_path):
    r = check_dataset(raccoons, classes=["dog", "cat"])
    bad = [i for i in r.errors if "not in data.classes" in i.problem]
    assert len(bad) == 1 and "18 annotations use classes not in data.classes: raccoon" in bad[0].problem
    assert not any("unknown class" in i.problem for i in r.issues)  # no per-file flood


def test_xml_variants_parse_with_devkit_defaults(raccoons):
    index = VOCIndex(raccoons, "trainval")
    assert index.classes == ("raccoon",) and index.class_source == "annotations"
    anns = [index.annotation(k) for k in range(len(index))]
    for k, ann in enumerate(anns):
        assert (ann["width"], ann["height"]) == (W, H), k  # from <size> wherever it is, or from the image
        assert len(ann["boxes"]) == (0 if k % 4 == 3 else 1)
        assert not ann["difficult"].any() and not ann["truncated"].any()
        assert ann["pose"] == ["Unspecified"] * len(ann["boxes"]) and ann["segmented"] is False
        b = ann["boxes"]
        assert (b[:, :2] >= 0).all() and (b[:, 2] <= W).all() and (b[:, 3] <= H).all()
    assert [a["clipped"] for a in anns] == [1 if k % 6 == 5 and k % 4 != 3 else 0 for k in range(len(anns))]
    assert index.label_matrix().tolist() == [[-1] if k % 4 == 3 else [1] for k in range(len(index))]


def test_full_hd_image_without_size_and_boxes_outside(tmp_path):
    img = tmp_path / "big.jpg"
    Image.new("RGB", (1920, 1080), (90, 80, 70)).save(img)
    xml = tmp_path / "big.xml"
    xml.write_text("<annotation><object><name>raccoon</name><bndbox><xmin>-4</xmin><ymin>10</ymin><xmax>2000</xmax>"
                   "<ymax>1079.5</ymax></bndbox></object><object><name>raccoon</name><bndbox><xmin>1950</xmin>"
                   "<ymin>5</ymin><xmax>1990</xmax><ymax>50</ymax></bndbox></object></annotation>")
    ann = parse_annotation(xml, {"raccoon": 0}, img)
    assert (ann["width"], ann["height"]) == (1920, 1080)
    np.testing.assert_allclose(ann["boxes"], [[0, 9, 1920, 1079.5]])  # clipped; the one outside dropped
    assert ann["clipped"] == 1 and ann["dropped"] == 1
    with pytest.raises(CebenchError, match=r"big.xml: no <size>"):
        parse_annotation(xml, {"raccoon": 0})  # no image to read the size from


def test_data_check_det_and_cls_at_the_tiny_config(raccoons, tmp_path, capsys, caplog):
    before = tree_digest(raccoons.parent.parent)
    caplog.set_level("INFO", logger="cebench")
    assert cli_main(["data", "check", str(raccoons.parent.parent)]) == 0
    out = capsys.readouterr().out
    assert out.count("outside the VOC list") == 1 and "classes (1, from annotations): raccoon" in out

    det_out, cache = tmp_path / "det", tmp_path / "cache"
    rc = cli_main(["transfer", "det", "--config", "tiny", "--data", str(raccoons), "--out", str(det_out),
                   "--cache", str(cache), "--seeds", "0", "det.iterations=6", "det.magic_images=4", "det.eval_batch=8",
                   "det.figure_images=2", "workers=1", "det.proposals.workers=1", "det.proposals.max_proposals=300"])
    assert rc == 0
    assert caplog.text.count("[det] classes (1, from annotations): raccoon") == 1  # the command's log
    rows = json.loads((det_out / "results.json").read_text())["rows"]
    det = {r["metric"]: r for r in rows if r["task"] == "det" and r["init"] == "random"}
    assert 0.0 <= det["mAP"]["mean"] <= 1.0 and det["mAP"]["seeds"] == 1
    job = json.loads(next((det_out / "jobs" / "det").rglob("final_*.json")).read_text())
    assert list(job["details"]["ap"]) == ["raccoon"] and job["details"]["npos"] == {"raccoon": 6}
    entries = list((cache / "proposals").glob("*/raccoon-*.npz"))
    assert len(entries) == 24  # every image of the four splits, in the cache folder

    cls_out = tmp_path / "cls"
    rc = cli_main(["transfer", "cls", "--config", "tiny", "--data", str(raccoons), "--out", str(cls_out),
                   "--cache", str(cache), "--seeds", "0", "cls.iterations=4", "cls.batch_size=8", "cls.fc_dim=32",
                   "magic_images=8"])
    assert rc == 0
    assert caplog.text.count("[cls] classes (1, from annotations): raccoon") == 1
    rows = json.loads((cls_out / "results.json").read_text())["rows"]
    cls = [r for r in rows if r["task"] == "cls" and r["metric"] == "mAP" and r["init"] == "random"]
    assert len(cls) == 1 and 0.0 <= cls[0]["mean"] <= 100.0
    job = json.loads(next((cls_out / "jobs" / "cls").rglob("final_*.json")).read_text())
    assert list(job["details"]["ap"]) == ["raccoon"]
    assert list((cache / "splits").glob("cls-*.pt"))  # decoded splits in the cache folder too
    assert tree_digest(raccoons.parent.parent) == before  # nothing in the data changed, nothing added
