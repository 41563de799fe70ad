"""Patch sampling for retrieval, vectorised with unfold + advanced indexing.

A patch is (image id, x, y, size). Its label is the class under its centre pixel in the VOC
segmentation mask (0 = background); 255 (void / object border) is skipped or counted as background.
Queries are the object-centred patches of the query images; the database holds all patches of the
other images, so a query never retrieves a patch of its own image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cebench.data.voc import VOCIndex
from cebench.images import normalize


@dataclass
class PatchSet:
    patches: torch.Tensor  # uint8 [P, 3, s, s]
    labels: torch.Tensor  # int64 [P]: class under the centre (0 = background)
    image_ids: torch.Tensor  # int64 [P]: position of the source image in the image list
    boxes: torch.Tensor  # int64 [P, 4]: x, y, w, h in the source image

    def __len__(self) -> int:
        return int(self.patches.shape[0])

    def subset(self, sel) -> "PatchSet":
        sel = torch.as_tensor(sel)
        return PatchSet(self.patches[sel], self.labels[sel], self.image_ids[sel], self.boxes[sel])

    @staticmethod
    def cat(sets: list["PatchSet"]) -> "PatchSet":
        fields = ("patches", "labels", "image_ids", "boxes")
        return PatchSet(*(torch.cat([getattr(s, f) for s in sets]) for f in fields))


def patch_positions(height: int, width: int, size: int, *, mode: str = "grid", stride: int | None = None,
                    count: int = 16, generator: torch.Generator | None = None) -> torch.Tensor:
    """Top-left corners [n, 2] (y, x) of size x size patches inside an H x W image.
    grid: every `stride` px (default size // 2), the grid centred in the image; random: `count` corners."""
    if size > height or size > width:
        return torch.zeros(0, 2, dtype=torch.long)
    if mode == "grid":
        stride = stride or max(1, size // 2)
        ny, nx = (height - size) // stride + 1, (width - size) // stride + 1
        oy = ((height - size) - (ny - 1) * stride) // 2
        ox = ((width - size) - (nx - 1) * stride) // 2
        ys = oy + torch.arange(ny) * stride
        xs = ox + torch.arange(nx) * stride
        return torch.cartesian_prod(ys, xs)
    if mode == "random":
        ys = torch.randint(0, height - size + 1, (count,), generator=generator)
        xs = torch.randint(0, width - size + 1, (count,), generator=generator)
        return torch.stack([ys, xs], 1)
    raise ValueError(f"patch mode must be 'grid' or 'random', got {mode!r}")


def crop_patches(image: torch.Tensor, corners: torch.Tensor, size: int) -> torch.Tensor:
    """image [C, H, W] (any dtype), corners [n, 2] (y, x) -> [n, C, size, size] (one gather, no loop)."""
    if len(corners) == 0:  # e.g. an image smaller than the patch (unfold would refuse it)
        return image.new_empty((0, image.shape[0], size, size))
    windows = image.unfold(1, size, 1).unfold(2, size, 1)  # [C, H-s+1, W-s+1, s, s] view
    return windows[:, corners[:, 0], corners[:, 1]].permute(1, 0, 2, 3).contiguous()


def centre_labels(mask: torch.Tensor, corners: torch.Tensor, size: int, ignore: str = "skip") -> torch.Tensor:
    """Labels under the patch centres; 255 -> -1 (ignore="skip") or 0 (ignore="background")."""
    c = size // 2
    lab = mask[corners[:, 0] + c, corners[:, 1] + c].long()
    void = lab == 255
    if ignore == "skip":
        lab[void] = -1
    elif ignore == "background":
        lab[void] = 0
    else:
        raise ValueError(f"ignore must be 'skip' or 'background', got {ignore!r}")
    return lab


def sample_image_patches(image: torch.Tensor, mask: torch.Tensor | None, image_id: int, size: int, *,
                         mode: str = "grid", stride: int | None = None, count: int = 16,
                         ignore: str = "skip", generator: torch.Generator | None = None) -> PatchSet:
    """Patches of one image (uint8 [3, H, W]); labels from `mask` (uint8 [H, W]) or -1 without one.
    Patches labelled void (with ignore="skip") are dropped."""
    H, W = image.shape[1:]
    corners = patch_positions(H, W, size, mode=mode, stride=stride, count=count, generator=generator)
    if mask is not None:
        labels = centre_labels(mask, corners, size, ignore)
        keep = labels >= 0
        corners, labels = corners[keep], labels[keep]
    else:
        labels = torch.full((len(corners),), -1, dtype=torch.long)
    n = len(corners)
    boxes = torch.stack([corners[:, 1], corners[:, 0], torch.full((n,), size), torch.full((n,), size)], 1)
    return PatchSet(crop_patches(image, corners, size), labels, torch.full((n,), int(image_id)), boxes.long())


def pil_to_uint8(img) -> torch.Tensor:
    """PIL RGB -> uint8 tensor [3, H, W]."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def encoder_inputs(patches: torch.Tensor, input_size: int, mask_centre: bool = False,
                   mask_fraction: float = 0.5) -> torch.Tensor:
    """uint8/float [B,3,s,s] patches -> ImageNet-normalised [B,3,S,S] at the encoder's input size.
    mask_centre: the central square (side `mask_fraction` of the input: 1/4 of the area at 0.5) is
    filled with the normalised mean, 0, as a context encoder sees its input."""
    x = patches.float() / 255.0 if patches.dtype == torch.uint8 else patches.float()
    if x.shape[-1] != input_size or x.shape[-2] != input_size:
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True)
    x = normalize(x)
    if mask_centre:
        m = int(round(input_size * mask_fraction))
        o = (input_size - m) // 2
        x = x.clone()
        x[:, :, o : o + m, o : o + m] = 0.0
    return x


# --------------------------------------------------------------------------------------------------
# Reading a VOC-format tree (VOCIndex from cebench.data.voc when present; a minimal reader otherwise)
# --------------------------------------------------------------------------------------------------


def open_voc(root, split: str):
    """The split's images with segmentation masks (ImageSets/Segmentation/<split>.txt)."""
    return VOCIndex(root, split, kind="segmentation")


def class_names(voc) -> list[str]:
    """['background', class 1, ...]: VOCIndex.classes may or may not include the background."""
    names = list(voc.classes)
    return names if names and names[0] in ("background", "__background__") else ["background"] + names


def voc_patches(voc, size: int, *, mode: str = "grid", stride: int | None = None, count: int = 16,
                ignore: str = "skip", max_images: int = 0, seed: int = 0) -> PatchSet:
    """Patches with centre labels from every image of a VOC split (loop over images only)."""
    g = torch.Generator().manual_seed(seed)
    n = len(voc.ids) if max_images <= 0 else min(max_images, len(voc.ids))
    sets = []
    for i in range(n):
        img = pil_to_uint8(voc.load_image(i))
        mask = torch.from_numpy(np.asarray(voc.segmentation(i), dtype=np.uint8))
        sets.append(sample_image_patches(img, mask, i, size, mode=mode, stride=stride, count=count,
                                         ignore=ignore, generator=g))
    return PatchSet.cat(sets)


def split_queries(ps: PatchSet, query_fraction: float = 0.2, max_queries: int = 0,
                  seed: int = 0) -> tuple[PatchSet, PatchSet]:
    """Images split into query / database images; queries = object-centred patches (label > 0) of
    the query images, database = every patch of the other images."""
    g = torch.Generator().manual_seed(seed)
    images = torch.unique(ps.image_ids)
    perm = images[torch.randperm(len(images), generator=g)]
    n_q = max(1, int(round(query_fraction * len(images))))
    is_q_img = torch.isin(ps.image_ids, perm[:n_q])
    q_sel = torch.nonzero(is_q_img & (ps.labels > 0)).flatten()
    if max_queries > 0 and len(q_sel) > max_queries:
        q_sel = q_sel[torch.randperm(len(q_sel), generator=g)[:max_queries]].sort().values
    db_sel = torch.nonzero(~is_q_img).flatten()
    return ps.subset(q_sel), ps.subset(db_sel)
