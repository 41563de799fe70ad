"""Losses: masked L2 with the overlap band, the adversarial (GAN) losses, the supervised BCE.

Conventions: masks [B,1,H,W] with 1 = missing. The reconstruction weight map is 1 on the hole,
`overlap_weight` (official 10) on a band of `overlap` px (official 4; the paper says 7) and 0 elsewhere.
The band lies outside the hole (visible context the prediction overlaps, as in the official code) for
full-image predictions; for the centre-crop inpainting net the band is the outer ring of the predicted
crop (see `InpaintObjective`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def dilate(mask: Tensor, px: int) -> Tensor:
    """Binary dilation by a (2px+1)^2 square (max-pool), [B,1,H,W] -> same shape."""
    if px <= 0:
        return mask
    return F.max_pool2d(mask, 2 * px + 1, stride=1, padding=px)


def overlap_weights(mask: Tensor, overlap: int = 4, overlap_weight: float = 10.0) -> Tensor:
    """1 on the hole, `overlap_weight` on the `overlap`-px band around it, 0 elsewhere."""
    band = dilate(mask, overlap) - mask
    return mask + overlap_weight * band


def weighted_l2(pred: Tensor, target: Tensor, weights: Tensor | None) -> Tensor:
    """Weighted mean of (pred - target)^2: sum(w * d^2) / (sum(w) * C) (the official `wtl2Matrix` loss,
    normalised by the weight mass so that masks of any size give comparable values);
    `weights=None` is the plain mean squared error (the autoencoder, the 'all' region)."""
    sq = (pred.float() - target.float()) ** 2
    if weights is None:
        return sq.mean()
    return (sq * weights).sum() / (weights.sum().clamp_min(1.0) * pred.shape[1])


def patch_standardize(x: Tensor, patch: int, eps: float = 1e-2) -> tuple[Tensor, Tensor, Tensor]:
    """Standardise each non-overlapping `patch` x `patch` square of x [B,C,H,W] over its pixels and
    channels together (MAE's norm_pix_loss target). Returns (standardised x, mean, std); mean and std
    are [B,1,H,W], constant on each patch. `eps` is added to the variance (MAE: 1e-6) so that flat
    patches (solid paint, sky, where JPEG noise is all there is) are not blown up to unit contrast:
    1e-2 is a standard deviation of 0.1 in ImageNet-normalised units, about 6 grey levels."""
    b, c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"patch {patch} does not divide the image size {h}x{w}")
    xf = x.float()
    mean = F.avg_pool2d(xf.mean(1, keepdim=True), patch)                 # [B,1,H/p,W/p]
    var = (F.avg_pool2d((xf * xf).mean(1, keepdim=True), patch) - mean * mean).clamp_min(0.0)
    mean = mean.repeat_interleave(patch, 2).repeat_interleave(patch, 3)  # [B,1,H,W]
    std = (var + eps).sqrt().repeat_interleave(patch, 2).repeat_interleave(patch, 3)
    return (xf - mean) / std, mean, std


def gan_d_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """Discriminator BCE: real -> 1, fake -> 0 (logits)."""
    return 0.5 * (F.binary_cross_entropy_with_logits(d_real.float(), torch.ones_like(d_real, dtype=torch.float32))
                  + F.binary_cross_entropy_with_logits(d_fake.float(), torch.zeros_like(d_fake, dtype=torch.float32)))


def gan_g_loss(d_fake: Tensor) -> Tensor:
    """Generator (non-saturating) BCE: fake -> 1."""
    return F.binary_cross_entropy_with_logits(d_fake.float(), torch.ones_like(d_fake, dtype=torch.float32))


def multilabel_bce(logits: Tensor, labels: Tensor) -> Tensor:
    """VOC labels in {1, 0 (difficult, ignored), -1}: BCE over the known ones."""
    known = (labels != 0).float()
    target = (labels > 0).float()
    loss = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    return (loss * known).sum() / known.sum().clamp_min(1.0)


def joint(rec: Tensor, adv: Tensor | None, w_rec: float = 0.999, w_adv: float = 0.001) -> Tensor:
    """L = w_rec * L_rec + w_adv * L_adv (the paper's 0.999 / 0.001); L_rec alone without adversary."""
    return rec if adv is None else w_rec * rec + w_adv * adv
