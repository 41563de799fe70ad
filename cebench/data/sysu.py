"""SYSU-Shapes as a PASCAL VOC tree: `cebench data prepare sysu-shapes SRC --out DIR`.

SYSU-Shapes (Lin, Wang, Yang, Lai, TPAMI 2014) as its public repository lays it out:
`SRC/<class>/images/<name>.jpg` and `SRC/<class>/annotations/<name>.mat`, the .mat holding a MATLAB
struct array `object` with one entry per object: `box_coord` = [ymin ymax xmin xmax] and `obj_contour`
= a 2 x n polygon [x; y] relative to the box's top-left corner (`show_annotation.m`). Every object in a
class folder is of that class. Other folders (`contours/`, files beside the classes) are not read.

The output is a VOC root itself (`DIR/JPEGImages`, `DIR/Annotations`, `DIR/SegmentationClass`,
`DIR/ImageSets/{Main,Segmentation}`, `DIR/classes.txt`, `DIR/README.md`): `data.root=DIR`,
`cebench data check DIR` and every stage read it through `cebench.data.voc`.

Conventions, checked on the 1,580 objects of the public release:
- The coordinates are pixel indices with two origins, by provenance. The Caltech-101 photos (`101_*`)
  carry Caltech-101's own annotations (the same `box_coord` / `obj_contour` format, MATLAB, 1-based);
  the VOC photos (`voc2007_*`, `voc2012_*`, outlines clicked in LabelMe) are 0-based. Evidence: the
  image gradient along the outlines, averaged over the objects of each kind, peaks at an offset of
  (dx, dy) = (-2.0, -1.5) px for Caltech-101 and (-0.75, 0.0) for VOC (0-based pixel centres, grid of
  1/4 px); of the VOC boxes, 44 start at x = 0 and none at x = 1, 66 end at width - 1 and 8 at width,
  53 at height - 1 and 3 at height. The data set's description says MATLAB 1-based for all; `origin`
  ("auto", "0" or "1") overrides. What remains (about 1 px for Caltech-101, under 1 px for VOC) is well
  inside the void band of the masks.
  A vertex (x, y) becomes the 0-based pixel (x - origin, y - origin), and VOC's 1-based inclusive box
  is box_coord + (1 - origin), clipped to the image ([1, W] x [1, H]).
- The polygon's smallest x and y are exactly 0: the outline's absolute position is contour + (xmin, ymin).
- Masks: each outline is filled with its class index (classes.txt order, background 0), objects drawn in
  class order and then in the .mat's order, so where two outlines overlap the later one wins; then a
  `void_px`-wide band of 255 (ignored by training and the mean IU) is drawn along every outline, as VOC
  marks its object borders: the outlines are hand-clicked polygons, accurate to a few pixels.
- One photo in two class folders (same bytes; the public release has one, a car and a motorbike) becomes
  one image holding both folders' objects, named after the first of its classes.
- Only objects of the folder's class are annotated. Other objects in a photo (riders, people, a car
  behind a motorbike) count as background for segmentation and as absent for classification and
  detection: a network that finds them is scored as wrong. The same holds for every row compared.

Splits are stratified by class (an image's first class) and seeded: images of a class are ordered by a
hash of (seed, image id); the first round(test_frac * n) are test, of the rest the first
round(val_frac * n_trainval) are val, the others train. An image's place in that order does not depend on
the other images, so skipping or repairing one file moves at most one image per split boundary.

Problems with one image (a damaged or truncated .mat or image, missing fields, an outline or box outside
the image, an image without its .mat) skip that image: one line naming the file, counted in the README
(`strict=True` raises CebenchError at the first instead). Problems with the whole source (no class
folder, DIR inside SRC) stop. The tree is built in a temporary folder beside DIR and moved into place
whole; a finished tree holds a marker with its settings and the source's fingerprint, so a rerun with
the same ones reuses it and different ones are refused unless `force`. Nothing is written into SRC.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from cebench.data.voc import CLASSES_FILE, annotation_xml, voc_palette
from cebench.errors import CebenchError, ConfigError
from cebench.images import IMAGE_EXTENSIONS, inspect_image, open_rgb
from cebench.io import atomic_directory
from cebench.locks import file_lock

SYSU_CLASSES = ("airplane", "bicycle", "boat", "car", "motorbike")
CONVERTER_VERSION = 1
MARKER_NAME = ".cebench_sysu.json"
SPLITS = ("train", "val", "trainval", "test")
_SHIFT = 4  # cv2 sub-pixel bits: polygon vertices at 1/16 pixel
ORIGINS = ("auto", "0", "1")
CALTECH_PREFIX = "101_"  # SYSU's Caltech-101 photos, annotated in Caltech-101's MATLAB (1-based) files


def annotation_origin(name: str, origin: str = "auto") -> int:
    """The coordinate origin of an image's annotation: 1 for SYSU's Caltech-101 photos (`101_*`), 0 for
    the others (see the module docstring), unless `origin` is "0" or "1"."""
    return (1 if name.startswith(CALTECH_PREFIX) else 0) if origin == "auto" else int(origin)


@dataclass(frozen=True)
class SysuConfig:
    seed: int = 0
    test_frac: float = 0.4        # of each class's images
    val_frac: float = 0.25        # of each class's trainval images
    void_px: int = 5              # width of the 255 band along each outline (0: none)
    limit_per_class: int = 0      # > 0: only this many images of each class folder (chosen by name hash)
    strict: bool = False          # stop at the first damaged file instead of skipping it
    jpeg_quality: int = 95        # for images that must be re-encoded (not RGB JPEG)
    origin: str = "auto"          # coordinate origin of the annotations: auto (101_* 1, else 0) | 0 | 1

    def __post_init__(self):
        for name in ("test_frac", "val_frac"):
            v = getattr(self, name)
            if not (0.0 < v < 1.0):
                raise ConfigError(f"{name.replace('_', '-')} must lie strictly between 0 and 1, got {v}")
        if self.void_px < 0 or self.limit_per_class < 0:
            raise ConfigError("void-px and limit-per-class must be >= 0")
        if self.origin not in ORIGINS:
            raise ConfigError(f"origin must be one of {', '.join(ORIGINS)}, got {self.origin!r}")
        if not (1 <= self.jpeg_quality <= 100):
            raise ConfigError(f"jpeg quality must be 1..100, got {self.jpeg_quality}")


@dataclass(frozen=True)
class Record:
    """One image of one class folder and its annotation file."""
    cls: str
    name: str
    image: Path
    annotation: Path


@dataclass
class PrepareReport:
    root: str
    classes: tuple[str, ...]
    images: dict[str, list[str]] = field(default_factory=dict)        # split -> image ids
    per_class: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> images with it
    objects: dict[str, int] = field(default_factory=dict)            # class -> objects
    skipped: list[tuple[str, str]] = field(default_factory=list)     # (file, problem)
    merged: list[tuple[str, list[str]]] = field(default_factory=list)  # (image id, its classes)
    reencoded: dict[str, int] = field(default_factory=dict)          # source mode -> images re-encoded
    origins: dict[str, int] = field(default_factory=dict)            # "0" / "1" -> annotation files read so
    clipped_boxes: int = 0        # boxes reaching outside the image, clipped to it
    clipped_outlines: int = 0     # outlines reaching outside the image (the mask keeps the inside part)
    source_images: int = 0
    reused: bool = False
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------------
# reading one annotation


def _field(entry, name: str, mat_path: Path) -> np.ndarray:
    try:
        value = entry[name]
    except (KeyError, ValueError, IndexError):
        raise CebenchError(f"{mat_path}: object entry without field {name!r} (expected box_coord, "
                           f"obj_contour)") from None
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise CebenchError(f"{mat_path}: field {name!r} is not numeric") from None


def load_objects(mat_path) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(box_coord [4] as stored, contour [2, n])] of one SYSU .mat; CebenchError naming the file."""
    from scipy.io import loadmat  # heavy; only this command reads .mat files

    mat_path = Path(mat_path)
    try:
        mat = loadmat(str(mat_path))
    except FileNotFoundError:
        raise CebenchError(f"{mat_path}: annotation file missing") from None
    except NotImplementedError:
        raise CebenchError(f"{mat_path}: MATLAB v7.3 (HDF5) file, not supported (save it with -v7)") from None
    except Exception as exc:  # noqa: BLE001 - the boundary of this file's parser (random bytes, truncated)
        text = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        raise CebenchError(f"{mat_path}: unreadable .mat ({type(exc).__name__}{': ' + text if text else ''})") \
            from None
    obj = mat.get("object")
    if not isinstance(obj, np.ndarray) or obj.dtype.names is None:
        raise CebenchError(f"{mat_path}: no struct array 'object' (with fields box_coord, obj_contour)")
    out = []
    for k, entry in enumerate(obj.ravel()):
        box = _field(entry, "box_coord", mat_path).reshape(-1)
        poly = _field(entry, "obj_contour", mat_path)
        if box.size != 4 or not np.isfinite(box).all():
            raise CebenchError(f"{mat_path}: object {k + 1}: box_coord is not 4 finite numbers "
                               f"[ymin ymax xmin xmax] (shape {box.shape})")
        if poly.ndim != 2 or poly.shape[0] != 2 or poly.shape[1] < 3 or not np.isfinite(poly).all():
            raise CebenchError(f"{mat_path}: object {k + 1}: obj_contour is not a 2 x n polygon of finite "
                               f"numbers with n >= 3 (shape {poly.shape})")
        out.append((box, poly))
    if not out:
        raise CebenchError(f"{mat_path}: no objects annotated")
    return out


def voc_box(box_coord, width: int, height: int, origin: int = 0) -> tuple[tuple[int, int, int, int], bool]:
    """VOC's 1-based inclusive (xmin, ymin, xmax, ymax) of a SYSU box_coord [ymin ymax xmin xmax] in
    `origin`-based pixel indices, clipped to the image; and whether it had to be clipped. Raises
    ValueError when min > max or nothing of the box is inside the image."""
    ymin, ymax, xmin, xmax = (float(v) + (1 - origin) for v in box_coord)
    if xmin > xmax or ymin > ymax:
        raise ValueError("box_coord has min > max (expected [ymin ymax xmin xmax])")
    if xmax < 1 or ymax < 1 or xmin > width or ymin > height:
        raise ValueError(f"box outside the {width}x{height} image")
    raw = np.rint([xmin, ymin, xmax, ymax]).astype(np.int64)
    box = np.clip(raw, 1, [width, height, width, height])
    return (int(box[0]), int(box[1]), int(box[2]), int(box[3])), bool((box != raw).any())


def read_sysu_annotation(mat_path, width: int, height: int, origin: int = 0) -> list[dict]:
    """The objects of one .mat for a `width` x `height` image: dicts with `box` (VOC 1-based inclusive,
    clipped), `polygon` [n, 2] (x, y) in 0-based pixel coordinates of the image, `box_clipped`,
    `outline_clipped`. CebenchError naming the file for a damaged file or an object outside the image."""
    mat_path = Path(mat_path)
    out = []
    for k, (box_coord, contour) in enumerate(load_objects(mat_path)):
        try:
            box, clipped = voc_box(box_coord, width, height, origin)
        except ValueError as exc:
            raise CebenchError(f"{mat_path}: object {k + 1}: {exc}") from None
        ymin, xmin = box_coord[0] - origin, box_coord[2] - origin
        poly = contour.T + np.array([xmin, ymin])  # [n, 2] 0-based pixel coordinates
        lo, hi = poly.min(0), poly.max(0)
        if hi[0] < -0.5 or hi[1] < -0.5 or lo[0] > width - 0.5 or lo[1] > height - 0.5:
            raise CebenchError(f"{mat_path}: object {k + 1}: outline outside the {width}x{height} image")
        if (lo < -max(width, height)).any() or (hi > 2 * max(width, height)).any():
            raise CebenchError(f"{mat_path}: object {k + 1}: outline reaches far outside the {width}x{height} "
                               f"image (x {lo[0]:.0f}..{hi[0]:.0f}, y {lo[1]:.0f}..{hi[1]:.0f})")
        x, y = poly[:, 0], poly[:, 1]
        if abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))) == 0.0:
            raise CebenchError(f"{mat_path}: object {k + 1}: outline has no area")
        outside = bool((lo < -0.5).any() or hi[0] > width - 0.5 or hi[1] > height - 0.5)
        out.append(dict(box=box, polygon=poly, box_clipped=clipped, outline_clipped=outside))
    return out


def rasterise(objects: list[tuple[int, np.ndarray]], height: int, width: int, void_px: int) -> np.ndarray:
    """uint8 [H, W] class mask: each (class index, polygon [n, 2] 0-based x, y) filled in order (later wins),
    background 0, then a `void_px`-wide band of 255 along every outline."""
    mask = np.zeros((height, width), np.uint8)
    pts = [np.rint(np.asarray(p, np.float64) * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)
           for _, p in objects]
    for (label, _), p in zip(objects, pts):
        cv2.fillPoly(mask, [p], color=int(label), lineType=cv2.LINE_8, shift=_SHIFT)
    if void_px > 0:
        cv2.polylines(mask, pts, isClosed=True, color=255, thickness=int(void_px), lineType=cv2.LINE_8,
                      shift=_SHIFT)
    return mask


# ---------------------------------------------------------------------------------------------------
# the source folder


def _class_folders(src: Path) -> list[str]:
    return sorted(p.name for p in src.iterdir()
                  if p.is_dir() and (p / "images").is_dir() and (p / "annotations").is_dir())


def scan_source(src, limit_per_class: int = 0) -> tuple[tuple[str, ...], list[Record], list[tuple[str, str]]]:
    """(classes, records, problems): every `<class>/images/<name>` with its `<class>/annotations/<name>.mat`;
    an image without its .mat or a .mat without its image is a problem (file, what)."""
    src = Path(src)
    if not src.is_dir():
        raise CebenchError(f"{src}: SYSU-Shapes folder not found (expected <class>/images/*.jpg and "
                           f"<class>/annotations/*.mat, as github.com/hkusuai/SYSU-Shapes lays them out)")
    classes = tuple(_class_folders(src))
    if not classes:
        raise CebenchError(f"{src}: no SYSU-Shapes class folder (<class>/images and <class>/annotations) found")
    records, problems = [], []
    for cls in classes:
        images = {p.stem: p for p in (src / cls / "images").iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS}
        mats = {p.stem: p for p in (src / cls / "annotations").iterdir() if p.is_file() and p.suffix == ".mat"}
        names = sorted(set(images) | set(mats))
        if limit_per_class:
            keep = set(sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())[:limit_per_class])
            names = [n for n in names if n in keep]
        for name in names:
            if name in mats and name in images:
                records.append(Record(cls, name, images[name], mats[name]))
            elif name in images:
                problems.append((str(images[name]), f"no annotation {cls}/annotations/{name}.mat"))
            else:
                problems.append((str(mats[name]), f"no image {cls}/images/{name}.jpg"))
    return classes, records, problems


def source_fingerprint(records: list[Record], classes) -> str:
    """Hash of the files read (class, name, size, modification time of image and .mat)."""
    h = hashlib.sha256(json.dumps(list(classes)).encode())
    for r in records:
        for p in (r.image, r.annotation):
            st = p.stat()
            h.update(f"{r.cls}/{p.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _image_id(cls: str, name: str) -> str:
    return re.sub(r"\s", "_", f"{cls}_{name}")


def _group_photos(records: list[Record], classes) -> list[list[Record]]:
    """Records grouped by identical image bytes (a photo in several class folders), in class order."""
    order = {c: i for i, c in enumerate(classes)}
    groups: dict[str, list[Record]] = {}
    for r in records:
        try:
            digest = hashlib.sha256(r.image.read_bytes()).hexdigest()
        except OSError as exc:
            digest = f"unreadable:{r.image}:{exc}"
        groups.setdefault(digest, []).append(r)
    return [sorted(g, key=lambda r: (order[r.cls], r.name)) for g in groups.values()]


# ---------------------------------------------------------------------------------------------------
# splits


def _rank(seed: int, image_id: str) -> str:
    return hashlib.sha256(f"{seed}:{image_id}".encode()).hexdigest()


def _round(x: float) -> int:
    return int(np.floor(x + 0.5))


def stratified_splits(ids_by_class: dict[str, list[str]], seed: int, test_frac: float,
                      val_frac: float) -> dict[str, list[str]]:
    """{train, val, trainval, test} image ids (sorted), stratified by class (see the module docstring)."""
    out = {s: [] for s in SPLITS}
    for cls in sorted(ids_by_class):
        ids = sorted(ids_by_class[cls], key=lambda i: _rank(seed, i))
        n_test = _round(test_frac * len(ids))
        trainval = ids[n_test:]
        n_val = _round(val_frac * len(trainval))
        out["test"] += ids[:n_test]
        out["val"] += trainval[:n_val]
        out["train"] += trainval[n_val:]
    out["trainval"] = out["train"] + out["val"]
    return {s: sorted(v) for s, v in out.items()}


# ---------------------------------------------------------------------------------------------------
# writing

def _convert_photo(group: list[Record], classes, cfg: SysuConfig) -> dict:
    """Read one photo and its annotations; CebenchError naming the file on any problem."""
    image = group[0].image
    rep = inspect_image(image)
    if not rep.ok:
        raise CebenchError(f"{image}: {rep.problem}")
    width, height = rep.size
    objects = []
    origins = []
    for r in group:
        origins.append(annotation_origin(r.name, cfg.origin))
        for o in read_sysu_annotation(r.annotation, width, height, origins[-1]):
            objects.append(dict(o, cls=r.cls))
    data = image.read_bytes()
    if rep.mode == "RGB" and data[:2] == b"\xff\xd8":
        jpeg, mode = data, None  # the source's bytes, unchanged
    else:
        buf = io.BytesIO()
        open_rgb(image).save(buf, format="JPEG", quality=cfg.jpeg_quality)
        jpeg, mode = buf.getvalue(), rep.mode if data[:2] == b"\xff\xd8" else f"{rep.mode} (not JPEG)"
    index = {c: i + 1 for i, c in enumerate(classes)}
    mask = rasterise([(index[o["cls"]], o["polygon"]) for o in objects], height, width, cfg.void_px)
    return dict(jpeg=jpeg, mode=mode, width=width, height=height, objects=objects, mask=mask, origins=origins)


def _write_photo(root: Path, image_id: str, src_rel: str, photo: dict, palette) -> None:
    (root / "JPEGImages" / f"{image_id}.jpg").write_bytes(photo["jpeg"])
    png = Image.fromarray(photo["mask"], mode="P")
    png.putpalette(palette)
    png.save(root / "SegmentationClass" / f"{image_id}.png", optimize=False, compress_level=6)
    objects = [(o["cls"], 0, 0, o["box"]) for o in photo["objects"]]  # the source has no truncated / difficult
    xml = annotation_xml(image_id, photo["width"], photo["height"], objects, folder="SYSU-Shapes",
                         database="SYSU-Shapes", image=src_rel,
                         annotation=f"SYSU-Shapes outlines, converted by cebench data prepare sysu-shapes "
                                    f"v{CONVERTER_VERSION}")
    (root / "Annotations" / f"{image_id}.xml").write_text(xml, encoding="utf-8")


def _write_lists(root: Path, classes, splits: dict[str, list[str]], classes_of: dict[str, set]) -> None:
    for sub in ("Main", "Segmentation"):
        for split, ids in splits.items():
            (root / "ImageSets" / sub / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    for split, ids in splits.items():  # the VOC devkit's per-class lists: 1 present, -1 absent
        for c in classes:
            lines = "".join(f"{i} {1 if c in classes_of[i] else -1:2d}\n" for i in ids)
            (root / "ImageSets" / "Main" / f"{c}_{split}.txt").write_text(lines)
    (root / CLASSES_FILE).write_text("".join(f"{c}\n" for c in classes))


def _read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None


def _inside(a: Path, b: Path) -> bool:
    """a is b or lies inside b."""
    return a == b or b in a.parents


def prepare_sysu(src, out, cfg: SysuConfig | None = None, *, force: bool = False,
                 command: str = "") -> PrepareReport:
    """Convert SYSU-Shapes at `src` into a VOC tree at `out` (the VOC root itself). See the module docstring.

    A finished tree with the same settings and source is reused (`reused=True`); another tree at `out`
    (a conversion with other settings, or anything else that is not an empty folder) is refused unless
    `force` replaces it (only a conversion of ours is ever replaced)."""
    cfg = cfg or SysuConfig()
    t0 = time.perf_counter()
    src, out = Path(src).expanduser(), Path(out).expanduser()
    rs, ro = src.resolve(), out.resolve()
    if _inside(ro, rs):
        raise CebenchError(f"--out {out} lies inside the source folder {src}: never written into; choose "
                           f"another output folder")
    if _inside(rs, ro):
        raise CebenchError(f"--out {out} holds the source folder {src}; choose another output folder")
    classes, records, problems = scan_source(src, cfg.limit_per_class)
    key = json.loads(json.dumps(dict(version=CONVERTER_VERSION, config=asdict(cfg), classes=list(classes),
                                     source=source_fingerprint(records, classes), problems=problems)))
    with file_lock(out.parent / f".{out.name}.lock"):
        marker = _read_marker(out) if out.is_dir() else None
        if marker is not None and marker.get("key") == key and not force:
            report = PrepareReport(**marker["report"])
            report.classes, report.reused = tuple(report.classes), True
            report.seconds = time.perf_counter() - t0
            return report
        if out.exists():
            if marker is None and (not out.is_dir() or any(out.iterdir())):
                raise CebenchError(f"{out} exists and is not a SYSU-Shapes conversion (no {MARKER_NAME}); "
                                   f"choose another output folder")
            if marker is not None and not force:
                raise CebenchError(f"{out} holds a SYSU-Shapes conversion with other settings or another source "
                                   f"({_differs(marker.get('key') or {}, key)}); use --force to replace it or "
                                   f"choose another output folder")
        for stale in out.parent.glob(f".{out.name}.*.tmp"):  # left by an interrupted run
            shutil.rmtree(stale, ignore_errors=True)
        report = _convert(src, out, classes, records, problems, cfg, command, key)
        report.seconds = round(time.perf_counter() - t0, 1)
        return report


def _differs(old: dict, new: dict) -> str:
    diffs = [f"{k} {old.get('config', {}).get(k)} -> {v}" for k, v in new["config"].items()
             if old.get("config", {}).get(k) != v]
    if old.get("source") != new["source"] or old.get("classes") != new["classes"]:
        diffs.append("source files changed")
    if old.get("version") != new["version"]:
        diffs.append(f"converter version {old.get('version')} -> {new['version']}")
    return ", ".join(diffs) or "problems differ"


def _convert(src: Path, out: Path, classes, records, problems, cfg: SysuConfig, command: str,
             key: dict) -> PrepareReport:
    if problems and cfg.strict:
        raise CebenchError(f"{problems[0][0]}: {problems[0][1]} (--strict)")
    report = PrepareReport(root=str(out), classes=tuple(classes), skipped=list(problems),
                           source_images=len(records))
    palette = voc_palette()
    with atomic_directory(out) as tmp:
        for sub in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Main", "ImageSets/Segmentation"):
            (tmp / sub).mkdir(parents=True)
        ids_by_class: dict[str, list[str]] = {c: [] for c in classes}
        classes_of: dict[str, set] = {}
        for group in sorted(_group_photos(records, classes), key=lambda g: (classes.index(g[0].cls), g[0].name)):
            image_id = _image_id(group[0].cls, group[0].name)
            try:
                photo = _convert_photo(group, classes, cfg)
            except CebenchError as exc:
                if cfg.strict:
                    raise CebenchError(f"{exc} (--strict)") from None
                where, _, what = str(exc).partition(": ")
                report.skipped.append((where, what))
                continue
            if image_id in classes_of:
                raise CebenchError(f"{group[0].image}: image id {image_id} given twice (file names that differ "
                                   f"only in white space)")
            src_rel = " + ".join(f"{r.cls}/images/{r.image.name}" for r in group)
            _write_photo(tmp, image_id, src_rel, photo, palette)
            found = [o["cls"] for o in photo["objects"]]
            classes_of[image_id] = set(found)
            ids_by_class[group[0].cls].append(image_id)
            for c in found:
                report.objects[c] = report.objects.get(c, 0) + 1
            if len(group) > 1:
                report.merged.append((image_id, [r.cls for r in group]))
            for o in photo["origins"]:
                report.origins[str(o)] = report.origins.get(str(o), 0) + 1
            if photo["mode"]:
                report.reencoded[photo["mode"]] = report.reencoded.get(photo["mode"], 0) + 1
            report.clipped_boxes += sum(o["box_clipped"] for o in photo["objects"])
            report.clipped_outlines += sum(o["outline_clipped"] for o in photo["objects"])
        splits = stratified_splits(ids_by_class, cfg.seed, cfg.test_frac, cfg.val_frac)
        empty = [s for s in SPLITS if not splits[s]]
        if empty:
            raise CebenchError(f"{src}: too few usable images ({len(classes_of)}) for non-empty splits "
                               f"(split {empty[0]} would be empty; test-frac {cfg.test_frac}, val-frac "
                               f"{cfg.val_frac})")
        _write_lists(tmp, classes, splits, classes_of)
        report.images = splits
        report.per_class = {s: {c: sum(c in classes_of[i] for i in ids) for c in classes}
                            for s, ids in splits.items()}
        (tmp / "README.md").write_text(readme_text(report, cfg, src, command))
        stored = asdict(report)
        stored.pop("reused"), stored.pop("seconds")
        (tmp / MARKER_NAME).write_text(json.dumps(dict(key=key, report=stored), indent=1, sort_keys=True))
    return report


# ---------------------------------------------------------------------------------------------------
# what the tree's README and the command say


def class_table(report: PrepareReport) -> list[str]:
    """Images per class and split (an image counts for each class it holds), objects per class."""
    width = max(8, *(len(c) for c in report.classes))
    head = f"  {'class':<{width}} " + " ".join(f"{s:>8}" for s in SPLITS) + f" {'objects':>8}"
    rows = [head]
    for c in report.classes:
        rows.append(f"  {c:<{width}} " + " ".join(f"{report.per_class[s][c]:>8}" for s in SPLITS)
                    + f" {report.objects.get(c, 0):>8}")
    rows.append(f"  {'images':<{width}} " + " ".join(f"{len(report.images[s]):>8}" for s in SPLITS)
                + f" {sum(report.objects.values()):>8}")
    return rows


def readme_text(report: PrepareReport, cfg: SysuConfig, src: Path, command: str) -> str:
    n = len(report.images["trainval"]) + len(report.images["test"])
    skipped = "".join(f"- `{f}`: {p}\n" for f, p in report.skipped) or "- none\n"
    merged = "".join(f"- `{i}`: objects of {', '.join(c)} (the same photo in {len(c)} class folders)\n"
                     for i, c in report.merged) or "- none\n"
    reenc = ", ".join(f"{v} {k}" for k, v in sorted(report.reencoded.items())) or "none"
    origins = ", ".join(f"{v} {k}-based" for k, v in sorted(report.origins.items())) or "none"
    return f"""# SYSU-Shapes as a PASCAL VOC tree

Converted by `cebench data prepare sysu-shapes` (converter version {CONVERTER_VERSION}) from `{src}`:

    {command or f'cebench data prepare sysu-shapes {src} --out {report.root} --seed {cfg.seed}'}

Source: SYSU-Shapes (L. Lin, X. Wang, W. Yang, J. Lai, "Discriminatively Trained And-Or Graph Models for
Object Shape Detection", TPAMI 2014), as its public repository lays it out. About two thirds of its photos
are PASCAL VOC 2007/2012 images (`voc2007_*`, `voc2012_*`), the rest Caltech-101 photos (`101_*`).
Terms: none stated by the repository; the VOC photos under the PASCAL VOC terms (Flickr), the
Caltech-101 photos under CC BY 4.0. Research use; cite the paper above.

This folder is a VOC root: give it as `data.root=DIR` or `--data DIR`; check it with
`cebench data check DIR`.

## Contents
- {n} images from {report.source_images} source images with their .mat (photos found in several class
  folders are one image; skipped files below); classes ({len(report.classes)}, `classes.txt`,
  mask index = position + 1, background 0): {', '.join(report.classes)}.
- `JPEGImages/<class>_<name>.jpg`: the source JPEG bytes unchanged; re-encoded as RGB JPEG (quality
  {cfg.jpeg_quality}) where the source is not RGB JPEG: {reenc}.
- Coordinates: the annotations of the Caltech-101 photos (`101_*`) are Caltech-101's own, MATLAB
  1-based; those of the VOC photos 0-based (LabelMe), as the image edges along the outlines show
  (`cebench/data/sysu.py` gives the measurement). Annotation files read as {origins}
  (`--origin {cfg.origin}`).
- `Annotations/*.xml`: one object per outline, named for its class folder; the box is the source's
  `box_coord` as VOC's 1-based inclusive box, clipped to the image ({report.clipped_boxes} boxes
  clipped); `difficult` and `truncated` 0 (the source has neither).
- `SegmentationClass/*.png`: palette PNGs rasterised from the outline polygons: class index inside
  each outline, 0 elsewhere, and a {cfg.void_px} px band of 255 ("void", ignored by training and by
  the mean IU) along every outline, as VOC marks its object borders, because the outlines are
  hand-clicked polygons accurate to a few pixels. Where outlines overlap, the later object wins
  (classes in `classes.txt` order, then the order of the .mat). {report.clipped_outlines} outlines reach
  outside their image: the mask keeps the part inside.
- `ImageSets/Main/{{train,val,trainval,test}}.txt` (and the devkit's `<class>_<split>.txt`, 1 / -1) and
  `ImageSets/Segmentation/` with the same ids (every image has a mask).

## Splits (seed {cfg.seed}; test {cfg.test_frac:g} of each class, val {cfg.val_frac:g} of the rest)
Stratified by class: the images of each class folder, ordered by a hash of (seed, image id); the first
round({cfg.test_frac:g} n) are test, then round({cfg.val_frac:g} n_trainval) val, the rest train. Choose
learning rates and every recipe setting on val; report test.

Images per class and split (an image counts for each class it holds) and objects per class:

```
{chr(10).join(class_table(report))}
```

## What the source does not annotate, and what that does
Only objects of the folder's class are annotated in each photo. Other objects are not: riders and
people (no class here), and objects of the other classes (a car behind a motorbike, a person's bicycle
in a car photo). They are treated as follows:
- segmentation: their pixels are background (0), not void, so a network that segments them is scored
  wrong on those pixels, and the background and that class's IU drop;
- classification: the image counts as a negative for their class, so a confident correct score is a
  false positive and the class's AP drops;
- detection: a correct box on them is a false positive, so AP drops.
These errors are the same for every network compared on this tree, so the comparison between
initialisations stays fair, but the absolute numbers are lower than on fully annotated data and are not
comparable with VOC's. Photos found in two class folders are merged, and there both classes count:
{merged}
## Skipped files ({len(report.skipped)})
Damaged or unpaired source files are left out (`--strict` stops instead):
{skipped}"""


def format_report(report: PrepareReport) -> str:
    """What the command prints."""
    n = len(report.images["trainval"]) + len(report.images["test"])
    lines = [f"VOC root: {report.root}" + (" (reused: same settings and source files)" if report.reused else ""),
             f"images: {n} from {report.source_images} annotated source images; {len(report.skipped)} files skipped",
             f"classes ({len(report.classes)}, classes.txt): {', '.join(report.classes)}",
             "images per class and split, objects per class:", *class_table(report)]
    for image_id, cls in report.merged:
        lines.append(f"merged: {image_id} is one photo in the folders {', '.join(cls)} (objects of both)")
    lines.append("annotations read as " + ", ".join(f"{v} {k}-based" for k, v in sorted(report.origins.items())))
    if report.reencoded:
        lines.append("re-encoded as RGB JPEG: " + ", ".join(f"{v} {k}" for k, v in sorted(report.reencoded.items())))
    lines.append(f"boxes clipped to the image: {report.clipped_boxes}; outlines reaching outside the image: "
                 f"{report.clipped_outlines}")
    lines.append(f"wrote JPEGImages, Annotations, SegmentationClass, ImageSets/Main, ImageSets/Segmentation, "
                 f"classes.txt, README.md; check with: cebench data check {report.root}")
    if not report.reused:
        lines.append(f"took {report.seconds:.1f} s")
    return "\n".join(lines)


__all__ = ["SYSU_CLASSES", "SysuConfig", "PrepareReport", "Record", "load_objects", "voc_box",
           "read_sysu_annotation", "rasterise", "scan_source", "stratified_splits", "prepare_sysu",
           "format_report", "readme_text", "class_table"]
