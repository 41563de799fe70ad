"""VOC loaders on a hand-made tree in real VOCdevkit layout, bad images, and the image-folder dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cebench.data import VOC_CLASSES, VOCIndex, find_voc_root
from cebench.data.voc import voc_palette
from cebench.errors import BadImageError, CebenchError, DatasetMissingError
from cebench.images import open_rgb

OBJ = """<object><name>{name}</name><pose>Left</pose><truncated>{t}</truncated><difficult>{d}</difficult>
<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"""


def make_voc(root: Path, year: str = "2007") -> Path:
    """A 3-image VOC tree: odd sizes, truncated and difficult objects, no classes.txt."""
    voc = root / "VOCdevkit" / f"VOC{year}"
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Main", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records = {
        "000005": ((500, 375), [("person", 0, 0, (1, 1, 200, 375)), ("dog", 0, 1, (250, 100, 400, 300))]),
        "000007": ((333, 500), [("car", 1, 0, (10, 20, 333, 200))]),
        "000009": ((500, 332), [("dog", 0, 0, (5, 5, 50, 60)), ("dog", 0, 0, (60, 60, 120, 130)),
                                ("tvmonitor", 0, 0, (300, 10, 480, 200))]),
    }
    pal = voc_palette()
    for i, ((w, h), objs) in records.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{i}.jpg")
        xml = "".join(OBJ.format(name=n, t=t, d=d, b=b) for n, t, d, b in objs)
        (voc / "Annotations" / f"{i}.xml").write_text(
            f"<annotation><folder>VOC{year}</folder><filename>{i}.jpg</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size><segmented>1</segmented>{xml}</annotation>")
        seg = np.zeros((h, w), np.uint8)
        for n, _t, _d, b in objs:
            seg[b[1] - 1:b[3], b[0] - 1:b[2]] = VOC_CLASSES.index(n) + 1
        seg[0, :] = 255
        png = Image.fromarray(seg, mode="P")
        png.putpalette(pal)
        png.save(voc / "SegmentationClass" / f"{i}.png")
    (voc / "ImageSets/Main/trainval.txt").write_text("000005\n000007\n000009\n")
    (voc / "ImageSets/Main/dog_trainval.txt").write_text("000005 0\n000007 -1\n000009 1\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("000005\n000009\n")
    return voc


@pytest.fixture
def voc(tmp_path) -> Path:
    return make_voc(tmp_path)


def test_find_voc_root_forms_and_missing(voc, tmp_path):
    assert find_voc_root(voc) == voc
    assert find_voc_root(voc.parent) == voc
    assert find_voc_root(tmp_path) == voc
    assert find_voc_root(tmp_path, year=2007) == voc
    make_voc(tmp_path, "2012")
    assert find_voc_root(tmp_path, "2012").name == "VOC2012"
    with pytest.raises(CebenchError, match="several VOC years"):
        find_voc_root(tmp_path)
    with pytest.raises(DatasetMissingError) as e:
        find_voc_root(tmp_path / "nowhere", year=2007)
    msg = str(e.value)
    for needle in ("VOCtrainval_06-Nov-2007.tar", "VOCtest_06-Nov-2007.tar", "VOCtrainval_11-May-2012.tar",
                   "VOCdevkit/VOC2007"):
        assert needle in msg


def test_index_records(voc):
    idx = VOCIndex(voc.parent.parent, "trainval")
    assert idx.classes == VOC_CLASSES and len(VOC_CLASSES) == 20
    assert idx.ids == ["000005", "000007", "000009"]
    a = idx.annotation(0)
    assert a["width"] == 500 and a["height"] == 375
    assert a["boxes"].dtype == np.float32 and a["labels"].dtype == np.int64
    np.testing.assert_array_equal(a["boxes"], [[0, 0, 200, 375], [249, 99, 400, 300]])
    assert a["labels"].tolist() == [VOC_CLASSES.index("person"), VOC_CLASSES.index("dog")]
    assert a["difficult"].tolist() == [False, True] and idx.annotation(1)["truncated"].tolist() == [True]
    lab = idx.image_labels(0)
    assert lab.dtype == np.int8 and lab[VOC_CLASSES.index("person")] == 1 and lab[VOC_CLASSES.index("dog")] == 0
    assert (np.delete(lab, [VOC_CLASSES.index("person"), VOC_CLASSES.index("dog")]) == -1).all()
    # agrees with VOC's own per-class file
    dog = [int(line.split()[1]) for line in (voc / "ImageSets/Main/dog_trainval.txt").read_text().splitlines()]
    assert idx.label_matrix()[:, VOC_CLASSES.index("dog")].tolist() == dog
    assert idx.load_image(1).size == (333, 500)
    seg = VOCIndex(voc, "val", kind="segmentation").segmentation(1)
    assert seg.shape == (332, 500) and seg[0, 0] == 255 and seg[10, 10] == VOC_CLASSES.index("dog") + 1


def test_bad_annotations_name_the_file(voc):
    xml = voc / "Annotations" / "000007.xml"
    xml.write_text(xml.read_text().replace("<name>car</name>", "<name>spaceship</name>"))
    with pytest.raises(CebenchError, match="000007.xml.*spaceship"):  # a fixed class list (data.classes)
        VOCIndex(voc, "trainval", classes=list(VOC_CLASSES)).annotation(1)
    index = VOCIndex(voc, "trainval")  # no class list given: the names come from the annotations
    assert index.class_source == "annotations" and "spaceship" in index.classes
    xml.write_text("<annotation><size><width>3")
    with pytest.raises(CebenchError, match="000007.xml"):
        VOCIndex(voc, "trainval").annotation(1)
    with pytest.raises(DatasetMissingError, match="nosuchsplit"):
        VOCIndex(voc, "nosuchsplit")


def write_bad_images(d: Path) -> dict[str, Path]:
    """One file of every awkward kind; returns name -> path."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    p = {k: d / f"{k}.{ext}" for k, ext in [("good", "jpg"), ("corrupt", "jpg"), ("truncated", "jpg"),
                                            ("gray", "jpg"), ("cmyk", "jpg"), ("png16", "png"),
                                            ("palette", "png"), ("alpha", "png")]}
    Image.fromarray(rgb).save(p["good"])
    p["corrupt"].write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" * 3)
    Image.fromarray(rgb).save(p["truncated"], quality=95)
    p["truncated"].write_bytes(p["truncated"].read_bytes()[:300])
    Image.fromarray(rgb[..., 0]).save(p["gray"])
    Image.fromarray(rgb).convert("CMYK").save(p["cmyk"])
    Image.fromarray((rng.integers(0, 65535, (24, 32))).astype(np.uint16)).save(p["png16"])
    Image.fromarray(rgb).convert("P").save(p["palette"])
    Image.fromarray(np.dstack([rgb, np.full((24, 32), 128, np.uint8)])).save(p["alpha"])
    return p


def test_every_bad_image_kind_through_open_rgb(tmp_path):
    p = write_bad_images(tmp_path)
    for kind in ("corrupt", "truncated"):
        with pytest.raises(BadImageError) as e:
            open_rgb(p[kind])
        assert str(p[kind]) in str(e.value)
    assert Image.open(p["cmyk"]).mode == "CMYK" and Image.open(p["png16"]).mode.startswith("I")
    for kind in ("good", "gray", "cmyk", "png16", "palette", "alpha"):
        img = open_rgb(p[kind])
        assert img.mode == "RGB" and img.size == (32, 24), kind
