"""Built-in demo data: a genuine PASCAL-VOC-format tree of synthetic scenes on real-photo backgrounds.

Scenes hold 1..`max_objects` objects of `len(classes)` classes that differ in shape AND texture (the
texture is always tied to the class and coarse), radius 0.2-0.4 of the image, drawn in order so later
objects occlude earlier ones, on random crops of the photographs that scikit-image and scikit-learn ship
(flipped, rescaled, at 0.6 contrast). The tree is written at `out_dir/VOCdevkit/VOC2007/` and is read
unchanged by torchvision's `VOCDetection` / `VOCSegmentation` (year="2007") and by `cebench.data.voc`.

Splits: `pretrain` (large, for self-supervised pretraining; its labels are only used by the supervised
reference row), `trainval` = `train` + `val` (few labels, val for choosing hyperparameters) and `test`.
Boxes are the tight boxes of the VISIBLE part of each object and agree with SegmentationObject.
Everything is a pure function of the config: same config, same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from cebench.data.voc import CLASSES_FILE, VOC_CLASSES, annotation_xml, voc_palette
from cebench.errors import CebenchError, ConfigError
from cebench.io import atomic_directory
from cebench.locks import file_lock

GENERATOR_VERSION = 2
MARKER_NAME = ".cebench_demo.json"
YEAR = "2007"

DEFAULT_CLASSES = ("disc", "square", "triangle", "star", "cross", "ring", "hexagon", "crescent")

# Two colours per class (RGB); the texture pattern is also per class (see _texture).
_CLASS_COLOURS = {
    "disc": ((230, 40, 40), (250, 210, 60)),
    "square": ((30, 60, 200), (240, 240, 240)),
    "triangle": ((40, 170, 60), (20, 40, 20)),
    "star": ((250, 150, 20), (120, 20, 120)),
    "cross": ((200, 30, 160), (40, 220, 220)),
    "ring": ((20, 20, 20), (250, 250, 120)),
    "hexagon": ((120, 200, 30), (200, 30, 30)),
    "crescent": ((60, 200, 250), (30, 30, 120)),
}
_TEXTURES = {
    "disc": "hstripes",
    "square": "checker",
    "triangle": "dots",
    "star": "solid",
    "cross": "diagonal",
    "ring": "radial",
    "hexagon": "grid",
    "crescent": "waves",
}

# The 20 PASCAL VOC class names (preset "voc", the paper-protocol rehearsal) are drawn as the 8 shapes
# with other textures: class i is shape i % 8 with texture (i + 3 * (i // 8)) % 8, 20 distinct pairs.
_SHAPES = DEFAULT_CLASSES
_TEXTURE_KINDS = tuple(_TEXTURES[c] for c in DEFAULT_CLASSES)


def _style(name: str) -> tuple[str, str]:
    """(shape, texture) of a class name: its own for the 8 demo shapes, a distinct pair for VOC names."""
    if name in _TEXTURES:
        return name, _TEXTURES[name]
    i = VOC_CLASSES.index(name)
    return _SHAPES[i % 8], _TEXTURE_KINDS[(i + 3 * (i // 8)) % 8]


# colour_mode="random": each object's two colours are drawn from this palette, so a class is told by
# its shape and texture pattern alone (a fixed colour per class lets colour histograms solve the task)
_PALETTE = tuple({c for pair in _CLASS_COLOURS.values() for c in pair})

# Backgrounds: real photographs shipped by installed packages (no network).
_SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
                   "camera", "brick", "grass", "gravel", "coins")


@dataclass(frozen=True)
class DemoDataConfig:
    seed: int = 0
    image_size: int = 64
    n_pretrain: int = 6000
    n_trainval: int = 800
    n_test: int = 800
    max_objects: int = 3
    classes: tuple[str, ...] = DEFAULT_CLASSES
    radius_range: tuple[float, float] = (0.2, 0.4)  # object radius as a fraction of the image side
    background_contrast: float = 0.6
    val_fraction: float = 0.5  # share of trainval that goes to val (VOC07 uses 50/50)
    difficult_visible: float = 0.25  # objects with less of their area visible are "difficult"
    difficult_min_side: float = 0.1  # ... as are objects whose visible box side is below this fraction
    replace_hiding: float = 0.85  # chance that an object hiding an earlier one (< difficult_visible left) moves
    jpeg_quality: int = 92
    colour_mode: str = "random"  # random: colours drawn per object (class = shape + texture) | class: fixed per class
    workers: int = 2  # generation processes (output does not depend on it)
    # --- the paper-protocol rehearsal (preset "voc"); at their defaults these leave the bytes unchanged
    layout: str = "voc2007"  # voc2007: one tree | paper: VOC2007 (cls/det) + VOC2012 (seg) + an image folder
    size_mode: str = "square"  # square: image_size^2 | voc: VOC's sizes (long side 500, short 333-500, some portrait)
    n_seg_trainval: int = 0  # layout paper: VOC2012 segmentation images (split in train / val)
    proposals_per_image: int = 0  # layout paper: boxes per image in the Fast R-CNN-format .mat files

    def __post_init__(self):
        unknown = [c for c in self.classes if c not in _CLASS_COLOURS and c not in VOC_CLASSES]
        if unknown:
            raise ConfigError(f"demo data: unknown classes {unknown}; valid: {sorted(_CLASS_COLOURS)} or the "
                              "20 VOC class names")
        if self.layout not in ("voc2007", "paper") or self.size_mode not in ("square", "voc"):
            raise ConfigError(f"demo data: layout must be voc2007 or paper and size_mode square or voc ({self})")
        if self.colour_mode == "class" and any(c not in _CLASS_COLOURS for c in self.classes):
            raise ConfigError("demo data: colour_mode=class needs the 8 demo shape classes")
        if self.image_size < 16 or self.max_objects < 1 or min(self.n_pretrain, self.n_trainval, self.n_test) < 0:
            raise ConfigError(f"demo data: invalid sizes in {self}")
        if self.colour_mode not in ("random", "class"):
            raise ConfigError(f"demo data: colour_mode must be random or class, got {self.colour_mode!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"demo data: val_fraction must be in (0, 1), got {self.val_fraction}")


DEMO_PRESETS: dict[str, DemoDataConfig] = {
    "tiny": DemoDataConfig(n_pretrain=200, n_trainval=80, n_test=80),
    # few labels (about 45 positives per class in train, as many in val) and many unlabeled images:
    # with 800 labelled images fine-tuning from random weights already reached ~82 mAP, too close to
    # the ceiling for any initialisation to matter (measured; see README)
    "demo": DemoDataConfig(n_trainval=400),
    "large": DemoDataConfig(image_size=128, n_pretrain=20000, n_trainval=1600, n_test=1600),
    # the paper-protocol rehearsal: what `--config paper` reads, at VOC's image sizes, 20 VOC classes,
    # few images (a VOC2007 tree, a VOC2012 segmentation tree, a folder of pretraining images and the
    # published-format proposal files); see `--config rehearsal`
    "voc": DemoDataConfig(classes=VOC_CLASSES, layout="paper", size_mode="voc", n_pretrain=24, n_trainval=12,
                          n_test=6, n_seg_trainval=16, proposals_per_image=40, max_objects=3),
}

_LAYOUT_DEFAULTS = {"layout": "voc2007", "size_mode": "square", "n_seg_trainval": 0, "proposals_per_image": 0}


def content_key(cfg: DemoDataConfig) -> dict:
    """The config fields that determine the bytes written (not `workers`)."""
    d = asdict(cfg)
    d.pop("workers")
    for k, default in _LAYOUT_DEFAULTS.items():  # fields added later: absent at their default (same keys)
        if d[k] == default:
            d.pop(k)
    d["classes"] = list(d["classes"])
    d["radius_range"] = list(d["radius_range"])
    d["generator_version"] = GENERATOR_VERSION
    return d


# ----------------------------------------------------------------------------------------------
# drawing (vectorised: masks and textures from coordinate grids)

def _load_photos(image_size: int) -> list[np.ndarray]:
    """The background photographs, downscaled once so that their short side is 4x the image size."""
    import skimage.data as skd
    from sklearn.datasets import load_sample_images

    photos = []
    for name in _SKIMAGE_PHOTOS:
        img = getattr(skd, name)()
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        photos.append(np.ascontiguousarray(img[:, :, :3]))
    photos.extend(np.ascontiguousarray(im) for im in load_sample_images().images)
    out = []
    for p in photos:
        f = min(1.0, 4 * image_size / min(p.shape[:2]))
        size = (max(1, round(p.shape[1] * f)), max(1, round(p.shape[0] * f)))
        out.append(cv2.resize(p, size, interpolation=cv2.INTER_AREA) if f < 1.0 else p)
    return out


def _background(rng: np.random.Generator, photos: list[np.ndarray], hw: tuple[int, int], contrast: float) -> np.ndarray:
    """A random crop of a photo with the image's aspect ratio, resized to hw = (h, w); float32 [h, w, 3]."""
    photo = photos[rng.integers(len(photos))]
    ph, pw = photo.shape[:2]
    h, w = hw
    side = int(round(min(ph, pw * h / w) * rng.uniform(0.25, 1.0)))  # crop height
    cw = min(pw, int(round(side * w / h)))                           # crop width (= side when square)
    y0, x0 = rng.integers(0, ph - side + 1), rng.integers(0, pw - cw + 1)
    crop = photo[y0:y0 + side, x0:x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    bg = cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    mean = bg.mean(axis=(0, 1), keepdims=True)
    return mean + contrast * (bg - mean)


def _shape_mask(name: str, un: np.ndarray, vn: np.ndarray) -> np.ndarray:
    """Shape of unit circumradius in the object's frame (un, vn in radii)."""
    rn = np.hypot(un, vn)
    th = np.arctan2(vn, un)
    if name == "disc":
        return rn <= 1.0
    if name == "square":
        return np.maximum(np.abs(un), np.abs(vn)) <= 0.75
    if name in ("triangle", "hexagon"):
        n = 3 if name == "triangle" else 6
        a = 2 * np.pi / n
        return rn * np.cos(np.mod(th, a) - a / 2) <= np.cos(a / 2)
    if name == "star":
        a = np.mod(th, 2 * np.pi / 5) / (2 * np.pi / 5)
        return rn <= 0.42 + 0.58 * np.abs(2 * a - 1)
    if name == "cross":
        return ((np.abs(un) <= 0.32) & (np.abs(vn) <= 0.95)) | ((np.abs(vn) <= 0.32) & (np.abs(un) <= 0.95))
    if name == "ring":
        return (rn <= 1.0) & (rn >= 0.55)
    if name == "crescent":
        return (rn <= 1.0) & (np.hypot(un - 0.5, vn) > 0.78)
    raise ValueError(name)


def _texture(kind: str, u: np.ndarray, v: np.ndarray, period: float, phase: float) -> np.ndarray:
    """Mixing weight in [0, 1] between a class's two colours (coarse patterns, in the object frame)."""
    p = period
    if kind == "hstripes":
        t = np.mod(v / p + phase, 1.0) < 0.5
    elif kind == "checker":
        t = (np.floor(u / p + phase) + np.floor(v / p + phase)) % 2 == 0
    elif kind == "dots":
        du, dv = np.mod(u / p + phase, 1.0) - 0.5, np.mod(v / p + phase, 1.0) - 0.5
        t = np.hypot(du, dv) < 0.3
    elif kind == "solid":
        return np.clip(0.15 + 0.1 * u / p, 0.0, 0.35)
    elif kind == "diagonal":
        t = np.mod((u + v) / (1.4 * p) + phase, 1.0) < 0.5
    elif kind == "radial":
        t = np.mod(np.arctan2(v, u) / (2 * np.pi) * 8 + phase, 1.0) < 0.5
    elif kind == "grid":
        t = (np.mod(u / p + phase, 1.0) < 0.25) | (np.mod(v / p + phase, 1.0) < 0.25)
    elif kind == "waves":
        t = np.mod(v / p + 0.25 * np.sin(2 * np.pi * u / (1.5 * p)) + phase, 1.0) < 0.5
    else:
        raise ValueError(kind)
    return t.astype(np.float32)


def image_hw(cfg: DemoDataConfig, index: int) -> tuple[int, int]:
    """(h, w) of image `index`: image_size^2, or (size_mode voc) VOC's sizes: long side 500, short side
    333 / 375 / 400 / 500, a quarter of them portrait (VOC2007's images are at most 500 px a side)."""
    if cfg.size_mode == "square":
        return cfg.image_size, cfg.image_size
    rng = np.random.default_rng([cfg.seed, 15485863, index])  # its own stream: the scene's draws are unchanged
    short = int(rng.choice([333, 375, 400, 500], p=[0.3, 0.45, 0.15, 0.1]))
    return (500, short) if rng.random() < 0.25 else (short, 500)


def _render(index: int, cfg: DemoDataConfig, classes_of_image: np.ndarray, photos) -> tuple:
    """One scene. Returns (rgb uint8 HxWx3, class map uint8, object map uint8, list of object dicts)."""
    rng = np.random.default_rng([cfg.seed, 7919, index])
    H, W = image_hw(cfg, index)
    s = min(H, W)  # object radii, texture period, "difficult" size and void band scale with the short side
    img = _background(rng, photos, (H, W), cfg.background_contrast)
    obj_map = np.zeros((H, W), dtype=np.uint8)
    full_areas, drawn = [], []
    for k, c in enumerate(classes_of_image):
        name = cfg.classes[c]
        shape, texture = _style(name)
        strict = rng.random() < cfg.replace_hiding
        for _attempt in range(6):  # re-place an object that would hide an earlier one almost entirely
            cx, cy = rng.uniform(0.15, 0.85, size=2) * (W, H)
            r = rng.uniform(*cfg.radius_range) * s
            ang = rng.uniform(0, 2 * np.pi)
            # local window around the object (may extend past the image: gives the full area)
            x0, y0 = int(np.floor(cx - r)) - 1, int(np.floor(cy - r)) - 1
            x1, y1 = int(np.ceil(cx + r)) + 2, int(np.ceil(cy + r)) + 2
            gx, gy = np.meshgrid(np.arange(x0, x1, dtype=np.float32) + 0.5,
                                 np.arange(y0, y1, dtype=np.float32) + 0.5)
            ca, sa = np.cos(ang), np.sin(ang)
            u = (gx - cx) * ca + (gy - cy) * sa
            v = -(gx - cx) * sa + (gy - cy) * ca
            full = _shape_mask(shape, u / r, v / r)
            # window part inside the image
            ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
            win = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
            dst = (slice(iy0, iy1), slice(ix0, ix1))
            m = np.zeros((H, W), dtype=bool)
            m[dst] = full[win]
            if not m.any():
                continue
            remaining = [np.count_nonzero((obj_map == j + 1) & ~m) / full_areas[j] for j in range(k)]
            if not strict or all(f >= cfg.difficult_visible for f in remaining):
                break
        if cfg.colour_mode == "class":
            c0, c1 = (np.array(col, np.float32) for col in _CLASS_COLOURS[name])
        else:
            palette = sorted(_PALETTE)
            i0, i1 = rng.choice(len(palette), size=2, replace=False)
            c0, c1 = np.array(palette[i0], np.float32), np.array(palette[i1], np.float32)
        jitter = rng.uniform(0.85, 1.15)
        t = _texture(texture, u[win], v[win], period=max(4.0, s / 7), phase=rng.random())
        colour = (c0 + (c1 - c0) * t[..., None]) * jitter
        mw = m[dst]
        img[dst][mw] = colour[mw]
        obj_map[dst][mw] = k + 1
        full_areas.append(max(int(np.count_nonzero(full)), 1))
        drawn.append(dict(cls=int(c), truncated=bool(np.count_nonzero(m) < full_areas[-1])))
    # annotations: tight box of the visible part; drop objects hidden entirely
    objects, relabel = [], np.zeros(256, dtype=np.uint8)
    for k, d in enumerate(drawn):
        vis = obj_map == k + 1
        n_vis = int(np.count_nonzero(vis))
        if n_vis == 0:
            continue
        rows, cols = np.flatnonzero(vis.any(axis=1)), np.flatnonzero(vis.any(axis=0))
        box = (int(cols[0]) + 1, int(rows[0]) + 1, int(cols[-1]) + 1, int(rows[-1]) + 1)  # VOC: 1-based, inclusive
        side = min(box[2] - box[0] + 1, box[3] - box[1] + 1)
        difficult = n_vis / full_areas[k] < cfg.difficult_visible or side < cfg.difficult_min_side * s
        relabel[k + 1] = len(objects) + 1
        objects.append(dict(name=cfg.classes[d["cls"]], cls=d["cls"], box=box, truncated=d["truncated"],
                            difficult=bool(difficult)))
    obj_map = relabel[obj_map]
    cls_lut = np.zeros(256, dtype=np.uint8)
    for j, o in enumerate(objects):
        cls_lut[j + 1] = o["cls"] + 1
    cls_map = cls_lut[obj_map]
    # VOC-style void (255) band just outside the objects (never over object pixels, so boxes == masks)
    band = 1 if s <= 96 else 2
    fg = (obj_map > 0).astype(np.uint8)
    ring = (cv2.dilate(fg, np.ones((3, 3), np.uint8), iterations=band) > 0) & (fg == 0)
    cls_map[ring] = 255
    obj_map[ring] = 255
    rgb = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return rgb, cls_map, obj_map, objects


def _write_images(args) -> list[list[tuple[int, int, tuple]]]:
    """Worker: render and write a chunk of images. Returns per image [(class, difficult, VOC box), ...].

    dests maps a job's destination to its folder: a VOC root ("2007", "2012": JPEG, masks, XML) or a
    plain image folder ("folder": the JPEG only)."""
    dests, cfg, jobs = args
    photos = _load_photos(cfg.image_size if cfg.size_mode == "square" else 500)
    palette = voc_palette()
    out = []
    for index, image_id, classes, with_objects, dest in jobs:
        rgb, cls_map, obj_map, objects = _render(index, cfg, np.asarray(classes), photos)
        ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
        if dest == "folder":
            (Path(dests[dest]) / f"{image_id}.jpg").write_bytes(buf.tobytes())
            out.append([])
            continue
        voc = Path(dests[dest])
        (voc / "JPEGImages" / f"{image_id}.jpg").write_bytes(buf.tobytes())
        # SegmentationObject only for the labelled splits (the file system is the bottleneck)
        for sub, arr in (("SegmentationClass", cls_map), ("SegmentationObject", obj_map))[:1 + with_objects]:
            png = Image.fromarray(arr, mode="P")
            png.putpalette(palette)
            png.save(voc / sub / f"{image_id}.png", compress_level=1)
        xml = annotation_xml(image_id, rgb.shape[1], rgb.shape[0],
                             [(o["name"], o["truncated"], o["difficult"], o["box"]) for o in objects],
                             folder=f"VOC{dest}", database="cebench demo", image="synthetic",
                             annotation=f"cebench demo generator v{GENERATOR_VERSION} seed {cfg.seed}")
        (voc / "Annotations" / f"{image_id}.xml").write_text(xml)
        out.append([(o["cls"], int(o["difficult"]), o["box"]) for o in objects])
    return out


def _plan(cfg: DemoDataConfig) -> dict[str, list[tuple[int, str, list[int], bool, str]]]:
    """Split -> [(global index, image id, classes in drawing order, write SegmentationObject, destination)]:
    object classes balanced per split. Layout paper: trainval / test go to VOC2007, "seg" to VOC2012 and
    "pretrain" to a plain image folder; layout voc2007: everything to one VOC2007 tree."""
    rng = np.random.default_rng([cfg.seed, 104729])
    n_cls = len(cfg.classes)
    paper = cfg.layout == "paper"
    plan, index = {}, 0
    splits = [("trainval", cfg.n_trainval), ("test", cfg.n_test), ("pretrain", cfg.n_pretrain)]
    if paper:
        splits.append(("seg", cfg.n_seg_trainval))
    for split, n in splits:
        counts = rng.integers(1, cfg.max_objects + 1, size=n)
        total = int(counts.sum())
        cls = rng.permutation(np.tile(np.arange(n_cls), -(-total // n_cls))[:total])
        starts = np.concatenate([[0], np.cumsum(counts)])
        dest = {"seg": "2012", "pretrain": "folder"}.get(split, "2007") if paper else "2007"
        ident = (lambda k: f"2012_{k:06d}") if dest == "2012" else (lambda k: f"{k:06d}")
        plan[split] = [(index + i, ident(index + i + 1), cls[starts[i]:starts[i + 1]].tolist(), split != "pretrain",
                        dest) for i in range(n)]
        index += n
    return plan


def _write_lists(voc: Path, cfg: DemoDataConfig, splits: dict[str, list[str]],
                 labels: dict[str, list[tuple[int, int]]]) -> None:
    for sub in ("Main", "Segmentation"):
        for split, ids in splits.items():
            (voc / "ImageSets" / sub / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    for split, ids in splits.items():
        for c, name in enumerate(cfg.classes):
            lines = []
            for i in ids:
                flags = [d for cc, d, _ in labels[i] if cc == c]
                val = -1 if not flags else (1 if 0 in flags else 0)
                lines.append(f"{i} {val:2d}\n")
            (voc / "ImageSets" / "Main" / f"{name}_{split}.txt").write_text("".join(lines))
    if tuple(cfg.classes) != VOC_CLASSES:  # real VOC has no classes.txt: the readers default to the 20 names
        (voc / CLASSES_FILE).write_text("".join(f"{c}\n" for c in cfg.classes))


def _halves(ids: list[str], cfg: DemoDataConfig, salt: int) -> tuple[list[str], list[str]]:
    """(train, val): a seeded val_fraction of `ids` is val."""
    perm = np.random.default_rng([cfg.seed, salt]).permutation(len(ids))
    n_val = int(round(cfg.val_fraction * len(ids)))
    return sorted(ids[i] for i in perm[n_val:]), sorted(ids[i] for i in perm[:n_val])


def write_proposal_mat(path: Path, ids: list[str], boxes: list[np.ndarray]) -> Path:
    """A proposal file in the format of Fast R-CNN's published selective_search_data/voc_2007_<split>.mat:
    `images` a cell array of image ids, `boxes` a cell array with one [N, 4] double array per image,
    1-based pixel coordinates in [y1 x1 y2 x2] order."""
    from scipy.io import savemat

    cell_ids = np.empty((len(ids), 1), dtype=object)
    cell_boxes = np.empty((1, len(ids)), dtype=object)
    for k, (i, b) in enumerate(zip(ids, boxes)):
        cell_ids[k, 0] = i
        cell_boxes[0, k] = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {"images": cell_ids, "boxes": cell_boxes})
    return path


def _rehearsal_boxes(cfg: DemoDataConfig, index: int, hw: tuple[int, int], objects) -> np.ndarray:
    """`proposals_per_image` boxes for the rehearsal's proposal files: jittered ground-truth boxes (a third)
    and random boxes, as [y1 x1 y2 x2] 1-based inclusive (the published order). Not selective search."""
    rng = np.random.default_rng([cfg.seed, 31337, index])
    h, w = hw
    n = cfg.proposals_per_image
    gt = np.array([o[2] for o in objects], dtype=np.float64).reshape(-1, 4)  # VOC xmin ymin xmax ymax
    k = min(n, max(len(gt), n // 3)) if len(gt) else 0
    picks = gt[rng.integers(0, len(gt), k)] if k else np.zeros((0, 4))
    size = np.stack([picks[:, 2] - picks[:, 0], picks[:, 3] - picks[:, 1]], 1)
    jit = picks + rng.normal(0.0, 0.1, (k, 4)) * np.concatenate([size, size], 1)
    cw, ch = rng.uniform(0.1, 0.9, (n - k, 1)) * w, rng.uniform(0.1, 0.9, (n - k, 1)) * h
    x0, y0 = rng.uniform(0, 1, (n - k, 1)) * (w - cw), rng.uniform(0, 1, (n - k, 1)) * (h - ch)
    rand = np.concatenate([x0 + 1, y0 + 1, x0 + cw, y0 + ch], 1)
    xyxy = np.concatenate([jit, rand])
    xyxy = np.clip(np.rint(xyxy), 1, [w, h, w, h])
    xyxy[:, 2:] = np.maximum(xyxy[:, 2:], xyxy[:, :2] + 1)
    return xyxy[:, [1, 0, 3, 2]]


def _read_marker(voc: Path) -> dict | None:
    try:
        return json.loads((voc / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None


def generate_demo(out_dir, cfg: DemoDataConfig | None = None, *, force: bool = False) -> Path:
    """Write (or reuse) the demo VOC tree under `out_dir`; returns the VOC root `out_dir/VOCdevkit/VOC2007`.

    The tree is built in a temporary folder beside the target and moved into place with `os.replace`,
    with a marker file holding the config: an interrupted run leaves no half tree, and a re-run with the
    same config returns at once. A different config replaces an earlier demo tree; a VOC2007 folder
    that is not a demo tree is never touched (CebenchError).
    """
    cfg = cfg or DemoDataConfig()
    devkit = Path(out_dir) / "VOCdevkit"
    voc = devkit / f"VOC{YEAR}"
    if not force and (_read_marker(voc) or {}).get("config") == content_key(cfg):
        return voc  # a finished tree (the marker is written last): reused without a lock file, read-only data too
    # two stage commands started side by side on a fresh data folder both land here: the second waits for
    # the first's tree instead of deleting its temporary folder as stale and then its finished tree
    with file_lock(devkit / f".VOC{YEAR}.lock"):
        return _generate_locked(devkit, cfg, force)


def _generate_locked(devkit: Path, cfg: DemoDataConfig, force: bool) -> Path:
    voc = devkit / f"VOC{YEAR}"
    key = content_key(cfg)
    if voc.exists():
        marker = _read_marker(voc)
        if marker is None:
            raise CebenchError(f"{voc} exists and is not a cebench demo tree; choose another output folder")
        if marker.get("config") == key and not force:
            return voc
    extras = paper_layout_paths(devkit.parent) if cfg.layout == "paper" else {}
    ours = voc.exists()  # checked above: an earlier demo tree, whose extras we may replace
    foreign = [str(p) for p in extras.values() if p.exists() and not ours]
    if foreign:
        raise CebenchError(f"{foreign[0]} exists and is not part of a cebench demo tree; choose another "
                           "output folder")
    devkit.mkdir(parents=True, exist_ok=True)
    for stale in devkit.glob(f".VOC{YEAR}.*tmp*"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    with atomic_directory(voc) as tmp:  # an earlier demo tree with another config (checked above) is replaced
        # layout paper: the VOC2012 tree, the image folder and the proposal files are built inside the
        # temporary VOC2007 folder and moved into place before it, so its marker appears only once all is there
        dests = {"2007": tmp, "2012": tmp / ".extra" / "voc2012", "folder": tmp / ".extra" / "pretrain_images"}
        for root in ((tmp, dests["2012"]) if extras else (tmp,)):
            for sub in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationObject",
                        "ImageSets/Main", "ImageSets/Segmentation"):
                (root / sub).mkdir(parents=True, exist_ok=True)
        if extras:
            dests["folder"].mkdir(parents=True)
        plan = _plan(cfg)
        jobs = [j for split in plan.values() for j in split]
        n_workers = max(1, min(cfg.workers, os.cpu_count() or 1, len(jobs) // 200 or 1))
        chunks = [jobs[w::n_workers] for w in range(n_workers)]
        str_dests = {k: str(v) for k, v in dests.items()}
        if n_workers == 1:
            results = [_write_images((str_dests, cfg, chunks[0]))]
        else:
            with ProcessPoolExecutor(n_workers) as ex:
                results = list(ex.map(_write_images, [(str_dests, cfg, ch) for ch in chunks]))
        labels = {}
        for ch, res in zip(chunks, results):
            labels.update({j[1]: r for j, r in zip(ch, res)})
        splits = {name: [j[1] for j in items] for name, items in plan.items()}
        seg_ids = splits.pop("seg", [])
        if extras:
            pre = splits.pop("pretrain")
        splits["train"], splits["val"] = _halves(splits["trainval"], cfg, 1299709)
        _write_lists(tmp, cfg, splits, labels)
        stats = dict(splits={k: len(v) for k, v in splits.items()})  # no timings: same config, same bytes
        if extras:
            s12 = {"trainval": seg_ids}
            s12["train"], s12["val"] = _halves(seg_ids, cfg, 7368787)
            _write_lists(dests["2012"], cfg, s12, labels)
            by_id = {j[1]: j for split in plan.values() for j in split}
            mats = tmp / ".extra" / "selective_search_data"
            for split in ("train", "val", "trainval", "test"):
                ids = splits[split]
                write_proposal_mat(mats / f"voc_2007_{split}.mat", ids,
                                   [_rehearsal_boxes(cfg, by_id[i][0], image_hw(cfg, by_id[i][0]), labels[i])
                                    for i in ids])
            stats.update(voc2012={k: len(v) for k, v in s12.items()}, pretrain_images=len(pre))
            for name, src in (("voc2012", dests["2012"]), ("pretrain_images", dests["folder"]),
                              ("selective_search_data", mats)):
                if extras[name].exists():
                    shutil.rmtree(extras[name])  # of the earlier demo tree (checked above)
                extras[name].parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, extras[name])
            shutil.rmtree(tmp / ".extra")
        (tmp / MARKER_NAME).write_text(json.dumps(dict(config=key, stats=stats), indent=1, sort_keys=True))
    return voc


def paper_layout_paths(base) -> dict[str, Path]:
    """Where layout "paper" puts what the paper config reads besides `base/VOCdevkit/VOC2007`:
    the VOC2012 segmentation tree, the folder of pretraining images, the Fast R-CNN-format proposals."""
    base = Path(base)
    return {"voc2012": base / "VOCdevkit" / "VOC2012", "pretrain_images": base / "pretrain_images",
            "selective_search_data": base / "selective_search_data"}


def demo_config(size: str = "demo", **overrides) -> DemoDataConfig:
    """A preset with field overrides, e.g. `demo_config("tiny", seed=3)`."""
    if size not in DEMO_PRESETS:
        raise ConfigError(f"unknown demo size {size!r}; choose one of {sorted(DEMO_PRESETS)}")
    try:
        return replace(DEMO_PRESETS[size], **overrides)
    except TypeError as exc:
        raise ConfigError(f"demo data: {exc}") from None


__all__ = ["DemoDataConfig", "DEMO_PRESETS", "DEFAULT_CLASSES", "generate_demo", "demo_config",
           "voc_palette", "content_key", "CLASSES_FILE", "MARKER_NAME", "paper_layout_paths", "image_hw",
           "write_proposal_mat"]
