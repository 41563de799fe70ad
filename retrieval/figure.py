"""The paper's Fig. 7 layout: a query patch in the first column and, for each method, a row of its
top-k neighbours labelled with the method's name. One canvas, one imshow: fast for many rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cebench.io import atomic_save_figure


def _to_hwc(patches: torch.Tensor, size: int) -> np.ndarray:
    """[B,3,h,w] uint8/float -> [B,size,size,3] float in [0,1]."""
    x = patches.float() / 255.0 if patches.dtype == torch.uint8 else patches.float()
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0, 1).permute(0, 2, 3, 1).numpy()


def retrieval_figure(queries: torch.Tensor, neighbours: dict, out_path, *, tile: int = 64,
                     gap: int = 4, dpi: int = 100, title: str | None = None) -> Path:
    """queries [Q,3,h,w]; neighbours: method -> [Q,k,3,h,w] (or [Q*k,...]) patches in rank order.
    Writes a PNG atomically and returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(neighbours)
    Q = int(queries.shape[0])
    k = max(int(v.shape[1]) if v.dim() == 5 else 1 for v in neighbours.values()) if methods else 0
    rows = Q * max(1, len(methods))
    step = tile + gap
    block_gap = 3 * gap
    H = rows * step + Q * block_gap
    W = (1 + k) * step + 2 * gap
    canvas = np.ones((H, W, 3), dtype=np.float32)
    q = _to_hwc(queries, tile)
    labels = []
    for qi in range(Q):
        y0 = qi * (max(1, len(methods)) * step + block_gap)
        canvas[y0 : y0 + tile, 0:tile] = q[qi]
        for mi, m in enumerate(methods):
            nb = neighbours[m][qi]
            nb = nb.unsqueeze(0) if nb.dim() == 3 else nb
            imgs = _to_hwc(nb, tile)
            y = y0 + mi * step
            for j in range(imgs.shape[0]):  # a handful of tiles per row
                x = (1 + j) * step + 2 * gap
                canvas[y : y + tile, x : x + tile] = imgs[j]
            labels.append((y + tile / 2, m))
    fig_w = W / dpi + 1.8
    fig, ax = plt.subplots(figsize=(fig_w, H / dpi + (0.4 if title else 0.1)), dpi=dpi)
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([y for y, _ in labels])
    ax.set_yticklabels([m for _, m in labels], fontsize=8)
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    ax.set_xlabel("query | nearest neighbours (rank 1 ...)", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    try:
        return atomic_save_figure(fig, out_path, bbox_inches="tight", dpi=dpi, colors=256)  # photographs: palette PNG
    finally:
        plt.close(fig)
