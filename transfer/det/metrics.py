"""VOC detection AP exactly as the official VOC2007 devkit (`VOCevaldet.m`) computes it.

Per class: detections of all images are ranked by confidence (stable order on ties, as MATLAB's
`sort(-confidence)`); each is matched to the ground-truth box of the same image with the largest
overlap. With overlap >= 0.5 (the devkit's `ovmax >= VOCopts.minoverlap`):
  - a non-difficult box not yet matched: true positive (the box is now taken);
  - a non-difficult box already matched (a duplicate detection): false positive;
  - a difficult box: neither TP nor FP (the detection is ignored);
otherwise a false positive. Difficult boxes are not counted in the number of positives.
Coordinates: `cebench.data.voc` boxes are 0-based pixel-edge xyxy (VOC's 1-based inclusive xmin becomes
xmin - 1, xmax stays), so width = x2 - x1 equals the devkit's xmax - xmin + 1 and the plain IoU on these
boxes IS the devkit's overlap (default `pixel_inclusive=False`). For boxes in the devkit's own inclusive
pixel coordinates pass `pixel_inclusive=True` (the `+1` on widths and heights).

AP: `cebench.transfer.metrics.voc_ap` (11-point VOC2007 metric or all-point), shared with
classification. A class with no non-difficult ground truth gets NaN and is left out of the mean.
The loop over ranked detections is the devkit's reference algorithm (greedy matching depends on the
order), done per class on numpy arrays; overlaps are computed vectorised per detection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..metrics import voc_ap


@dataclass
class DetectionAP:
    ap: np.ndarray              # [C] per-class AP (NaN: class without non-difficult ground truth)
    npos: np.ndarray            # [C] non-difficult ground-truth boxes per class
    classes: tuple = ()

    @property
    def map(self) -> float:
        return float(np.nanmean(self.ap)) if np.isfinite(self.ap).any() else float("nan")

    def as_dict(self) -> dict:
        names = self.classes or tuple(str(i) for i in range(len(self.ap)))
        return {"mAP": self.map, "ap": {n: (None if not np.isfinite(a) else float(a)) for n, a in zip(names, self.ap)},
                "npos": {n: int(p) for n, p in zip(names, self.npos)}}


def _overlaps(box: np.ndarray, gts: np.ndarray, inclusive: bool) -> np.ndarray:
    """IoU of one box [4] with gts [G, 4] (xyxy), the devkit's formula."""
    one = 1.0 if inclusive else 0.0
    ix1 = np.maximum(gts[:, 0], box[0])
    iy1 = np.maximum(gts[:, 1], box[1])
    ix2 = np.minimum(gts[:, 2], box[2])
    iy2 = np.minimum(gts[:, 3], box[3])
    iw = np.maximum(ix2 - ix1 + one, 0.0)
    ih = np.maximum(iy2 - iy1 + one, 0.0)
    inter = iw * ih
    area_d = (box[2] - box[0] + one) * (box[3] - box[1] + one)
    area_g = (gts[:, 2] - gts[:, 0] + one) * (gts[:, 3] - gts[:, 1] + one)
    union = area_d + area_g - inter
    # the devkit only computes the overlap where iw > 0 and ih > 0 (others are -inf)
    return np.where((iw > 0) & (ih > 0), inter / np.maximum(union, np.finfo(np.float64).eps), -np.inf)


def class_pr(det_image: np.ndarray, det_scores: np.ndarray, det_boxes: np.ndarray,
             gt_image: np.ndarray, gt_boxes: np.ndarray, gt_difficult: np.ndarray,
             iou_thresh: float = 0.5, pixel_inclusive: bool = False):
    """Recall/precision of one class. Detections: image ids [D], scores [D], boxes [D, 4];
    ground truth: image ids [G], boxes [G, 4], difficult [G] (bool). Returns (rec, prec, npos, tp, fp)."""
    det_image = np.asarray(det_image).ravel()
    det_scores = np.asarray(det_scores, dtype=np.float64).ravel()
    det_boxes = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)
    gt_image = np.asarray(gt_image).ravel()
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    gt_difficult = np.asarray(gt_difficult, dtype=bool).ravel()
    npos = int((~gt_difficult).sum())
    order = np.argsort(-det_scores, kind="stable")
    # ground truth grouped by image: sorted positions, so each image's boxes are one slice
    g_order = np.argsort(gt_image, kind="stable")
    g_img = gt_image[g_order]
    uniq, start = np.unique(g_img, return_index=True)
    stop = np.append(start[1:], len(g_img))
    slices = {u: g_order[s:e] for u, s, e in zip(uniq.tolist(), start.tolist(), stop.tolist())}
    taken = np.zeros(len(gt_boxes), dtype=bool)
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for d, k in enumerate(order):  # the devkit's greedy matching in rank order
        idx = slices.get(det_image[k].item() if hasattr(det_image[k], "item") else det_image[k])
        if idx is None or len(idx) == 0:
            fp[d] = 1
            continue
        ov = _overlaps(det_boxes[k], gt_boxes[idx], pixel_inclusive)
        j = int(np.argmax(ov))
        if ov[j] >= iou_thresh:
            g = idx[j]
            if gt_difficult[g]:
                continue  # matched a difficult box: neither TP nor FP
            if not taken[g]:
                tp[d] = 1
                taken[g] = True
            else:
                fp[d] = 1  # duplicate detection
        else:
            fp[d] = 1
    tp_c, fp_c = np.cumsum(tp), np.cumsum(fp)
    rec = tp_c / npos if npos > 0 else np.full_like(tp_c, np.nan)
    prec = tp_c / np.maximum(tp_c + fp_c, np.finfo(np.float64).eps)
    return rec, prec, npos, tp, fp


def evaluate_detections(detections, ground_truth, num_classes: int, *, iou_thresh: float = 0.5,
                        use_07_metric: bool = True, pixel_inclusive: bool = False, classes=()) -> DetectionAP:
    """Per-class VOC AP and mAP.

    detections: list over images of dicts {boxes [K,4], scores [K], labels [K] (0..C-1)};
    ground_truth: list over the same images of dicts {boxes [N,4], labels [N], difficult [N]}.
    """
    if len(detections) != len(ground_truth):
        raise ValueError(f"{len(detections)} detection lists for {len(ground_truth)} images")

    def cat(items, key, shape, dtype):
        arrs = [np.asarray(_np(it[key]), dtype=dtype).reshape(shape) for it in items]
        return np.concatenate(arrs) if arrs else np.zeros((0,) + shape[1:], dtype)

    d_img = np.concatenate([np.full(len(_np(d["scores"]).reshape(-1)), i) for i, d in enumerate(detections)]
                           or [np.zeros(0)])
    d_box, d_sc, d_lab = cat(detections, "boxes", (-1, 4), np.float64), cat(detections, "scores", (-1,), np.float64), \
        cat(detections, "labels", (-1,), np.int64)
    g_img = np.concatenate([np.full(len(_np(g["labels"]).reshape(-1)), i) for i, g in enumerate(ground_truth)]
                           or [np.zeros(0)])
    g_box, g_lab = cat(ground_truth, "boxes", (-1, 4), np.float64), cat(ground_truth, "labels", (-1,), np.int64)
    g_dif = cat(ground_truth, "difficult", (-1,), bool)
    aps = np.full(num_classes, np.nan)
    npos = np.zeros(num_classes, dtype=np.int64)
    for c in range(num_classes):
        dm, gm = d_lab == c, g_lab == c
        rec, prec, n, _, _ = class_pr(d_img[dm], d_sc[dm], d_box[dm], g_img[gm], g_box[gm], g_dif[gm],
                                      iou_thresh, pixel_inclusive)
        npos[c] = n
        if n > 0:
            aps[c] = voc_ap(rec, prec, use_07_metric) if len(rec) else 0.0
    return DetectionAP(ap=aps, npos=npos, classes=tuple(classes))


def _np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


__all__ = ["DetectionAP", "class_pr", "evaluate_detections"]
