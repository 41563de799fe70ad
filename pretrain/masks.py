"""Masks for context encoders: float tensors [B, 1, S, S] on the device, 1 = missing pixel.

Kinds (`make_masker(kind, size, ...)`):
- "center": the central square of side S/2 (exactly 1/4 of the area for even S),
- "blocks": random axis-aligned blocks (several per image, about 1/4 of the area in all),
- "region": the paper's random regions: object silhouettes from VOC segmentation masks (of the demo
  tree or real VOC), deformed (scale, rotation, shear, flip) and placed at random,
- "noise": the released code's random regions: uniform noise upsampled (bicubic) and thresholded at
  0.25, crops kept when 20-30% of their pixels are masked,
- "file": one user mask file (white = missing), resized to S,
- "none": nothing masked (the autoencoder).
Every sampler takes a `torch.Generator` so a run is reproducible step by step (and resumable).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from cebench.errors import BadImageError, CebenchError, DatasetMissingError
from cebench.images import open_rgb

MASK_KINDS = ("center", "blocks", "region", "noise", "file", "none")


def center_mask(batch: int, size: int, device="cpu", frac: float = 0.5) -> Tensor:
    """[B,1,S,S] with the central square of side round(frac*S) set (frac 0.5 = 1/4 of the area)."""
    side = int(round(size * frac))
    lo = (size - side) // 2
    m = torch.zeros(batch, 1, size, size, device=device)
    m[:, :, lo:lo + side, lo:lo + side] = 1.0
    return m


def center_box(size: int, frac: float = 0.5) -> tuple[int, int]:
    """(start, side) of the central square used by `center_mask`."""
    side = int(round(size * frac))
    return (size - side) // 2, side


def _rand(shape, gen: torch.Generator, device) -> Tensor:
    return torch.rand(shape, generator=gen, device=device)


def block_mask(batch: int, size: int, gen: torch.Generator, device="cpu", n_blocks: int = 4,
               min_frac: float = 0.15, max_frac: float = 0.3) -> Tensor:
    """`n_blocks` random rectangles per image with sides in [min_frac, max_frac] * S (vectorised)."""
    sides = (min_frac + (max_frac - min_frac) * _rand((batch, n_blocks, 2), gen, device)) * size
    starts = _rand((batch, n_blocks, 2), gen, device) * (size - sides)
    ar = torch.arange(size, device=device, dtype=torch.float32)
    # inside[b,k,axis,i] = start <= i < start+side
    inside = (ar >= starts[..., None].floor()) & (ar < (starts + sides)[..., None].floor())
    m = (inside[:, :, 0, :, None] & inside[:, :, 1, None, :]).any(dim=1)  # [B, S, S]
    return m[:, None].float()


class NoiseMasker:
    """The released code's random-region masks: a large pattern of thresholded, bicubic-upsampled
    uniform noise (density 0.25); each mask is a random S x S crop of it with 20-30% masked."""

    def __init__(self, size: int, device="cpu", seed: int = 0, density: float = 0.25,
                 res: float = 0.06, lo: float = 0.2, hi: float = 0.3, pattern_scale: int = 8):
        self.size, self.lo, self.hi, self.device = size, lo, hi, torch.device(device)
        # official: 0.06 * 10000 noise cells over a 10000 px pattern cropped at 128 px -> blobs ~ 0.13 S
        big = max(pattern_scale * size, 256)
        # official: 0.06 noise cells per pattern pixel at 128 px crops -> blobs of ~ 1/(0.06*128) = 0.13 S
        cells = max(4, int(round(big * res * 128 / size)))
        g = torch.Generator(device="cpu").manual_seed(int(seed) + 12345)
        low = torch.rand(1, 1, cells, cells, generator=g)
        pattern = F.interpolate(low, size=(big, big), mode="bicubic", align_corners=False)[0, 0]
        self.pattern = (pattern < density).float().to(self.device)  # [P, P]
        self.big = big

    def __call__(self, batch: int, gen: torch.Generator) -> Tensor:
        s, dev = self.size, self.device
        ar = torch.arange(s, device=dev)
        out, have = [], 0
        for _ in range(64):  # each round draws 8x the missing count; one round almost always suffices
            n = 8 * (batch - have)
            y0 = (_rand((n,), gen, dev) * (self.big - s + 1)).long()
            x0 = (_rand((n,), gen, dev) * (self.big - s + 1)).long()
            crops = self.pattern[(y0[:, None] + ar)[:, :, None], (x0[:, None] + ar)[:, None, :]]  # [n,S,S]
            frac = crops.mean(dim=(1, 2))
            ok = crops[(frac >= self.lo) & (frac <= self.hi)][: batch - have]
            out.append(ok)
            have += ok.shape[0]
            if have >= batch:
                break
        if have < batch:
            raise CebenchError("noise masks: could not find crops with 20-30% masked; check size/density")
        return torch.cat(out)[:, None]


def silhouettes_from_label_maps(label_maps, out_size: int = 64, min_pixels: int = 64) -> Tensor:
    """Binary object silhouettes [K, R, R] from VOC class-label maps (uint8 HxW; 0 background, 255 ignore).

    Each class region of each map is one shape, cropped to its bounding box, padded to a square and
    resized to R (area-preserving aspect ratio)."""
    import cv2

    shapes = []
    for lab in label_maps:
        lab = np.asarray(lab)
        for c in np.unique(lab):
            if c in (0, 255):
                continue
            m = (lab == c).astype(np.uint8)
            if m.sum() < min_pixels:
                continue
            ys, xs = np.nonzero(m)
            m = m[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
            h, w = m.shape
            side = max(h, w)
            sq = np.zeros((side, side), np.uint8)
            sq[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = m
            shapes.append(cv2.resize(sq * 255, (out_size, out_size), interpolation=cv2.INTER_AREA) > 127)
    if not shapes:
        raise DatasetMissingError("region masks: no object silhouettes found in the segmentation masks")
    return torch.from_numpy(np.stack(shapes)).float()


def voc_silhouettes(voc_root, split: str = "trainval", out_size: int = 64, max_images: int = 2000) -> Tensor:
    """Silhouettes from `voc_root/SegmentationClass/*.png` listed in ImageSets/Segmentation/<split>.txt."""
    root = Path(voc_root)
    lst = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not lst.is_file():
        lists = root / "ImageSets" / "Segmentation"
        cands = sorted(lists.glob("*.txt")) if lists.is_dir() else []
        cands = [c for c in cands if c.stem != "test"]
        if not cands:
            raise DatasetMissingError(f"{root}: no ImageSets/Segmentation lists: region masks need VOC "
                                      "segmentation masks")
        lst = cands[0]
    ids = [line.split()[0] for line in lst.read_text().splitlines() if line.strip()][:max_images]
    maps = []
    for i in ids:
        p = root / "SegmentationClass" / f"{i}.png"
        if p.is_file():
            maps.append(np.asarray(Image.open(p)))
    if not maps:
        raise DatasetMissingError(f"{root}: no SegmentationClass PNGs for split {lst.stem}")
    return silhouettes_from_label_maps(maps, out_size)


class RegionMasker:
    """The paper's random regions: silhouettes deformed (scale to a target area, rotation +-45 deg,
    shear, flip) and pasted at a random place, one affine warp for the whole batch (grid_sample)."""

    def __init__(self, size: int, silhouettes: Tensor, device="cpu", area=(0.1, 0.25)):
        self.size, self.device, self.area = size, torch.device(device), area
        self.shapes = silhouettes.to(self.device)[:, None]  # [K,1,R,R]
        self.fill = self.shapes.mean(dim=(1, 2, 3)).clamp_min(1e-3)  # silhouette area fraction of its square

    def __call__(self, batch: int, gen: torch.Generator) -> Tensor:
        dev, k = self.device, self.shapes.shape[0]
        idx = (_rand((batch,), gen, dev) * k).long().clamp_max(k - 1)
        shapes = self.shapes[idx]
        u = _rand((batch, 6), gen, dev)
        target = self.area[0] + (self.area[1] - self.area[0]) * u[:, 0]
        # output fraction of a square shape scaled by s (of the image side) is fill * s^2
        s = torch.sqrt(target / self.fill[idx]).clamp(0.15, 1.0)
        theta = (u[:, 1] - 0.5) * (math.pi / 2)
        shear = (u[:, 2] - 0.5) * 0.6
        flip = torch.where(u[:, 3] < 0.5, -1.0, 1.0)
        tx = (u[:, 4] * 2 - 1) * (1 - s)
        ty = (u[:, 5] * 2 - 1) * (1 - s)
        cos, sin = torch.cos(theta), torch.sin(theta)
        # output -> input sampling grid: inverse of (scale s, rotate, shear, flip, translate)
        a = torch.stack([torch.stack([cos * flip, -sin + shear], -1), torch.stack([sin * flip, cos], -1)], 1)
        a = a / s[:, None, None]
        t = -(a @ torch.stack([tx, ty], -1)[..., None])[..., 0]
        aff = torch.cat([a, t[..., None]], dim=2)  # [B,2,3]
        grid = F.affine_grid(aff, (batch, 1, self.size, self.size), align_corners=False)
        m = F.grid_sample(shapes, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return (m > 0.5).float()


def load_mask_file(path, size: int | None = None) -> Tensor:
    """A user mask image -> [1,1,H,W] float (white / nonzero = missing), resized (nearest) to `size`."""
    img = open_rgb(path).convert("L")
    if size is not None:
        img = img.resize((size, size), Image.NEAREST)
    arr = np.asarray(img) > 127
    if not arr.any():
        raise BadImageError(path, "mask has no missing pixels (white = missing)")
    if arr.all():
        raise BadImageError(path, "mask covers the whole image (white = missing; nothing left as context)")
    return torch.from_numpy(arr).float()[None, None]


class Masker:
    """One callable for every kind: `masker(batch, gen) -> [B,1,S,S]` on `device`."""

    def __init__(self, kind: str, size: int, device="cpu", *, seed: int = 0, silhouettes: Tensor | None = None,
                 mask_file: str = "", n_blocks: int = 4, region_area=(0.1, 0.25)):
        if kind not in MASK_KINDS:
            raise CebenchError(f"unknown mask kind {kind!r}; choose one of {', '.join(MASK_KINDS)}")
        self.kind, self.size, self.device, self.n_blocks = kind, size, torch.device(device), n_blocks
        self._impl = None
        if kind == "noise":
            self._impl = NoiseMasker(size, device, seed=seed)
        elif kind == "region":
            if silhouettes is None:
                raise CebenchError("region masks need silhouettes (voc_silhouettes(voc_root))")
            self._impl = RegionMasker(size, silhouettes, device, area=region_area)
        elif kind == "file":
            if not mask_file:
                raise CebenchError("mask kind 'file' needs mask_file=PATH")
            self._file = load_mask_file(mask_file, size).to(self.device)

    def __call__(self, batch: int, gen: torch.Generator) -> Tensor | None:
        if self.kind == "none":
            return None
        if self.kind == "center":
            return center_mask(batch, self.size, self.device)
        if self.kind == "blocks":
            return block_mask(batch, self.size, gen, self.device, n_blocks=self.n_blocks)
        if self.kind == "file":
            return self._file.expand(batch, 1, self.size, self.size).clone()
        return self._impl(batch, gen)
