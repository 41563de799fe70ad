"""Frozen features: the VOC07 linear SVM protocol and a kNN classifier, per layer (`cebench transfer svm`).

Features of each layer come from the one shared extractor (`cebench.features.extract.extract_features`):
the layer's output average-pooled to `grid` x `grid`, flattened and L2-normalised. One LinearSVC per
class (difficult images left out of that class's training), its cost C chosen by `cv_folds`-fold
cross-validation on trainval only (scored by AP); kNN: cosine-similarity-weighted votes of the k nearest
trainval images, k chosen by leave-one-out on trainval. Both scored with VOC07 11-point AP on test.
The backbone is never updated (eval mode, no grad).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from cebench.features.extract import extract_features
from cebench.runtime import autocast_context

from .common import TaskContext, encoder_for_job, job_runtime, job_splits
from .data import to_input
from .metrics import classification_ap, mean_ap


@dataclass
class SvmConfig:
    layers: list[str] = field(default_factory=lambda: ["conv1", "conv2", "conv3", "conv4", "conv5"])
    grid: int = 2                 # adaptive average pooling to grid x grid before flattening
    costs: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0])
    cv_folds: int = 3
    knn_ks: list[int] = field(default_factory=lambda: [5, 10, 20, 50])
    load_size: int = 64
    batch_size: int = 200
    use_07_metric: bool = True
    knn: bool = True


def layer_features(encoder, images_u8: torch.Tensor, layers, cfg: SvmConfig, device,
                   amp_context=None) -> dict[str, np.ndarray]:
    """{layer: [N, C_l * grid^2] L2-normalised} for every layer, from one forward pass per batch
    (under `amp_context`, e.g. the runtime's bf16 autocast on CUDA; features are kept in fp32)."""
    encoder.eval()
    layers = list(layers)
    loader = DataLoader(TensorDataset(images_u8, torch.arange(images_u8.shape[0])), batch_size=cfg.batch_size)

    def fn(x):  # [B, 3, H, W] -> [B, sum_l C_l * grid^2], the layers side by side
        ys = encoder.forward_intermediates(to_input(x), layers)
        return torch.cat([F.adaptive_avg_pool2d(ys[n], cfg.grid).flatten(1) for n in layers], dim=1)

    feats = torch.from_numpy(np.asarray(extract_features(fn, loader, device=device, l2_normalize=False,
                                                         pool=None, amp_context=amp_context).feats))
    with torch.no_grad():  # each layer's width in the concatenation, from one image
        probe = encoder.forward_intermediates(to_input(images_u8[:1].to(device)), layers)
    widths = [probe[n].shape[1] * cfg.grid ** 2 for n in layers]
    return {n: F.normalize(f, dim=1).numpy() for n, f in zip(layers, feats.split(widths, dim=1))}


def svm_scores(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, cfg: SvmConfig, seed: int = 0):
    """Per class: C by CV on trainval (AP), then fit on all of trainval -> test decision values [N, C].

    The same search as scikit-learn's `GridSearchCV(LinearSVC, {"C": costs}, scoring="average_precision",
    cv=StratifiedKFold(folds, shuffle=True, random_state=seed))` - the same folds, fits in the same order
    (so liblinear draws the same seeds), the best mean fold AP with ties to the first C, the refit on all
    of trainval - written out because GridSearchCV's per-fit bookkeeping took a quarter of the time of
    these small fits (tests/test_transfer_units.py checks the two agree)."""
    from sklearn.metrics import average_precision_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.svm import LinearSVC

    def svc(c):
        return LinearSVC(C=c, class_weight={1: 2, 0: 1}, max_iter=5000, dual="auto")

    scores = np.zeros((xte.shape[0], ytr.shape[1]))
    chosen = []
    for c in range(ytr.shape[1]):
        keep = ytr[:, c] != 0
        x, y = xtr[keep], (ytr[keep, c] > 0).astype(int)
        if y.min() == y.max():
            chosen.append(None)
            continue
        folds = max(2, min(cfg.cv_folds, int(y.sum()), int((1 - y).sum())))
        splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y))
        mean_ap_by_cost = []
        for cost in cfg.costs:  # GridSearchCV's order: every fold of one C, then the next C
            # a training fold with one class (a class with a single positive) scores NaN, GridSearchCV's error_score
            fold_ap = [average_precision_score(y[va], svc(cost).fit(x[tr], y[tr]).decision_function(x[va]))
                       if np.unique(y[tr]).size > 1 else np.nan for tr, va in splits]
            mean_ap_by_cost.append(np.average(fold_ap))
        # the first C of the best mean fold AP; a NaN mean ranks last, all NaN -> the first C (GridSearchCV's ranks)
        ranked = np.nan_to_num(np.asarray(mean_ap_by_cost, dtype=float), nan=-np.inf)
        best = float(cfg.costs[int(np.argmax(ranked))])
        chosen.append(best)
        scores[:, c] = svc(best).fit(x, y).decision_function(xte)
    return scores, chosen


def knn_scores(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, cfg: SvmConfig):
    """k chosen by leave-one-out mAP on trainval; score_c = sum of cosine sims of neighbours with label 1."""
    tr, te = torch.from_numpy(xtr), torch.from_numpy(xte)
    pos = torch.from_numpy((ytr > 0).astype(np.float32))
    kmax = min(max(cfg.knn_ks), tr.shape[0] - 1)

    def vote(sims, k):
        val, idx = sims.topk(k, dim=1)
        return (val.clamp_min(0).unsqueeze(-1) * pos[idx]).sum(1).numpy()

    loo = tr @ tr.t()
    loo.fill_diagonal_(-float("inf"))
    best_k, best = None, -1.0
    for k in sorted({min(k, kmax) for k in cfg.knn_ks}):
        m = mean_ap(classification_ap(vote(loo, k), ytr, cfg.use_07_metric))
        if m > best:
            best_k, best = k, m
    return vote(te @ tr.t(), best_k), best_k


def fit(job, ctx: TaskContext) -> dict:
    """One frozen-feature job (no training loop, so no checkpoint and no curve): fit on trainval, score on
    test."""
    cfg: SvmConfig = ctx.cfg
    rt = job_runtime(ctx.runtime, ctx.device)  # the shared runtime: device and AMP chosen once
    device = rt.device
    tr, te = job_splits(job, ctx, "cls")
    encoder = encoder_for_job(job, ctx, to_input(tr["images"][: ctx.magic_images])).to(device)
    ytr, yte = tr["labels"].numpy(), te["labels"].numpy()
    metrics, details = {}, {}
    amp = lambda: autocast_context(rt)  # noqa: E731
    ftr = layer_features(encoder, tr["images"], cfg.layers, cfg, device, amp_context=amp)
    fte = layer_features(encoder, te["images"], cfg.layers, cfg, device, amp_context=amp)
    for layer in cfg.layers:
        xtr, xte = ftr[layer], fte[layer]
        s, costs = svm_scores(xtr, ytr, xte, cfg, seed=job.seed)
        metrics[f"svm {layer} mAP"] = mean_ap(classification_ap(s, yte, cfg.use_07_metric))
        details[f"svm {layer} C"] = costs
        if cfg.knn:
            s, k = knn_scores(xtr, ytr, xte, cfg)
            metrics[f"knn {layer} mAP"] = mean_ap(classification_ap(s, yte, cfg.use_07_metric))
            details[f"knn {layer} k"] = k
    return {"metrics": metrics, "details": details,
            "inputs": {"load_size": cfg.load_size, "train_images": len(ytr), "test_images": len(yte)}}


__all__ = ["SvmConfig", "fit", "svm_scores", "knn_scores", "layer_features"]
