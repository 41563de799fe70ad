"""Detection data: VOC images with their boxes and cached proposals, rescaled as Fast R-CNN does.

Each image is resized so its short side is `scale` (long side at most `max_size`), e.g. 600/1000 for
real VOC and 128 for the 64 px demo (conv5 of the demo encoder has stride 8: 8x8 cells at 64 px are too
coarse for 6x6 RoI pooling). Ground truth and proposals are scaled with it; detections are mapped back
to the original pixels for evaluation. Difficult objects are left out of training (py-faster-rcnn's
`use_diff=False`) and kept for evaluation, where the devkit rules handle them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cebench.data.voc import VOCIndex
from cebench.errors import DatasetMissingError
from cebench.images import normalize

REQUIRED = ("JPEGImages", "Annotations", "ImageSets/Main")


def check_voc_tree(root, splits) -> None:
    """A clear error listing everything detection needs that is missing from a VOC folder."""
    root = Path(root)
    missing = [str(root / d) for d in REQUIRED if not (root / d).is_dir()]
    missing += [str(root / "ImageSets" / "Main" / f"{s}.txt") for s in splits
                if not (root / "ImageSets" / "Main" / f"{s}.txt").is_file()]
    if missing:
        raise DatasetMissingError(
            f"detection needs a VOC2007 tree (VOCdevkit/VOC2007 with JPEGImages, Annotations, ImageSets/Main "
            f"trainval/test lists: VOCtrainval_06-Nov-2007.tar + VOCtest_06-Nov-2007.tar); "
            f"missing: {', '.join(missing)}")


def resize_scale(h: int, w: int, scale: int, max_size: int) -> float:
    return min(scale / min(h, w), max_size / max(h, w))


class DetDataset(Dataset):
    """One split: dict(image [3,h,w] normalised, boxes, labels, difficult, proposals (all scaled), scale,
    size (h, w) after resizing, orig_size, index)."""

    def __init__(self, root, split: str, proposals: dict, *, scale: int = 128, max_size: int = 1000,
                 train: bool = False, use_difficult: bool = False, cache_images: bool = False, classes=None):
        check_voc_tree(root, [split])
        self.index = VOCIndex(root, split, classes=classes)
        self.proposals = proposals
        self.scale, self.max_size = scale, max_size
        self.train, self.use_difficult = train, use_difficult
        self.cache = {} if cache_images else None
        absent = [i for i in self.index.ids if i not in proposals]
        if absent:
            raise DatasetMissingError(f"no proposals for {len(absent)} image(s) of {split}, e.g. {absent[0]}")

    @property
    def classes(self):
        return self.index.classes

    def __len__(self) -> int:
        return len(self.index)

    def _image(self, i: int):
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        img = self.index.load_image(i)
        w, h = img.size
        s = resize_scale(h, w, self.scale, self.max_size)
        nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
        arr = np.asarray(img.resize((nw, nh), Image.BILINEAR), dtype=np.uint8)
        out = (torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous(), s, (h, w))
        if self.cache is not None:
            self.cache[i] = out
        return out

    def boxes(self, i: int) -> dict:
        """Ground truth and proposals of image i scaled as `__getitem__` scales them, from the image's
        header (no decoding): what the regression statistics need."""
        if self.cache is not None and i in self.cache:
            img_u8, s, _ = self.cache[i]
        else:
            with Image.open(self.index.image_path(i)) as im:
                w, h = im.size
            s = resize_scale(h, w, self.scale, self.max_size)
        ann = self.index.annotation(i)
        keep = np.ones(len(ann["labels"]), bool) if (self.use_difficult or not self.train) else ~ann["difficult"]
        props = torch.as_tensor(self.proposals[self.index.ids[i]], dtype=torch.float32).reshape(-1, 4)
        return dict(boxes=torch.from_numpy(ann["boxes"][keep]).float() * s,
                    labels=torch.from_numpy(ann["labels"][keep]), proposals=props * s)

    def __getitem__(self, i: int) -> dict:
        img_u8, s, orig = self._image(i)
        ann = self.index.annotation(i)
        keep = np.ones(len(ann["labels"]), bool) if (self.use_difficult or not self.train) else ~ann["difficult"]
        props = torch.as_tensor(self.proposals[self.index.ids[i]], dtype=torch.float32).reshape(-1, 4)
        return dict(
            image=normalize(img_u8.float() / 255.0),
            boxes=torch.from_numpy(ann["boxes"][keep]).float() * s,
            labels=torch.from_numpy(ann["labels"][keep]),
            difficult=torch.from_numpy(ann["difficult"][keep]),
            proposals=props * s,
            scale=s, size=tuple(img_u8.shape[1:]), orig_size=orig, index=i)


def hflip(sample: dict) -> dict:
    """Horizontal flip of an image with its boxes and proposals (vectorised over boxes)."""
    w = sample["size"][1]

    def flip(b):
        return torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1) if len(b) else b

    return {**sample, "image": sample["image"].flip(-1), "boxes": flip(sample["boxes"]),
            "proposals": flip(sample["proposals"])}


def collate(samples: list[dict]):
    """Pad images to the largest in the batch (bottom/right, zeros = the mean colour after normalising)."""
    H = max(s["image"].shape[1] for s in samples)
    W = max(s["image"].shape[2] for s in samples)
    images = torch.zeros(len(samples), 3, H, W)
    for k, s in enumerate(samples):  # one copy per image of the minibatch
        images[k, :, : s["image"].shape[1], : s["image"].shape[2]] = s["image"]
    return images, samples


__all__ = ["DetDataset", "check_voc_tree", "collate", "hflip", "resize_scale"]
