"""PASCAL VOC readers: the same code path for real VOC2007/2012, the built-in demo tree and users' own
VOC-format data sets.

`find_voc_root` accepts a VOCyyyy folder, the VOCdevkit above it, or its parent. `VOCIndex` reads one
split's records; the torch datasets on top return the dataset index as their last element so that
feature extractors can keep indices. Boxes are 0-based pixel-edge xyxy: VOC's 1-based inclusive
(xmin, ymin, xmax, ymax) becomes (xmin - 1, ymin - 1, xmax, ymax), so width = xmax - xmin + 1.

Users' own data (one or a few custom classes, XML written by labelling tools):
- classes come from, in order, `data.classes` (a list, or the path of a file with one name a line),
  `classes.txt` at the VOC root, the 20 VOC classes when every annotation uses VOC names, else the
  sorted set of names found in the annotations (`resolve_classes`, which says which source it used);
- optional fields default as the VOC devkit's reader does (`PASreadrecord`): `<truncated>` and
  `<difficult>` 0, `<pose>` "Unspecified", `<segmented>` 0; `<size>` may stand anywhere in the file,
  and when it is missing (or 0 x 0) the size is read from the image's header;
- boxes reaching outside the image are clipped to it and counted (`clipped`); boxes with no area left
  are dropped and counted (`dropped`). `cebench data check` reports both.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image

from cebench.errors import BadImageError, CebenchError, DatasetMissingError
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


def voc_years(path) -> dict[str, Path]:
    """{"2007": .../VOC2007, ...}: the VOCyyyy trees of `path` when it is a VOCdevkit or the folder above
    one (real VOC extracts VOC2007 and VOC2012 side by side); {} when `path` is itself a VOC tree or
    holds none. Looks at folder names only."""
    path = Path(path).expanduser()
    if _is_voc_dir(path):
        return {}
    for devkit in (path, path / "VOCdevkit"):
        found = {p.name[3:]: p for p in sorted(devkit.glob("VOC*")) if _is_voc_dir(p)} if devkit.is_dir() else {}
        if found:
            return found
    return {}


def find_voc_root(path, year: str | int | None = None) -> Path:
    """Resolve a VOCyyyy folder from itself, the VOCdevkit above it, or the VOCdevkit's parent. A VOCdevkit
    holding several years needs `year` (the data sources pick it per stage: `cebench.data.sources`)."""
    path = Path(path).expanduser()
    want = f"VOC{year}" if year is not None else None
    if _is_voc_dir(path) and (want is None or path.name == want or not path.name.startswith("VOC20")):
        return path
    if want is None:
        found = list(voc_years(path).values())
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise CebenchError(f"{found[0].parent} holds several VOC years ({', '.join(p.name for p in found)}); "
                               "give the VOCyyyy folder itself")
    for devkit in (path, path / "VOCdevkit") if want is not None else ():
        if _is_voc_dir(devkit / want):
            return devkit / want
    what = f"{want} " if want else "a VOC dataset "
    raise DatasetMissingError(f"{what}not found at {path}: {_DOWNLOAD_HELP}")


CLASS_SOURCES = ("data.classes", CLASSES_FILE, "the 20 VOC classes", "annotations")


def _read_names_file(f: Path, what: str) -> tuple[str, ...]:
    try:
        text = f.read_bytes().decode("utf-8")
    except IsADirectoryError:
        raise CebenchError(f"{f}: is a folder, expected {what} (one class name a line)") from None
    except UnicodeDecodeError:
        raise CebenchError(f"{f}: not a text file ({what}: one class name a line, UTF-8)") from None
    except OSError as exc:
        raise CebenchError(f"{f}: unreadable ({exc.strerror or exc})") from None
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    return _valid_names(names, f)


def _valid_names(names, where) -> tuple[str, ...]:
    names = tuple(names)
    if not names:
        raise CebenchError(f"{where}: no class names")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CebenchError(f"{where}: duplicate class names {', '.join(dup)}")
    return names


def annotation_class_names(voc_root) -> dict[str, int]:
    """{object name: count} over every readable `Annotations/*.xml` (unreadable files are skipped: the
    readers and `cebench data check` report them). About 0.6 s for VOC2007's 9,963 files."""
    counts: dict[str, int] = {}
    ann = Path(voc_root) / "Annotations"
    for xml in sorted(ann.glob("*.xml")) if ann.is_dir() else []:
        try:
            root = ET.parse(xml).getroot()
        except (ET.ParseError, OSError):
            continue
        for obj in root.iter("object"):
            name = (obj.findtext("name") or "").strip()
            counts[name] = counts.get(name, 0) + 1
    return counts


def resolve_classes(voc_root, configured=None) -> tuple[tuple[str, ...], str]:
    """(class names, where they came from: one of CLASS_SOURCES).

    `configured` is `data.classes`: a list of names, or one path of a file with a name a line. Then
    `classes.txt` at the VOC root; then the annotations: the 20 VOC classes when every object name is
    one of them (real VOC, data sets of a few VOC classes), else the sorted names the annotations use.
    """
    if configured:
        items = [configured] if isinstance(configured, (str, Path)) else list(configured)
        if len(items) == 1 and (Path(str(items[0])).suffix or "/" in str(items[0])):
            f = Path(str(items[0])).expanduser()
            if not f.exists():
                raise CebenchError(f"data.classes: file {f} not found (give a list of names or a file with "
                                   f"one name a line)")
            return _read_names_file(f, "data.classes"), "data.classes"
        return _valid_names((str(c).strip() for c in items), "data.classes"), "data.classes"
    f = Path(voc_root) / CLASSES_FILE
    if f.exists():
        return _read_names_file(f, CLASSES_FILE), CLASSES_FILE
    names = annotation_class_names(voc_root)
    names.pop("", None)  # an object without a <name>: the reader reports it
    if all(n in VOC_CLASSES for n in names):
        return VOC_CLASSES, "the 20 VOC classes"
    return tuple(sorted(names)), "annotations"


def describe_classes(classes, source: str) -> str:
    """The one line every stage prints: which source the class list came from, and the list."""
    shown = ", ".join(classes[:40]) + (f", ... ({len(classes) - 40} more)" if len(classes) > 40 else "")
    return f"classes ({len(classes)}, from {source}): {shown}"


def read_classes(voc_root, configured=None) -> tuple[str, ...]:
    """The class list of a VOC tree (see `resolve_classes`)."""
    return resolve_classes(voc_root, configured)[0]


def read_split(voc_root, split: str, kind: str = "main") -> list[str]:
    """The image ids of `ImageSets/{Main,Segmentation}/<split>.txt` (first word of each line)."""
    sub = {"main": "Main", "segmentation": "Segmentation"}.get(kind)
    if sub is None:
        raise ValueError(f"kind must be 'main' or 'segmentation', got {kind!r}")
    f = Path(voc_root) / "ImageSets" / sub / f"{split}.txt"
    if f.is_dir():
        raise CebenchError(f"{f}: is a folder, expected a split file (one image id a line)")
    if not f.is_file():
        avail = sorted(p.stem for p in f.parent.glob("*.txt") if "_" not in p.stem) if f.parent.is_dir() else []
        raise DatasetMissingError(f"split file {f} not found (splits there: {', '.join(avail) or 'none'})")
    try:
        text = f.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise CebenchError(f"{f}: not a split file (not UTF-8 text; expected one image id a line)") from None
    except OSError as exc:
        raise CebenchError(f"{f}: unreadable ({exc.strerror or exc})") from None
    ids = [line.split()[0] for line in text.splitlines() if line.strip()]
    bad = [i for i in ids if not all(c.isprintable() for c in i)]
    if bad:
        raise CebenchError(f"{f}: not a split file (line {ids.index(bad[0]) + 1} holds control characters, "
                           f"expected one image id a line)")
    return ids


def _flag(obj, tag: str) -> bool:
    """A 0/1 field of an object; missing or empty = 0 (the devkit's default)."""
    text = (obj.findtext(tag) or "").strip().lower()
    if text in ("", "0", "false", "no"):
        return False
    if text in ("true", "yes"):
        return True
    return int(float(text)) == 1


def _image_size(image_path) -> tuple[int, int]:
    """(width, height) from the image's header, without decoding the pixels."""
    try:
        with Image.open(image_path) as im:
            return im.size
    except FileNotFoundError:
        raise BadImageError(image_path, "file not found (the annotation has no <size>, so it is read from the "
                                        "image)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadImageError(image_path, f"unreadable image ({exc})") from None


def parse_annotation(xml_path, class_index: dict[str, int], image_path=None) -> dict:
    """Parse one VOC XML. Raises CebenchError naming the file on any problem.

    Defaults as the VOC devkit: missing `<truncated>`/`<difficult>` 0, `<pose>` "Unspecified",
    `<segmented>` 0. `<size>` anywhere; missing or 0 x 0, it is read from `image_path`. Boxes are
    clipped to the image (`clipped` counts them); boxes left without area are dropped (`dropped`).
    """
    xml_path = Path(xml_path)
    try:
        root = ET.parse(xml_path).getroot()
        size = root.find(".//size")
        width = int(float(size.findtext("width") or 0)) if size is not None else 0
        height = int(float(size.findtext("height") or 0)) if size is not None else 0
        if width <= 0 or height <= 0:
            if image_path is None:
                raise CebenchError(f"{xml_path}: no <size> (width and height) in the annotation")
            width, height = _image_size(image_path)
        boxes, labels, difficult, truncated, pose = [], [], [], [], []
        unknown = []
        for obj in root.iter("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in class_index:
                unknown.append(name)
                continue
            bb = obj.find("bndbox")
            xmin, ymin, xmax, ymax = (float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
            boxes.append((xmin - 1.0, ymin - 1.0, xmax, ymax))
            labels.append(class_index[name])
            difficult.append(_flag(obj, "difficult"))
            truncated.append(_flag(obj, "truncated"))
            pose.append((obj.findtext("pose") or "").strip() or "Unspecified")
        if unknown:
            raise CebenchError(f"{xml_path}: unknown class {unknown[0]!r}" +
                               (f" (and {len(unknown) - 1} more objects)" if len(unknown) > 1 else ""))
        segmented = _flag(root, "segmented")
    except CebenchError:
        raise
    except FileNotFoundError:
        raise CebenchError(f"{xml_path}: annotation file missing") from None
    except IsADirectoryError:
        raise CebenchError(f"{xml_path}: is a folder, expected a VOC annotation (XML) file") from None
    except (ET.ParseError, AttributeError, TypeError, ValueError, OSError) as exc:
        what = str(exc).splitlines()[0] if str(exc).strip() else ""
        raise CebenchError(f"{xml_path}: bad annotation ({type(exc).__name__}{': ' + what if what else ''})") from None
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not np.isfinite(b).all():
        raise CebenchError(f"{xml_path}: bad annotation (a box coordinate is not a finite number)")
    clipped_b = np.clip(b, 0.0, np.array([width, height, width, height], dtype=np.float64))
    moved = (clipped_b != b).any(1)
    keep = (clipped_b[:, 2] > clipped_b[:, 0]) & (clipped_b[:, 3] > clipped_b[:, 1])
    return dict(
        boxes=clipped_b[keep].astype(np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64).reshape(-1)[keep],
        difficult=np.asarray(difficult, dtype=bool).reshape(-1)[keep],
        truncated=np.asarray(truncated, dtype=bool).reshape(-1)[keep],
        pose=[p for p, k in zip(pose, keep, strict=True) if k],
        segmented=segmented,
        width=width,
        height=height,
        raw_boxes=b.astype(np.float32),        # every object as written (0-based), before clipping ...
        raw_labels=np.asarray(labels, dtype=np.int64).reshape(-1),  # ... and its label: for `data check`
        clipped=int((moved & keep).sum()),     # boxes that reached outside the image, clipped to it
        dropped=int((~keep).sum()),            # boxes with no area inside the image, left out
    )


_XML = """<annotation>
\t<folder>{folder}</folder>
\t<filename>{id}.jpg</filename>
\t<source>
\t\t<database>{database}</database>
\t\t<annotation>{annotation}</annotation>
\t\t<image>{image}</image>
\t</source>
\t<size>
\t\t<width>{w}</width>
\t\t<height>{h}</height>
\t\t<depth>3</depth>
\t</size>
\t<segmented>1</segmented>
{objects}</annotation>
"""
_XML_OBJ = """\t<object>
\t\t<name>{name}</name>
\t\t<pose>Unspecified</pose>
\t\t<truncated>{trunc}</truncated>
\t\t<difficult>{diff}</difficult>
\t\t<bndbox>
\t\t\t<xmin>{b[0]}</xmin>
\t\t\t<ymin>{b[1]}</ymin>
\t\t\t<xmax>{b[2]}</xmax>
\t\t\t<ymax>{b[3]}</ymax>
\t\t</bndbox>
\t</object>
"""


def annotation_xml(image_id: str, width: int, height: int, objects, *, folder: str, database: str,
                   annotation: str, image: str) -> str:
    """The text of a PASCAL VOC annotation file (the layout of the devkit's own, segmented): `objects` are
    (name, truncated, difficult, (xmin, ymin, xmax, ymax) in VOC's 1-based pixels); text is XML-escaped.
    The one writer of the demo generator and the data-set converters."""
    objs = "".join(_XML_OBJ.format(name=escape(name), trunc=int(trunc), diff=int(diff), b=box)
                   for name, trunc, diff, box in objects)
    return _XML.format(folder=escape(folder), id=escape(image_id), database=escape(database),
                       annotation=escape(annotation), image=escape(image), w=int(width), h=int(height), objects=objs)


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
    except IsADirectoryError:
        raise CebenchError(f"{png_path}: is a folder, expected a segmentation PNG") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
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

    def __init__(self, root, split: str, kind: str = "main", year: str | int | None = None, classes=None):
        """`classes`: `data.classes` (a list of names or a file), or None for the tree's own list."""
        self.root = find_voc_root(root, year)
        self.split = split
        self.kind = kind
        self.classes, self.class_source = resolve_classes(self.root, classes)
        self.class_index = {c: i for i, c in enumerate(self.classes)}
        self.ids = read_split(self.root, split, kind)
        missing = [i for i in self.ids if not (self.root / "JPEGImages" / f"{i}.jpg").exists()]
        if missing:  # e.g. a truncated split file: one line that ends mid-id
            raise DatasetMissingError(f"{self.split_file}: {len(missing)} id(s) without an image "
                                      f"JPEGImages/<id>.jpg, e.g. {missing[0]!r}")
        self._ann: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def split_file(self) -> Path:
        sub = "Segmentation" if self.kind == "segmentation" else "Main"
        return self.root / "ImageSets" / sub / f"{self.split}.txt"

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
            self._ann[i] = parse_annotation(self.annotation_path(i), self.class_index, self.image_path(i))
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


__all__ = ["VOC_CLASSES", "CLASS_SOURCES", "voc_palette", "voc_years", "find_voc_root", "read_classes",
           "resolve_classes", "describe_classes", "annotation_class_names", "read_split", "parse_annotation",
           "read_segmentation", "VOCIndex"]
