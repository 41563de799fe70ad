"""PASCAL VOC readers: the same code path for real VOC2007/2012 and the built-in demo tree.

`find_voc_root` accepts a VOCyyyy folder, the VOCdevkit above it, or its parent. `VOCIndex` reads one
split's records; the torch datasets on top return the dataset index as their last element so that
feature extractors can keep indices. Boxes are 0-based pixel-edge xyxy: VOC's 1-based inclusive
(xmin, ymin, xmax, ymax) becomes (xmin - 1, ymin - 1, xmax, ymax), so width = xmax - xmin + 1.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from cebench.errors import CebenchError, DatasetMissingError
from cebench.images import open_rgb

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
CLASSES_FILE = "classes.txt"

_DOWNLOAD_HELP = (
    "download VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar (VOC2007) and/or "
    "VOCtrainval_11-May-2012.tar (VOC2012) from http://host.robots.ox.ac.uk/pascal/VOC/ and extract them "
    "into one folder DIR so that DIR/VOCdevkit/VOC2007/{JPEGImages,Annotations,ImageSets,SegmentationClass} "
    "exist (or run `cebench data demo --out DIR` for the built-in demo data)"
)


def _is_voc_dir(p: Path) -> bool:
    return p.is_dir() and (p / "JPEGImages").is_dir() and (p / "ImageSets").is_dir()


def find_voc_root(path, year: str | int | None = None) -> Path:
    """Resolve a VOCyyyy folder from itself, the VOCdevkit above it, or the VOCdevkit's parent."""
    path = Path(path).expanduser()
    want = f"VOC{year}" if year is not None else None
    if _is_voc_dir(path) and (want is None or path.name == want or not path.name.startswith("VOC20")):
        return path
    for devkit in (path, path / "VOCdevkit"):
        if not devkit.is_dir():
            continue
        if want is not None:
            if _is_voc_dir(devkit / want):
                return devkit / want
            continue
        found = sorted(p for p in devkit.glob("VOC*") if _is_voc_dir(p))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise CebenchError(f"{devkit} holds several VOC years ({', '.join(p.name for p in found)}); "
                               "say which one (year=...)")
    what = f"{want} " if want else "a VOC dataset "
    raise DatasetMissingError(f"{what}not found at {path}: {_DOWNLOAD_HELP}")


def read_classes(voc_root) -> tuple[str, ...]:
    """The class list: `classes.txt` at the VOC root when present (demo data), else the 20 VOC classes."""
    f = Path(voc_root) / CLASSES_FILE
    if not f.is_file():
        return VOC_CLASSES
    names = tuple(line.strip() for line in f.read_text().splitlines() if line.strip())
    if not names or len(set(names)) != len(names):
        raise CebenchError(f"{f}: empty or duplicate class names")
    return names


def read_split(voc_root, split: str, kind: str = "main") -> list[str]:
    sub = {"main": "Main", "segmentation": "Segmentation"}.get(kind)
    if sub is None:
        raise ValueError(f"kind must be 'main' or 'segmentation', got {kind!r}")
    f = Path(voc_root) / "ImageSets" / sub / f"{split}.txt"
    if not f.is_file():
        avail = sorted(p.stem for p in f.parent.glob("*.txt") if "_" not in p.stem) if f.parent.is_dir() else []
        raise DatasetMissingError(f"split file {f} not found (splits there: {', '.join(avail) or 'none'})")
    return [line.split()[0] for line in f.read_text().splitlines() if line.strip()]


def parse_annotation(xml_path, class_index: dict[str, int]) -> dict:
    """Parse one VOC XML. Raises CebenchError naming the file on any problem."""
    xml_path = Path(xml_path)
    try:
        root = ET.parse(xml_path).getroot()
        size = root.find("size")
        width, height = int(size.findtext("width")), int(size.findtext("height"))
        boxes, labels, difficult, truncated = [], [], [], []
        for obj in root.iter("object"):
            name = obj.findtext("name", "").strip()
            if name not in class_index:
                raise CebenchError(f"{xml_path}: unknown class {name!r}")
            bb = obj.find("bndbox")
            xmin, ymin, xmax, ymax = (float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
            boxes.append((xmin - 1.0, ymin - 1.0, xmax, ymax))
            labels.append(class_index[name])
            difficult.append(int(float(obj.findtext("difficult", "0") or 0)) == 1)
            truncated.append(int(float(obj.findtext("truncated", "0") or 0)) == 1)
    except CebenchError:
        raise
    except FileNotFoundError:
        raise CebenchError(f"{xml_path}: annotation file missing") from None
    except (ET.ParseError, AttributeError, TypeError, ValueError) as exc:
        raise CebenchError(f"{xml_path}: bad annotation ({type(exc).__name__}: {exc})") from None
    return dict(
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        difficult=np.asarray(difficult, dtype=bool),
        truncated=np.asarray(truncated, dtype=bool),
        width=width,
        height=height,
    )


def voc_palette() -> list[int]:
    """The standard PASCAL VOC colour map (256 entries, flat RGB list for `Image.putpalette`)."""
    pal = np.zeros((256, 3), dtype=np.int64)
    idx = np.arange(256)
    for j in range(8):
        for c in range(3):
            pal[:, c] |= ((idx >> c) & 1) << (7 - j)
        idx = idx >> 3
    return pal.reshape(-1).astype(int).tolist()


def read_segmentation(png_path) -> np.ndarray:
    """Class-index mask uint8 HxW (255 = ignore) from a VOC palette PNG (RGB PNGs mapped by the palette)."""
    png_path = Path(png_path)
    try:
        with Image.open(png_path) as im:
            im.load()
            if im.mode in ("P", "L"):
                return np.array(im, dtype=np.uint8)
            rgb = np.asarray(im.convert("RGB"), dtype=np.int64)
    except FileNotFoundError:
        raise CebenchError(f"{png_path}: segmentation file missing") from None
    except OSError as exc:
        raise CebenchError(f"{png_path}: unreadable segmentation ({exc})") from None
    pal = np.asarray(voc_palette(), dtype=np.int64).reshape(256, 3)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    pcode = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    lut_keys, first = np.unique(pcode, return_index=True)  # palette index 0 wins ties (all-black tail)
    pos = np.clip(np.searchsorted(lut_keys, code), 0, len(lut_keys) - 1)
    out = np.where(lut_keys[pos] == code, first[pos], 255)
    return out.astype(np.uint8)


class VOCIndex:
    """Records of one split of a VOC tree (no torch): ids, class list, images, annotations, masks."""

    def __init__(self, root, split: str, kind: str = "main", year: str | int | None = None):
        self.root = find_voc_root(root, year)
        self.split = split
        self.kind = kind
        self.classes = read_classes(self.root)
        self.class_index = {c: i for i, c in enumerate(self.classes)}
        self.ids = read_split(self.root, split, kind)
        self._ann: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def image_path(self, i: int) -> Path:
        return self.root / "JPEGImages" / f"{self.ids[i]}.jpg"

    def annotation_path(self, i: int) -> Path:
        return self.root / "Annotations" / f"{self.ids[i]}.xml"

    def segmentation_path(self, i: int) -> Path:
        return self.root / "SegmentationClass" / f"{self.ids[i]}.png"

    def load_image(self, i: int) -> Image.Image:
        return open_rgb(self.image_path(i))

    def annotation(self, i: int) -> dict:
        """boxes float32 [N,4] xyxy 0-based, labels int64 [N], difficult/truncated bool [N], width, height."""
        if i not in self._ann:
            self._ann[i] = parse_annotation(self.annotation_path(i), self.class_index)
        return self._ann[i]

    def segmentation(self, i: int) -> np.ndarray:
        return read_segmentation(self.segmentation_path(i))

    def image_labels(self, i: int) -> np.ndarray:
        """int8 [C]: 1 present, 0 present only as difficult, -1 absent (VOC classification convention)."""
        ann = self.annotation(i)
        out = np.full(self.num_classes, -1, dtype=np.int8)
        out[ann["labels"][ann["difficult"]]] = 0
        out[ann["labels"][~ann["difficult"]]] = 1
        return out

    def label_matrix(self) -> np.ndarray:
        """int8 [N, C] image labels of the whole split."""
        return np.stack([self.image_labels(i) for i in range(len(self))]) if len(self) else \
            np.zeros((0, self.num_classes), np.int8)


__all__ = ["VOC_CLASSES", "voc_palette", "find_voc_root", "read_classes", "read_split", "parse_annotation",
           "read_segmentation", "VOCIndex"]
