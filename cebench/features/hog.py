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

    g_row, g_col = _select_channel(*_gradients(x))
    # Only the pixels inside whole cells vote.
    ncr, ncc = H // c_row, W // c_col
    votes = _votes(g_row[:, : ncr * c_row, : ncc * c_col], g_col[:, : ncr * c_row, : ncc * c_col],
                   orientations, interpolate, exact_orientation, x.dtype)  # [B,O,h,w]
    cells = F.avg_pool2d(votes, kernel_size=(c_row, c_col), stride=(c_row, c_col))  # [B,O,ncr,ncc]
    return _cells_to_hog(cells, (b_row, b_col), block_norm, feature_vector)


def _select_channel(g_row: torch.Tensor, g_col: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B,C,H,W] gradients -> [B,H,W]: per pixel, the channel with the strongest gradient (the first one
    on ties, as numpy's argmax). A running maximum over the few channels is faster than argmax(dim=1)."""
    best_r, best_c = g_row[:, 0], g_col[:, 0]
    if g_row.shape[1] > 1:
        mags = torch.hypot(g_row, g_col)
        best_m = mags[:, 0]
        for ch in range(1, g_row.shape[1]):  # loop over channels only
            take = mags[:, ch] > best_m
            best_m = torch.where(take, mags[:, ch], best_m)
            best_r = torch.where(take, g_row[:, ch], best_r)
            best_c = torch.where(take, g_col[:, ch], best_c)
    return best_r, best_c


def _angles(g_row: torch.Tensor, g_col: torch.Tensor, orientations: int, exact_orientation: bool):
    """(magnitude, unsigned angle in [0, 180], bin edges) in skimage's precision."""
    adt = torch.float64 if exact_orientation else g_row.dtype
    gr, gc = g_row.to(adt), g_col.to(adt)
    angle = torch.rad2deg(torch.atan2(gr, gc)) % 180.0  # [0, 180]
    # Bin edges as skimage computes them: float32(180/n) * (i+1) in float32.
    per_bin = torch.tensor(180.0 / orientations, dtype=torch.float32)
    edges = (per_bin * torch.arange(1, orientations + 1, dtype=torch.float32)).to(adt).to(g_row.device)
    return torch.hypot(gr, gc), angle, edges


def _bins(g_row: torch.Tensor, g_col: torch.Tensor, orientations: int, exact_orientation: bool, dtype):
    """skimage's hard binning: (bin index long, vote float) per pixel; an angle of exactly 180 votes 0."""
    mag, angle, edges = _angles(g_row, g_col, orientations, exact_orientation)
    bins = torch.bucketize(angle, edges[:-1].contiguous(), right=True)  # 0..n-1
    return bins, torch.where(angle < edges[-1], mag, torch.zeros_like(mag)).to(dtype)


def _votes(g_row: torch.Tensor, g_col: torch.Tensor, orientations: int, interpolate: bool,
           exact_orientation: bool, dtype) -> torch.Tensor:
    """Per-pixel orientation votes [B,O,h,w] of the selected gradients [B,h,w] (skimage's binning)."""
    votes = torch.zeros(g_row.shape[0], orientations, *g_row.shape[1:], dtype=dtype, device=g_row.device)
    if interpolate:
        mag, angle, _ = _angles(g_row, g_col, orientations, exact_orientation)
        pos = angle / (180.0 / orientations) - 0.5  # bin centres at (i+0.5)*180/n
        lo = torch.floor(pos)
        frac = (pos - lo).to(dtype)
        b0 = lo.long() % orientations
        b1 = (b0 + 1) % orientations
        m = mag.to(dtype)
        votes.scatter_add_(1, b0.unsqueeze(1), (m * (1 - frac)).unsqueeze(1))
        votes.scatter_add_(1, b1.unsqueeze(1), (m * frac).unsqueeze(1))
    else:
        bins, m = _bins(g_row, g_col, orientations, exact_orientation, dtype)
        votes.scatter_(1, bins.unsqueeze(1), m.unsqueeze(1))
    return votes


def _cells_to_hog(cells: torch.Tensor, block, block_norm: str, feature_vector: bool = True) -> torch.Tensor:
    """Mean cell histograms [B,O,ncr,ncc] -> block-normalised HOG [B, D] (skimage's order)."""
    b_row, b_col = block
    B, O = cells.shape[:2]
    blocks = cells.unfold(2, b_row, 1).unfold(3, b_col, 1)  # [B,O,nbr,nbc,b_row,b_col]
    blocks = blocks.permute(0, 2, 3, 4, 5, 1)  # [B,nbr,nbc,b_row,b_col,O]
    nbr, nbc = blocks.shape[1], blocks.shape[2]
    out = _normalize_blocks(blocks.reshape(B, nbr, nbc, -1), block_norm)
    if feature_vector:
        return out.reshape(B, -1)
    return out.reshape(B, nbr, nbc, b_row, b_col, O)


def grid_hog(image: torch.Tensor, corners: torch.Tensor, size: int, orientations: int = 9, cell: int = 8,
             block: int = 2, block_norm: str = "L2-Hys", exact_orientation: bool = True) -> torch.Tensor:
    """`hog(crop_patches(image, corners, size))` for grid patches, computed once per image.

    image [C,H,W] float in [0,1]; corners [P,2] (y, x) of size x size patches whose offsets from the
    first corner are multiples of `cell`, with `cell` dividing `size` (a grid of stride k * cell).
    Overlapping patches then share their cells: gradients, orientations and cell sums are computed
    once on the image, and only what differs in a patch of its own is corrected -- the patch's
    outermost rows and columns, where its gradient has no outside neighbour (zero across the border,
    as in `hog`). Same numbers as the per-patch `hog` up to float rounding (tests/test_features_hog),
    without recomputing each pixel for every patch that contains it (4x at stride size / 2).
    """
    H, W = image.shape[-2:]
    P = corners.shape[0]
    n = size // cell
    if size % cell or P == 0:
        raise ValueError(f"grid_hog needs cell {cell} to divide the patch size {size} and at least one patch")
    oy, ox = int(corners[:, 0].min()), int(corners[:, 1].min())
    if bool(((corners[:, 0] - oy) % cell).any() or ((corners[:, 1] - ox) % cell).any()):
        raise ValueError(f"grid_hog: patch corners must lie on one {cell}-px lattice")
    x = image.float()[None]
    # Sums and corrections in float64: a patch whose true cell histograms are all zero (a flat
    # area) must come out as zeros, not as the rounding residue of (sum - border), which L2-Hys's
    # second normalisation would blow up to unit length.
    dt = torch.float64
    ncr, ncc = (H - oy) // cell, (W - ox) // cell  # lattice cells from (oy, ox)
    gr_all, gc_all = _gradients(x)  # [1,C,H,W]
    gr_all = gr_all[0, :, oy:oy + ncr * cell, ox:ox + ncc * cell]  # [C,h,w] on the lattice
    gc_all = gc_all[0, :, oy:oy + ncr * cell, ox:ox + ncc * cell]
    O, nc = orientations, ncr * ncc

    def cell_sums(bins, m, cell_of):  # votes summed per (orientation, cell): one index_add, no [O,h,w] map
        out = torch.zeros(O * nc, dtype=dt)
        out.index_add_(0, (bins * nc + cell_of).reshape(-1), m.reshape(-1))
        return out.reshape(O, ncr, ncc)

    cy = torch.arange(ncr * cell) // cell  # lattice cell row / column of each pixel row / column
    cx = torch.arange(ncc * cell) // cell
    bins, m = _bins(*_select_channel(gr_all[None], gc_all[None]), O, exact_orientation, dt)  # [1,h,w]
    bins, m = bins[0], m[0]
    sums = cell_sums(bins, m, cy[:, None] * ncc + cx[None, :])  # [O, ncr, ncc]
    # What a patch of its own sees differently: its outer rows have no vertical neighbour (g_row = 0),
    # its outer columns no horizontal one (g_col = 0), with the colour chosen again on what is left.
    # Cell-edge rows/columns: the dense votes there, and the patch-border votes, summed per cell.
    ends = torch.tensor([0, cell - 1])
    rows = (torch.arange(ncr)[:, None] * cell + ends).reshape(-1)  # [2 ncr]: first, last row of each cell
    cols = (torch.arange(ncc)[:, None] * cell + ends).reshape(-1)
    _, gc_r = _select_channel(torch.zeros_like(gc_all[None, :, rows]), gc_all[None, :, rows])  # [1, 2ncr, w]
    gr_c, _ = _select_channel(gr_all[None, :, :, cols], torch.zeros_like(gr_all[None, :, :, cols]))
    b_r, m_r = (t[0] for t in _bins(torch.zeros_like(gc_r), gc_r, O, exact_orientation, dt))  # [2ncr, w]
    b_c, m_c = (t[0] for t in _bins(gr_c, torch.zeros_like(gr_c), O, exact_orientation, dt))  # [h, 2ncc]
    row_cell = (torch.arange(ncr).repeat_interleave(2)[:, None] * ncc + cx[None, :])  # [2ncr, w]
    col_cell = (cy[:, None] * ncc + torch.arange(ncc).repeat_interleave(2)[None, :])  # [h, 2ncc]
    d_top = cell_sums(b_r[0::2], m_r[0::2], row_cell[0::2]) - cell_sums(bins[rows[0::2]], m[rows[0::2]], row_cell[0::2])
    d_bot = cell_sums(b_r[1::2], m_r[1::2], row_cell[1::2]) - cell_sums(bins[rows[1::2]], m[rows[1::2]], row_cell[1::2])
    d_lft = (cell_sums(b_c[:, 0::2], m_c[:, 0::2], col_cell[:, 0::2])
             - cell_sums(bins[:, cols[0::2]], m[:, cols[0::2]], col_cell[:, 0::2]))
    d_rgt = (cell_sums(b_c[:, 1::2], m_c[:, 1::2], col_cell[:, 1::2])
             - cell_sums(bins[:, cols[1::2]], m[:, cols[1::2]], col_cell[:, 1::2]))

    def onehot(b, v):  # [r, c] bins and votes -> [O, r, c]
        return torch.zeros(O, *b.shape, dtype=dt).scatter_(0, b[None], v[None])

    # a patch corner has neither neighbour: vote 0; the row and column fixes above gave vr + vc - v
    k = {}
    for a in (0, 1):
        for c in (0, 1):
            r_, c_ = rows[a::2], cols[c::2]
            k[(-a, -c)] = (onehot(bins[r_][:, c_], m[r_][:, c_]) - onehot(b_r[a::2][:, c_], m_r[a::2][:, c_])
                           - onehot(b_c[r_][:, c::2], m_c[r_][:, c::2]))
    iy = torch.div(corners[:, 0] - oy, cell, rounding_mode="floor")  # [P] first lattice cell
    ix = torch.div(corners[:, 1] - ox, cell, rounding_mode="floor")
    r = iy[:, None] + torch.arange(n)  # [P, n]
    c = ix[:, None] + torch.arange(n)
    cells = sums[:, r[:, :, None], c[:, None, :]].permute(1, 0, 2, 3).clone()  # [P, O, n, n]
    rows0, rows1 = iy, iy + n - 1
    cols0, cols1 = ix, ix + n - 1
    cells[:, :, 0, :] += d_top[:, rows0[:, None], c].permute(1, 0, 2)
    cells[:, :, -1, :] += d_bot[:, rows1[:, None], c].permute(1, 0, 2)
    cells[:, :, :, 0] += d_lft[:, r, cols0[:, None]].permute(1, 0, 2)
    cells[:, :, :, -1] += d_rgt[:, r, cols1[:, None]].permute(1, 0, 2)
    for (a, b), kk in k.items():  # a, b: 0 = first, -1 = last row / column of the patch
        rr, cc = (rows0 if a == 0 else rows1), (cols0 if b == 0 else cols1)
        cells[:, :, a, b] += kk[:, rr, cc].T
    return _cells_to_hog((cells / (cell * cell)).to(image.dtype if image.is_floating_point() else torch.float32),
                         (block, block), block_norm)


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
