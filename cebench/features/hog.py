"""Vectorised HOG on torch tensors (CPU or GPU), numerically matching `skimage.feature.hog`.

scikit-image's HOG (checked against its `_hoghistogram.pyx`):
  * gradients by central differences, zero on the first/last row and column;
  * colour: per pixel, the gradient of the channel with the largest magnitude (first on ties);
  * unsigned orientation `rad2deg(atan2(g_row, g_col)) % 180`, HARD-assigned to one of
    `orientations` bins (bin i covers [i*180/n, (i+1)*180/n), thresholds computed in float32);
    each pixel votes its full gradient magnitude: scikit-image does NOT interpolate votes;
  * a cell histogram is the MEAN vote over the cell's pixels; cells tile the image from the
    top-left corner, leftover rows/columns are ignored (but their pixels feed the gradients);
  * blocks of `cells_per_block` cells, stride one cell, normalised by L1 / L1-sqrt / L2 / L2-Hys
    (eps 1e-5); the vector is ordered (block_row, block_col, cell_row, cell_col, orientation).

`interpolate=True` adds Dalal-Triggs style linear interpolation of each vote between the two
nearest orientation bins (not what scikit-image does; off by default so the features agree).
Everything is batched tensor code: one scatter for the votes, `avg_pool2d` for the cells and
`unfold` for the blocks; no Python loop over pixels, cells or blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cebench.images import denormalize

BLOCK_NORMS = ("L1", "L1-sqrt", "L2", "L2-Hys")


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


def _gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B,C,H,W] -> (g_row, g_col) [B,C,H,W]; central differences, zero at the border."""
    g_row = F.pad(x[:, :, 2:, :] - x[:, :, :-2, :], (0, 0, 1, 1))
    g_col = F.pad(x[:, :, :, 2:] - x[:, :, :, :-2], (1, 1, 0, 0))
    return g_row, g_col


def hog_output_dim(height: int, width: int, orientations: int = 9, pixels_per_cell=(8, 8),
                   cells_per_block=(3, 3)) -> int:
    c_row, c_col = _pair(pixels_per_cell)
    b_row, b_col = _pair(cells_per_block)
    nbr = height // c_row - b_row + 1
    nbc = width // c_col - b_col + 1
    if nbr <= 0 or nbc <= 0:
        raise ValueError(f"image {height}x{width} too small for HOG: needs at least "
                         f"{b_row * c_row}x{b_col * c_col} px")
    return nbr * nbc * b_row * b_col * orientations


def _normalize_blocks(blocks: torch.Tensor, method: str, eps: float = 1e-5) -> torch.Tensor:
    """blocks [B, nbr, nbc, K] -> normalised over K, as skimage's _hog_normalize_block."""
    if method == "L1":
        return blocks / (blocks.abs().sum(-1, keepdim=True) + eps)
    if method == "L1-sqrt":
        return torch.sqrt(blocks / (blocks.abs().sum(-1, keepdim=True) + eps))
    if method == "L2":
        return blocks / torch.sqrt((blocks * blocks).sum(-1, keepdim=True) + eps**2)
    if method == "L2-Hys":
        out = blocks / torch.sqrt((blocks * blocks).sum(-1, keepdim=True) + eps**2)
        out = out.clamp(max=0.2)
        return out / torch.sqrt((out * out).sum(-1, keepdim=True) + eps**2)
    raise ValueError(f"block_norm must be one of {BLOCK_NORMS}, got {method!r}")


def hog(images: torch.Tensor, orientations: int = 9, pixels_per_cell=(8, 8),
        cells_per_block=(3, 3), block_norm: str = "L2-Hys", transform_sqrt: bool = False,
        interpolate: bool = False, exact_orientation: bool = True,
        feature_vector: bool = True) -> torch.Tensor:
    """HOG of a batch. images: [B,C,H,W] (C=1 grey, C>1 colour as skimage's channel_axis) or
    [B,H,W] grey, float in [0,1]. Returns [B, D] float (D = hog_output_dim(H, W, ...)), or
    [B, nbr, nbc, b_row, b_col, orientations] with feature_vector=False.

    exact_orientation: compute the angle in float64 as scikit-image does, so a gradient lying
    exactly on a bin edge (e.g. 45 degrees with 8 bins) lands in the same bin; set False on a
    GPU without fast float64 (differences then only at bin edges).
    """
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4:
        raise ValueError(f"hog expects [B,C,H,W] or [B,H,W], got shape {tuple(images.shape)}")
    x = images if images.is_floating_point() else images.float()
    B, C, H, W = x.shape
    c_row, c_col = _pair(pixels_per_cell)
    b_row, b_col = _pair(cells_per_block)
    hog_output_dim(H, W, orientations, (c_row, c_col), (b_row, b_col))  # validates the size
    if transform_sqrt:
        x = torch.sqrt(x)

    g_row, g_col = _gradients(x)
    # Colour: the channel with the strongest gradient, per pixel (the first one on ties, as
    # numpy's argmax). A running maximum over the few channels is much faster than argmax(dim=1).
    mags = torch.hypot(g_row, g_col) if C > 1 else None
    best_r, best_c = g_row[:, 0], g_col[:, 0]  # [B,H,W]
    if C > 1:
        best_m = mags[:, 0]
        for ch in range(1, C):  # loop over channels only
            take = mags[:, ch] > best_m
            best_m = torch.where(take, mags[:, ch], best_m)
            best_r = torch.where(take, g_row[:, ch], best_r)
            best_c = torch.where(take, g_col[:, ch], best_c)
    g_row, g_col = best_r, best_c

    # Only the pixels inside whole cells vote.
    ncr, ncc = H // c_row, W // c_col
    g_row = g_row[:, : ncr * c_row, : ncc * c_col]
    g_col = g_col[:, : ncr * c_row, : ncc * c_col]
    adt = torch.float64 if exact_orientation else x.dtype
    gr, gc = g_row.to(adt), g_col.to(adt)
    mag = torch.hypot(gr, gc)
    angle = torch.rad2deg(torch.atan2(gr, gc)) % 180.0  # [0, 180]

    # Bin edges as skimage computes them: float32(180/n) * (i+1) in float32.
    per_bin = torch.tensor(180.0 / orientations, dtype=torch.float32)
    edges = (per_bin * torch.arange(1, orientations + 1, dtype=torch.float32)).to(adt).to(x.device)
    if interpolate:
        pos = angle / float(per_bin) - 0.5  # bin centres at (i+0.5)*180/n
        lo = torch.floor(pos)
        frac = (pos - lo).to(x.dtype)
        b0 = lo.long() % orientations
        b1 = (b0 + 1) % orientations
        m = mag.to(x.dtype)
        votes = torch.zeros(B, orientations, *mag.shape[1:], dtype=x.dtype, device=x.device)
        votes.scatter_add_(1, b0.unsqueeze(1), (m * (1 - frac)).unsqueeze(1))
        votes.scatter_add_(1, b1.unsqueeze(1), (m * frac).unsqueeze(1))
    else:
        bins = torch.bucketize(angle, edges[:-1].contiguous(), right=True)  # [B,h,w] in 0..n-1
        m = torch.where(angle < edges[-1], mag, torch.zeros_like(mag)).to(x.dtype)  # 180 -> no bin
        votes = torch.zeros(B, orientations, *mag.shape[1:], dtype=x.dtype, device=x.device)
        votes.scatter_(1, bins.unsqueeze(1), m.unsqueeze(1))  # [B,O,h,w]

    cells = F.avg_pool2d(votes, kernel_size=(c_row, c_col), stride=(c_row, c_col))  # [B,O,ncr,ncc]
    blocks = cells.unfold(2, b_row, 1).unfold(3, b_col, 1)  # [B,O,nbr,nbc,b_row,b_col]
    blocks = blocks.permute(0, 2, 3, 4, 5, 1)  # [B,nbr,nbc,b_row,b_col,O]
    nbr, nbc = blocks.shape[1], blocks.shape[2]
    out = _normalize_blocks(blocks.reshape(B, nbr, nbc, -1), block_norm)
    if feature_vector:
        return out.reshape(B, -1)
    return out.reshape(B, nbr, nbc, b_row, b_col, orientations)


@dataclass
class HOGExtractor:
    """A callable for `extract_features`: images -> [B, D] HOG.

    `normalized=True` means the input is ImageNet-normalised (what encoders take) and is mapped
    back to [0,1] first, so HOG and the encoders can share one data pipeline.
    """

    orientations: int = 9
    pixels_per_cell: tuple = (8, 8)
    cells_per_block: tuple = (2, 2)
    block_norm: str = "L2-Hys"
    normalized: bool = False
    exact_orientation: bool = True

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.normalized:
            images = denormalize(images).clamp(0, 1)
        return hog(images, self.orientations, self.pixels_per_cell, self.cells_per_block,
                   self.block_norm, exact_orientation=self.exact_orientation)
