"""`cebench data prepare sysu-shapes`: SYSU-Shapes' published layout -> a VOC tree the readers accept.

A small SYSU-format source is written here (scipy.io.savemat struct arrays, PIL JPEGs: RGB, grayscale,
CMYK, one truncated image, one .mat of random bytes, one image without its .mat, one photo in two class
folders); boxes and masks are checked against values worked out by hand, the splits against the formula,
`cebench data check` against the output, and the source folder byte for byte. The real data set is
converted when ../shared/data/sysu-shapes is there.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from cebench.benchmarks.cli import main
from cebench.data.sysu import (
    MARKER_NAME,
    SysuConfig,
    annotation_origin,
    prepare_sysu,
    rasterise,
    read_sysu_annotation,
    stratified_splits,
    voc_box,
)
from cebench.data.voc import VOCIndex, find_voc_root, read_segmentation
from cebench.errors import CebenchError, ConfigError

SYSU = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sysu-shapes"
W, H = 40, 30
TRIANGLE = [[0, 10, 0], [0, 0, 10]]  # [x; y] relative to the box's top-left corner
BOX = [5, 15, 8, 18]                 # [ymin ymax xmin xmax] of that triangle


def write_mat(path: Path, objects) -> Path:
    """A SYSU annotation: struct array `object` with box_coord [ymin ymax xmin xmax] and obj_contour [x; y]."""
    arr = np.empty((1, len(objects)), dtype=[("box_coord", "O"), ("obj_contour", "O")])
    for k, (box, contour) in enumerate(objects):
        arr[0, k]["box_coord"] = np.asarray(box, np.uint16).reshape(1, 4)
        arr[0, k]["obj_contour"] = np.asarray(contour, np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {"object": arr})
    return path


def _rect(x0: int, y0: int, w: int, h: int):
    return [y0, y0 + h, x0, x0 + w], [[0, w, w, 0], [0, 0, h, h]]


def write_image(path: Path, seed: int, mode: str = "RGB") -> Path:
    """A smooth picture (JPEG keeps it within a few levels), different for every seed."""
    c0, c1 = np.random.default_rng(seed).uniform(30, 225, (2, 3))
    t = (np.add.outer(np.arange(H) / H, np.arange(W) / W) / 2)[..., None]
    rgb = np.rint(c0 * (1 - t) + c1 * t).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).convert(mode).save(path, format="JPEG", quality=90)
    return path


def make_source(root: Path) -> Path:
    """airplane 8 photos (one Caltech-101 style, one grayscale, one also in car), boat 6 (+1 truncated image,
    one CMYK), car 5 (+ the shared photo, one .mat of random bytes, one image without its .mat)."""
    for cls, k0 in (("airplane", 0), ("boat", 10), ("car", 20)):
        for k in range(5):
            name = f"voc2012_2008_{k0 + k:06d}"
            write_image(root / cls / "images" / f"{name}.jpg", k0 + k)
            write_mat(root / cls / "annotations" / f"{name}.mat",
                      [(BOX, TRIANGLE)] if k == 0 else [_rect(2 + k, 3, 20, 12), _rect(25, 15, 10, 10)][:1 + k % 2])
    a, c, b = root / "airplane", root / "car", root / "boat"
    write_image(a / "images" / "101_airplanes_image_0001.jpg", 100)
    write_mat(a / "annotations" / "101_airplanes_image_0001.mat", [(BOX, TRIANGLE)])
    write_image(a / "images" / "voc2007_000001.jpg", 101, mode="L")
    write_mat(a / "annotations" / "voc2007_000001.mat", [_rect(1, 1, 30, 20)])
    write_image(a / "images" / "voc2012_2009_000825.jpg", 102)            # also in car/, same bytes
    write_mat(a / "annotations" / "voc2012_2009_000825.mat", [_rect(0, 0, 20, 15)])
    (c / "images" / "voc2012_2009_000825.jpg").write_bytes((a / "images" / "voc2012_2009_000825.jpg").read_bytes())
    write_mat(c / "annotations" / "voc2012_2009_000825.mat", [_rect(10, 10, 25, 19)])
    write_image(b / "images" / "voc2012_2010_000001.jpg", 103, mode="CMYK")
    write_mat(b / "annotations" / "voc2012_2010_000001.mat", [_rect(4, 4, 20, 20)])
    t = write_image(b / "images" / "voc2012_2010_000002.jpg", 104)
    t.write_bytes(t.read_bytes()[:300])                                   # truncated image, good .mat
    write_mat(b / "annotations" / "voc2012_2010_000002.mat", [_rect(4, 4, 20, 20)])
    write_image(c / "images" / "voc2012_2011_000001.jpg", 105)
    (c / "annotations" / "voc2012_2011_000001.mat").write_bytes(np.random.default_rng(0).bytes(400))
    write_image(c / "images" / "voc2012_2011_000002.jpg", 106)            # no .mat
    (c / "contours").mkdir()                                              # the public layout's edge maps: not read
    (root / "README.md").write_text("SYSU-Shapes\n")
    return root


BAD = {"car/annotations/voc2012_2011_000001.mat": "unreadable .mat",
       "boat/images/voc2012_2010_000002.jpg": "truncated image",
       "car/images/voc2012_2011_000002.jpg": "no annotation car/annotations/voc2012_2011_000002.mat"}


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under root: content hash, size, modification time."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(root))] = (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
                                         st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    base = tmp_path_factory.mktemp("sysu")
    src = make_source(base / "SYSU-Shapes")
    before = snapshot(src)
    report = prepare_sysu(src, base / "voc", SysuConfig(void_px=1))
    return src, base / "voc", report, before


def test_box_conversion_exact():
    # [ymin ymax xmin xmax] 0-based (VOC photos) -> VOC 1-based inclusive (xmin ymin xmax ymax): + 1
    assert voc_box([10, 20, 5, 15], W, H, origin=0) == ((6, 11, 16, 21), False)
    # 1-based (Caltech-101's MATLAB files): unchanged
    assert voc_box([10, 20, 5, 15], W, H, origin=1) == ((5, 10, 15, 20), False)
    # a 0-based box touching every edge fills the image exactly; one past the edge is clipped
    assert voc_box([0, H - 1, 0, W - 1], W, H, origin=0) == ((1, 1, W, H), False)
    assert voc_box([0, H, 0, W], W, H, origin=0) == ((1, 1, W, H), True)
    assert voc_box([0, 5, 0, 5], W, H, origin=1) == ((1, 1, 5, 5), True)
    with pytest.raises(ValueError, match="outside"):
        voc_box([5, 10, 40, 45], W, H, origin=0)
    with pytest.raises(ValueError, match="min > max"):
        voc_box([10, 5, 1, 2], W, H, origin=0)
    assert annotation_origin("101_airplanes_image_0012") == 1 and annotation_origin("voc2007_000023") == 0
    assert annotation_origin("101_x", "0") == 0 and annotation_origin("voc2007_1", "1") == 1


def _triangle_sets(x0: int, y0: int):
    """Pixels of the right triangle (x0, y0), (x0 + 10, y0), (x0, y0 + 10) by hand: all, and the interior."""
    yy, xx = np.mgrid[:H, :W]
    u, v = xx - x0, yy - y0
    full = (u >= 0) & (v >= 0) & (u + v <= 10)
    inner = (u > 0) & (v > 0) & (u + v < 10)
    return full, inner


def test_triangle_mask_by_hand(tmp_path):
    mat = write_mat(tmp_path / "t.mat", [(BOX, TRIANGLE)])
    (obj,) = read_sysu_annotation(mat, W, H, origin=0)
    assert obj["box"] == (9, 6, 19, 16) and not obj["box_clipped"] and not obj["outline_clipped"]
    np.testing.assert_array_equal(obj["polygon"], [[8, 5], [18, 5], [8, 15]])
    full, inner = _triangle_sets(8, 5)
    assert full.sum() == 66 and inner.sum() == 36  # 11 + 10 + ... + 1; the 3 edges hold 11 + 11 + 11 - 3 = 30
    m0 = rasterise([(2, obj["polygon"])], H, W, void_px=0)
    np.testing.assert_array_equal(m0, np.where(full, 2, 0))
    m1 = rasterise([(2, obj["polygon"])], H, W, void_px=1)
    np.testing.assert_array_equal(m1, np.where(inner, 2, np.where(full, 255, 0)))
    # origin 1 (MATLAB): the same numbers are one pixel up and left
    (obj1,) = read_sysu_annotation(mat, W, H, origin=1)
    assert obj1["box"] == (8, 5, 18, 15)
    np.testing.assert_array_equal(rasterise([(2, obj1["polygon"])], H, W, 0), np.where(_triangle_sets(7, 4)[0], 2, 0))
    # overlapping objects: the later one wins, the bands of both are void
    both = rasterise([(1, obj["polygon"]), (3, obj1["polygon"])], H, W, void_px=0)
    assert both[10, 10] == 3 and both[14, 8] == 1 and both[4, 7] == 3


def _damaged(tmp_path: Path, kind: str) -> Path:
    p = tmp_path / f"{kind}.mat"
    good = write_mat(tmp_path / "good.mat", [(BOX, TRIANGLE)]).read_bytes()
    if kind == "random":
        p.write_bytes(np.random.default_rng(1).bytes(500))
    elif kind == "truncated":
        p.write_bytes(good[: len(good) // 2])
    elif kind == "text":
        p.write_text("object = 3\n")
    elif kind == "no_object":
        savemat(str(p), {"objects": np.arange(3)})
    elif kind == "missing_field":
        arr = np.empty((1, 1), dtype=[("box_coord", "O")])
        arr[0, 0]["box_coord"] = np.array([[5, 15, 8, 18]])
        savemat(str(p), {"object": arr})
    elif kind == "contour_shape":
        write_mat(p, [(BOX, [[0, 1, 2], [0, 1, 2], [0, 1, 2]])])
    elif kind == "outline_outside":
        write_mat(p, [(BOX, [[-100, -90, -100], [0, 0, 10]])])
    elif kind == "box_outside":
        write_mat(p, [([5, 10, 100, 110], TRIANGLE)])
    elif kind == "no_area":
        write_mat(p, [(BOX, [[0, 5, 10], [0, 5, 10]])])
    elif kind == "empty":
        savemat(str(p), {"object": np.empty((1, 0), dtype=[("box_coord", "O"), ("obj_contour", "O")])})
    return p


@pytest.mark.parametrize("kind,says", [
    ("random", "unreadable .mat"), ("truncated", "unreadable .mat"), ("text", "unreadable .mat"),
    ("no_object", "no struct array 'object'"), ("missing_field", "without field 'obj_contour'"),
    ("contour_shape", "not a 2 x n polygon"), ("outline_outside", "outline outside the 40x30 image"),
    ("box_outside", "box outside the 40x30 image"), ("no_area", "no area"), ("empty", "no objects"),
])
def test_damaged_annotation_gives_one_line_naming_the_file(tmp_path, kind, says):
    path = _damaged(tmp_path, kind)
    with pytest.raises(CebenchError) as e:
        read_sysu_annotation(path, W, H)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and says in msg and "\n" not in msg, msg


def test_fixture_converted_boxes_masks_and_images(converted):
    src, out, report, _ = converted
    assert find_voc_root(out) == out and report.classes == ("airplane", "boat", "car")
    assert (out / "classes.txt").read_text() == "airplane\nboat\ncar\n"
    # the damaged and unpaired files are skipped, each named once
    assert sorted(Path(f).relative_to(src).as_posix() for f, _ in report.skipped) == sorted(BAD)
    for f, says in BAD.items():
        assert any(s.endswith(f) and says in p for s, p in report.skipped), f
    assert report.source_images == 22  # image + .mat pairs; the image without its .mat is not one
    readme = (out / "README.md").read_text()
    assert "## Skipped files (3)" in readme and "voc2012_2011_000001.mat" in readme
    assert "What the source does not annotate" in readme and "their pixels are background (0)" in readme
    idx = VOCIndex(out, "trainval")
    allids = {*idx.ids, *VOCIndex(out, "test").ids}
    assert len(allids) == 19 and "car_voc2012_2009_000825" not in allids
    # a VOC photo (0-based) and a Caltech-101 photo (1-based) with the same numbers: boxes by hand
    jpg = out / "JPEGImages"
    for image_id, (x0, y0) in (("airplane_voc2012_2008_000000", (8, 5)), ("airplane_101_airplanes_image_0001", (7, 4))):
        split = "trainval" if image_id in idx.ids else "test"
        vi = VOCIndex(out, split)
        ann = vi.annotation(vi.ids.index(image_id))
        np.testing.assert_array_equal(ann["boxes"], [[x0, y0, x0 + 11, y0 + 11]])  # 0-based edges
        assert ann["labels"].tolist() == [0] and not ann["difficult"].any()
        full, inner = _triangle_sets(x0, y0)
        np.testing.assert_array_equal(read_segmentation(out / "SegmentationClass" / f"{image_id}.png"),
                                      np.where(inner, 1, np.where(full, 255, 0)))
    # RGB JPEGs are the source bytes; grayscale and CMYK become RGB JPEGs of the same picture
    assert (jpg / "boat_voc2012_2008_000010.jpg").read_bytes() == \
        (src / "boat" / "images" / "voc2012_2008_000010.jpg").read_bytes()
    for image_id, f in (("airplane_voc2007_000001", "airplane/images/voc2007_000001.jpg"),
                        ("boat_voc2012_2010_000001", "boat/images/voc2012_2010_000001.jpg")):
        with Image.open(jpg / f"{image_id}.jpg") as im:
            assert im.mode == "RGB" and im.format == "JPEG" and im.size == (W, H)
            ours = np.asarray(im, np.float64)
        theirs = np.asarray(Image.open(src / f).convert("RGB"), np.float64)
        assert np.abs(ours - theirs).mean() < 6
    assert report.reencoded == {"CMYK": 1, "L": 1}
    assert report.origins == {"0": 19, "1": 1}  # annotation files: the shared photo has two
    # the photo in two class folders: one image with the objects of both
    i = "airplane_voc2012_2009_000825"
    vi = VOCIndex(out, "trainval" if i in idx.ids else "test")
    ann = vi.annotation(vi.ids.index(i))
    assert sorted(ann["labels"].tolist()) == [0, 2] and report.merged == [(i, ["airplane", "car"])]
    assert set(np.unique(read_segmentation(out / "SegmentationClass" / f"{i}.png"))) == {0, 1, 3, 255}


def test_fixture_splits_stratified_and_match_the_readers(converted):
    _, out, report, _ = converted
    # per class (an image's first class): test round(0.4 n), val round(0.25 (n - test)), the rest train
    n = {"airplane": 8, "boat": 6, "car": 5}
    want = {"test": 3 + 2 + 2, "val": 1 + 1 + 1, "train": 4 + 3 + 2, "trainval": 5 + 4 + 3}
    assert {s: len(v) for s, v in report.images.items()} == want
    first = {i: next(c for c in n if i.startswith(c + "_")) for s in report.images.values() for i in s}
    assert {c: sum(first[i] == c for i in report.images["test"]) for c in n} == {"airplane": 3, "boat": 2, "car": 2}
    for split in ("train", "val", "trainval", "test"):
        vi = VOCIndex(out, split)
        assert vi.ids == report.images[split]
        assert VOCIndex(out, split, kind="segmentation").ids == vi.ids
        # images with each class, from the XML through the VOC reader = what the command reported
        assert dict(zip(vi.classes, (vi.label_matrix() == 1).sum(0).tolist())) == report.per_class[split]
        for c in vi.classes:  # the devkit's per-class lists agree
            lines = (out / "ImageSets" / "Main" / f"{c}_{split}.txt").read_text().split()
            assert lines[1::2] == ["1" if x == 1 else "-1" for x in vi.label_matrix()[:, vi.classes.index(c)]]
    assert set(report.images["train"]).isdisjoint(report.images["val"])
    assert set(report.images["trainval"]).isdisjoint(report.images["test"])


def test_splits_deterministic_per_seed():
    ids = {"a": [f"a_{k}" for k in range(10)], "b": [f"b_{k}" for k in range(21)]}
    s0 = stratified_splits(ids, 0, 0.4, 0.25)
    assert s0 == stratified_splits(ids, 0, 0.4, 0.25)
    assert sum(i.startswith("a_") for i in s0["test"]) == 4 and sum(i.startswith("b_") for i in s0["test"]) == 8
    assert sum(i.startswith("a_") for i in s0["val"]) == 2 and sum(i.startswith("b_") for i in s0["val"]) == 3
    assert sorted(s0["train"] + s0["val"] + s0["test"]) == sorted(ids["a"] + ids["b"])
    s1 = stratified_splits(ids, 1, 0.4, 0.25)
    assert s1["test"] != s0["test"] and len(s1["test"]) == len(s0["test"])
    # one image fewer (a damaged file skipped): the others keep their split but for the boundaries
    less = stratified_splits({"a": ids["a"], "b": ids["b"][1:]}, 0, 0.4, 0.25)
    where = {i: s for s in ("train", "val", "test") for i in s0[s]}
    moved = [i for s in ("train", "val", "test") for i in less[s] if where[i] != s]
    assert len(moved) <= 2
    with pytest.raises(ConfigError, match="test-frac"):
        SysuConfig(test_frac=1.0)


def test_cli_then_data_check_and_source_unchanged(tmp_path, capsys):
    src = make_source(tmp_path / "src")
    before = snapshot(src)
    out = tmp_path / "voc"
    assert main(["data", "prepare", "sysu-shapes", str(src), "--out", str(out), "--seed", "3"]) == 0
    cap = capsys.readouterr()
    assert f"VOC root: {out}" in cap.out and "images: 19 from 22 annotated source images; 3 files skipped" in cap.out
    assert "airplane" in cap.out and "took" in cap.out
    warnings = [line for line in cap.err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 3 and all(any(k in w for k in BAD) for w in warnings)
    assert "--seed 3" in (out / "README.md").read_text()
    assert main(["data", "check", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.rstrip().endswith("OK") and "classes (3, from classes.txt)" in text and "errors" not in text
    assert snapshot(src) == before
    # rerun: reused; other settings: refused (one line), then --force replaces it
    assert main(["data", "prepare", "sysu-shapes", str(src), "--out", str(out), "--seed", "3"]) == 0
    assert "reused" in capsys.readouterr().out
    assert main(["data", "prepare", "sysu-shapes", str(src), "--out", str(out), "--seed", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out} holds a SYSU-Shapes conversion") and "seed 3 -> 4" in err
    assert main(["data", "prepare", "sysu-shapes", str(src), "--out", str(out), "--seed", "4", "--force"]) == 0
    capsys.readouterr()
    assert '"seed": 4' in (out / MARKER_NAME).read_text()
    assert snapshot(src) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".voc.lock", "src", "voc"]  # no temp folder left


def test_strict_refusals_and_source_unchanged(converted, tmp_path, capsys):
    src, _, _, before = converted
    assert snapshot(src) == before  # the module's conversion wrote nothing into the source
    out = tmp_path / "strict"
    with pytest.raises(CebenchError, match=r"voc2012_2010_000002.jpg|voc2012_2011_00000[12]") as e:
        prepare_sysu(src, out, SysuConfig(strict=True))
    assert "--strict" in str(e.value) and not out.exists()
    assert not list(tmp_path.glob(".strict.*.tmp"))
    foreign = tmp_path / "foreign"
    (foreign / "x").mkdir(parents=True)
    with pytest.raises(CebenchError, match="not a SYSU-Shapes conversion"):
        prepare_sysu(src, foreign)
    with pytest.raises(CebenchError, match="inside the source folder"):
        prepare_sysu(src, src / "voc")
    with pytest.raises(CebenchError, match="holds the source folder"):
        prepare_sysu(src, src.parent)
    with pytest.raises(CebenchError, match="no SYSU-Shapes class folder"):
        prepare_sysu(tmp_path, tmp_path.parent / "elsewhere")
    assert main(["data", "prepare", "sysu-shapes", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'missing'}: SYSU-Shapes folder not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_sysu(src, empty, SysuConfig(void_px=1)).images  # an empty folder is fine
    assert snapshot(src) == before


def _sysu_or_skip() -> Path:
    if not SYSU.is_dir():
        pytest.skip(f"{SYSU} not found: the real SYSU-Shapes test needs ../shared/data/sysu-shapes")
    return SYSU


def test_real_sysu_shapes_subset(tmp_path, capsys):
    src = _sysu_or_skip()
    listing = {str(p.relative_to(src)): (p.stat().st_size, p.stat().st_mtime_ns) for p in src.rglob("*")}
    out = tmp_path / "sysu-voc"
    t0 = time.perf_counter()
    assert main(["data", "prepare", "sysu-shapes", str(src), "--out", str(out), "--limit-per-class", "30"]) == 0
    seconds = time.perf_counter() - t0
    text = capsys.readouterr().out
    assert "images: 150 from 150 annotated source images; 0 files skipped" in text, text
    assert main(["data", "check", str(out)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("OK")
    vi = VOCIndex(out, "test")
    assert vi.classes == ("airplane", "bicycle", "boat", "car", "motorbike") and len(vi) == 5 * 12
    assert (vi.label_matrix() == 1).sum(0).tolist() == [12] * 5
    assert {str(p.relative_to(src)): (p.stat().st_size, p.stat().st_mtime_ns) for p in src.rglob("*")} == listing
    assert seconds < 20, f"the 150-image conversion took {seconds:.1f} s"


@pytest.mark.slow
def test_real_sysu_shapes_full(tmp_path, capsys):
    src = _sysu_or_skip()
    before = snapshot(src)
    out = tmp_path / "sysu-voc"
    assert main(["data", "prepare", "sysu-shapes", str(src), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "images: 1540 from 1541 annotated source images; 0 files skipped" in text, text
    assert "merged: car_voc2012_2009_000825" in text and "annotations read as 1019 0-based, 522 1-based" in text
    assert main(["data", "check", str(out)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("OK")
    sizes = {s: len(VOCIndex(out, s)) for s in ("train", "val", "trainval", "test")}
    assert sizes == {"train": 692, "val": 232, "trainval": 924, "test": 616}
    assert snapshot(src) == before
