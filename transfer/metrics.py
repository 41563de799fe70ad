"""Transfer metrics: VOC average precision (11-point and all-point) and segmentation mean IU.

`voc_ap` is the PASCAL VOC devkit's `VOCap` / `VOCevaldet` AP exactly (py-faster-rcnn's `voc_ap`), so
classification and detection share one definition. `classification_ap` ranks images by score per class
and ignores "difficult" images (label 0), as the VOC2007 classification devkit does.
"""

from __future__ import annotations

import numpy as np
import torch


def voc_ap(recall, precision, use_07_metric: bool = True) -> float:
    """AP from a recall/precision curve (arrays in ranking order).

    use_07_metric=True: the VOC2007 11-point interpolated AP (mean over t in 0, 0.1, ..., 1 of the max
    precision at recall >= t, 0 where no such point). False: the area under the monotone (interpolated)
    precision envelope, the all-point AP of VOC2010+.
    """
    rec = np.asarray(recall, dtype=np.float64).ravel()
    prec = np.asarray(precision, dtype=np.float64).ravel()
    if rec.shape != prec.shape:
        raise ValueError(f"recall {rec.shape} and precision {prec.shape} differ in shape")
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):  # 11 thresholds, exactly as the devkit
            mask = rec >= t
            p = float(np.max(prec[mask])) if mask.any() else 0.0
            ap += p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope (monotone non-increasing)
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def precision_recall(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Ranking curve for one class: labels in {1, 0, -1}; 0 (difficult) images are removed first.

    Ties are broken by a stable sort on the negated score (the devkit's `sort(-conf)` order).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    keep = labels != 0
    scores, labels = scores[keep], labels[keep]
    order = np.argsort(-scores, kind="stable")
    tp = (labels[order] > 0).astype(np.float64)
    fp = 1.0 - tp
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    npos = max(float((labels > 0).sum()), np.finfo(np.float64).eps)
    rec = tp / npos
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return rec, prec


def classification_ap(scores, labels, use_07_metric: bool = True) -> np.ndarray:
    """Per-class AP for multi-label classification. scores, labels: [N, C]; labels in {1, 0, -1}.

    Label 0 marks a "difficult" image for that class: ignored (neither positive nor negative).
    A class without a positive image gets NaN (excluded by `np.nanmean`).
    """
    scores = _np(scores)
    labels = _np(labels)
    if scores.shape != labels.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must both be [N, C]")
    aps = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        if (labels[:, c] > 0).any():
            rec, prec = precision_recall(scores[:, c], labels[:, c])
            aps[c] = voc_ap(rec, prec, use_07_metric)
    return aps


def mean_ap(aps) -> float:
    aps = np.asarray(aps, dtype=np.float64)
    return float(np.nanmean(aps)) if np.isfinite(aps).any() else float("nan")


def confusion_matrix(pred, target, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """[K, K] int64 counts, rows = ground truth, columns = prediction; `ignore_index` pixels skipped."""
    pred = torch.as_tensor(pred).reshape(-1).long()
    target = torch.as_tensor(target).reshape(-1).long()
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in size")
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    idx = target[keep] * num_classes + pred[keep].clamp(0, num_classes - 1)
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(conf) -> np.ndarray:
    """IU_c = n_cc / (t_c + sum_i n_ic - n_cc); NaN for a class absent from both truth and prediction."""
    conf = _np(conf).astype(np.float64)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), np.nan)


def mean_iu(conf) -> float:
    """FCN's mean IU: mean over classes present in truth or prediction."""
    iu = iou_per_class(conf)
    return float(np.nanmean(iu)) if np.isfinite(iu).any() else float("nan")


def pixel_accuracy(conf) -> float:
    conf = _np(conf).astype(np.float64)
    total = conf.sum()
    return float(np.diag(conf).sum() / total) if total > 0 else float("nan")


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


__all__ = ["voc_ap", "precision_recall", "classification_ap", "mean_ap", "confusion_matrix",
           "iou_per_class", "mean_iu", "pixel_accuracy"]
