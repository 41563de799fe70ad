"""Image folders as users download them: labelled (one folder per class, Tiny ImageNet) or a plain folder.

`read_image_folder(root, split)` -> `ImageFolderSplit` (paths, integer labels or None, class ids and names,
which layout was recognised). Three layouts, detected in this order:

- **Tiny ImageNet** (the CS231n release): `wnids.txt` and `train/` at the root.
  split "train": `train/<wnid>/images/*.JPEG`, labelled by the wnid's position in `wnids.txt`;
  split "val": `val/images/*`, labelled from `val/val_annotations.txt` (file, wnid, x0, y0, x1, y1);
  class names from `words.txt` when present (first synonym). The test split has no labels and is never read.
- **One folder per class** (ImageNet train, Caltech-101, `torchvision.datasets.ImageFolder`): every
  sub-folder of `root` that holds images (at any depth) is a class; classes sorted by folder name and
  numbered from 0 as `ImageFolder` does; `split` must be "train" (the folder is one split).
- **A plain folder** of images (Paris StreetView, any photos): unlabelled (`labels is None`).

A folder whose sub-folders hold no images is not a class (it would shift every label). Nothing is written
into `root`. Errors are one line naming the file (`DatasetMissingError` / `CebenchError`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CebenchError, DatasetMissingError
from ..images import IMAGE_EXTENSIONS, list_images, require_images

LAYOUTS = ("tiny-imagenet", "class-folders", "plain")
SPLITS = ("train", "val")


@dataclass
class ImageFolderSplit:
    """One split of an image folder: `labels[i]` is the class index of `paths[i]` (None: unlabelled)."""

    root: Path
    split: str
    layout: str                    # one of LAYOUTS
    paths: list[Path]
    labels: np.ndarray | None      # int64 [N] or None
    classes: tuple[str, ...] = ()  # class ids (wnids / folder names), index = label
    names: tuple[str, ...] = field(default_factory=tuple)  # human-readable names (words.txt), same order

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def one_hot(self) -> np.ndarray:
        """[N, C] float32 targets (what the pretraining loader carries for labelled images)."""
        if self.labels is None:
            raise CebenchError(f"{self.root}: the {self.split} split has no labels ({self.layout} layout)")
        out = np.zeros((len(self.paths), self.num_classes), np.float32)
        out[np.arange(len(self.paths)), self.labels] = 1.0
        return out

    def describe(self) -> str:
        lab = f"{self.num_classes} classes" if self.labels is not None else "unlabelled"
        return f"{self.root} ({self.layout}, split {self.split}): {len(self.paths)} images, {lab}"


def detect_layout(root) -> str:
    """Which of LAYOUTS `root` is (DatasetMissingError when it is not a folder)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetMissingError(f"{root}: image folder not found")
    if (root / "wnids.txt").is_file() and (root / "train").is_dir():
        return "tiny-imagenet"
    subdirs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if subdirs and not loose and any(_has_images(d) for d in subdirs):
        return "class-folders"
    return "plain"


def _has_images(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.rglob("*"))


def _read_lines(path: Path, what: str) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetMissingError(f"{path}: not found ({what})") from None
    except (UnicodeDecodeError, IsADirectoryError):
        raise CebenchError(f"{path}: not a UTF-8 text file ({what})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _words(root: Path, wnids: list[str]) -> tuple[str, ...]:
    """wnid -> first synonym of words.txt (the wnid itself where words.txt is absent or silent)."""
    names: dict[str, str] = {}
    if (root / "words.txt").is_file():
        for line in _read_lines(root / "words.txt", "wnid<TAB>names"):
            wnid, _, words = line.partition("\t")
            names[wnid.strip()] = words.split(",")[0].strip() or wnid
    return tuple(names.get(w, w) for w in wnids)


def _tiny_imagenet(root: Path, split: str) -> ImageFolderSplit:
    wnids = _read_lines(root / "wnids.txt", "one wnid a line")
    if len(set(wnids)) != len(wnids):
        raise CebenchError(f"{root / 'wnids.txt'}: duplicate wnids")
    index = {w: i for i, w in enumerate(wnids)}
    if split == "train":
        paths, labels = [], []
        for w in wnids:
            folder = root / "train" / w / "images"
            found = list_images(folder) if folder.is_dir() else []
            paths += found
            labels += [index[w]] * len(found)
        stray = sorted(d.name for d in (root / "train").iterdir() if d.is_dir() and d.name not in index)
        if stray:
            raise CebenchError(f"{root / 'train' / stray[0]}: class folder not listed in {root / 'wnids.txt'}")
    else:
        ann = root / "val" / "val_annotations.txt"
        paths, labels = [], []
        for n, line in enumerate(_read_lines(ann, "file, wnid, x0, y0, x1, y1 per line"), 1):
            parts = line.split("\t") if "\t" in line else line.split()
            if len(parts) < 2:
                raise CebenchError(f"{ann}:{n}: expected 'file<TAB>wnid<TAB>x0 y0 x1 y1', got {line!r}")
            if parts[1] not in index:
                raise CebenchError(f"{ann}:{n}: unknown class {parts[1]!r} (not in wnids.txt)")
            p = root / "val" / "images" / parts[0]
            if not p.is_file():
                raise DatasetMissingError(f"{p}: listed in {ann} but missing")
            paths.append(p)
            labels.append(index[parts[1]])
    if not paths:
        raise DatasetMissingError(f"{root}: no {split} images in the Tiny ImageNet layout")
    return ImageFolderSplit(root, split, "tiny-imagenet", paths, np.asarray(labels, np.int64), tuple(wnids),
                            _words(root, wnids))


def _class_folders(root: Path) -> ImageFolderSplit:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                     and _has_images(d))
    paths, labels = [], []
    for i, c in enumerate(classes):  # sorted by class then path, as torchvision's ImageFolder
        found = list_images(root / c)
        paths += found
        labels += [i] * len(found)
    return ImageFolderSplit(root, "train", "class-folders", paths, np.asarray(labels, np.int64), tuple(classes),
                            tuple(classes))


def read_image_folder(root, split: str = "train") -> ImageFolderSplit:
    """The images (and labels where the layout has them) of one split of `root` (see the module doc)."""
    if split not in SPLITS:
        raise CebenchError(f"image folder split must be one of {', '.join(SPLITS)}, got {split!r}")
    root = Path(root)
    layout = detect_layout(root)
    if layout == "tiny-imagenet":
        return _tiny_imagenet(root, split)
    if split != "train":
        raise DatasetMissingError(f"{root}: a {layout} folder has one split; there is no {split!r} split "
                                  "(use the Tiny ImageNet layout or give held-out images another way)")
    if layout == "class-folders":
        return _class_folders(root)
    return ImageFolderSplit(root, "train", "plain", require_images(root), None)


def has_split(root, split: str) -> bool:
    """Whether `read_image_folder(root, split)` has that split (only Tiny ImageNet has "val")."""
    return split == "train" or (Path(root).is_dir() and detect_layout(root) == "tiny-imagenet")


__all__ = ["ImageFolderSplit", "LAYOUTS", "detect_layout", "read_image_folder", "has_split"]
