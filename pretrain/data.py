"""Pretraining images: a VOC split (the demo tree or real VOC) or any folder of images.

Augmentation is the official one (short side to `load_size`, random `crop` crop, horizontal flip), plus an
optional colour transform (`colour`: "rgb" as is, "permute" a random channel order per image, "gray"
ITU-R 601 luminance in all three channels) that takes colour away as a shortcut; it is a pure function of
(seed, epoch, index), so a run is identical whatever the worker count and after a resume. Images come out
as uint8 [3, crop, crop]; the trainer scales them to [0, 1] on the device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cebench.data.folders import read_image_folder
from cebench.data.voc import VOCIndex
from cebench.errors import DatasetMissingError
from cebench.images import open_rgb

COLOURS = ("rgb", "permute", "gray")  # the `colour` options (see the module docstring)


class PretrainImages(Dataset):
    """(uint8 image [3,c,c], labels, index). Labels: float [C] for a VOC label matrix [N, C] (multi-label,
    1 / 0 difficult / -1), int64 scalar for class indices [N] (an image folder's one class per image),
    empty without labels."""

    def __init__(self, paths, crop: int, load_size: int = 0, flip: bool = True, labels=None, seed: int = 0,
                 cache: bool = False, random: bool = True, colour: str = "rgb"):
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise DatasetMissingError("no pretraining images found")
        self.crop, self.load_size, self.flip, self.seed = crop, load_size or crop, flip, seed
        if labels is None:
            self.labels = None
        else:
            labels = np.asarray(labels)
            self.labels = torch.as_tensor(labels, dtype=torch.int64 if labels.ndim == 1 else torch.float32)
        self.cache = {} if cache else None
        if colour not in COLOURS:
            raise ValueError(f"colour must be one of {', '.join(COLOURS)}, got {colour!r}")
        self.random, self.colour = random, colour
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, i: int) -> np.ndarray:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        img = open_rgb(self.paths[i])
        w, h = img.size
        s = self.load_size / min(w, h)
        if abs(s - 1) > 1e-6:
            img = img.resize((max(self.crop, round(w * s)), max(self.crop, round(h * s))), Image.BICUBIC)
        arr = np.asarray(img, dtype=np.uint8)
        if self.cache is not None:
            self.cache[i] = arr
        return arr

    def __getitem__(self, i: int):
        arr = self._load(i)
        h, w = arr.shape[:2]
        c = self.crop
        if self.random:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            y0, x0 = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
            flip = self.flip and bool(rng.integers(0, 2))
        else:
            y0, x0, flip = (h - c) // 2, (w - c) // 2, False
        out = arr[y0:y0 + c, x0:x0 + c]
        if flip:
            out = out[:, ::-1]
        if self.colour == "permute" and self.random:
            out = out[:, :, rng.permutation(3)]
        elif self.colour == "gray":  # [c,c,3] -> luminance repeated in 3 channels
            lum = out.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            out = np.repeat(np.clip(np.rint(lum), 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
        x = torch.from_numpy(out.copy()).permute(2, 0, 1)
        lab = self.labels[i] if self.labels is not None else torch.zeros(0)
        return x, lab, i


def voc_split_paths(voc_root, split: str, with_labels: bool = False, classes=None):
    """Image paths of a VOC split, and its int8 label matrix [N, C] when asked (`classes`: data.classes)."""
    index = VOCIndex(voc_root, split, classes=classes)
    paths = [index.image_path(i) for i in range(len(index))]
    labels = index.label_matrix() if with_labels else None
    return paths, labels, index.classes


def folder_paths(folder) -> list[Path]:
    """The training images of a folder (`cebench.data.folders`: a Tiny ImageNet root gives its train split,
    never its val or test images)."""
    return read_image_folder(folder, "train").paths


def step_batches(n: int, batch: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """The epoch's batches of this rank: a seeded permutation, cut in full batches of `batch` per rank."""
    g = torch.Generator().manual_seed(int(seed) * 1000003 + int(epoch))
    perm = torch.randperm(n, generator=g).tolist()
    per_step = batch * world
    steps = n // per_step
    return [perm[s * per_step + rank * batch: s * per_step + (rank + 1) * batch] for s in range(steps)]
