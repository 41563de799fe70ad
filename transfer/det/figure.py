"""Figure: detections on a few test images (box, class name and score), one PNG.

Input: the `examples` a final detection job keeps in its JSON (ids with boxes in original pixels,
scores, labels), drawn over the images with the ground truth dashed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cebench.data.voc import parse_annotation
from cebench.images import open_rgb
from cebench.io import atomic_save_figure


def draw_detections(root, examples: list[dict], classes, out_png, *, score_min: float = 0.3, title: str = "",
                    cols: int = 3) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    root = Path(root)
    class_index = {c: i for i, c in enumerate(classes)}
    n = max(1, len(examples))
    cols = min(cols, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax in axes.ravel():
        ax.axis("off")
    for ax, ex in zip(axes.ravel(), examples):
        img = np.asarray(open_rgb(root / "JPEGImages" / f"{ex['id']}.jpg"))
        ax.imshow(img)
        gt = parse_annotation(root / "Annotations" / f"{ex['id']}.xml", class_index,
                              root / "JPEGImages" / f"{ex['id']}.jpg")
        for b in gt["boxes"]:
            ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ls="--", lw=0.8, ec="white"))
        boxes = np.asarray(ex["boxes"], dtype=float).reshape(-1, 4)
        scores = np.asarray(ex["scores"], dtype=float)
        labels = np.asarray(ex["labels"], dtype=int)
        show = scores >= score_min
        if not show.any() and len(scores):  # nothing confident: the top detection, dotted
            show = scores == scores.max()
        for b, s, c in zip(boxes[show], scores[show], labels[show]):
            col = colours(c % 10)
            ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, lw=1.6, ec=col,
                                   ls="-" if s >= score_min else ":"))
            ax.text(b[0], b[1], f"{classes[c]} {s:.2f}", fontsize=6, color="white", va="bottom",
                    bbox=dict(facecolor=col, alpha=0.8, pad=0.5, lw=0))
        ax.set_title(ex["id"], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out_png = atomic_save_figure(fig, out_png, dpi=130)
    plt.close(fig)
    return out_png


__all__ = ["draw_detections"]
