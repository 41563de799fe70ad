"""Fast R-CNN on the AlexNet trunk (Girshick 2015, as used for the paper's Table 2 detection column).

conv1..conv5 of any `AlexNetEncoder` -> RoI max pooling (torchvision.ops.roi_pool, 6x6 as AlexNet's
pool5) on conv5 -> fc6 -> fc7 -> a (C+1)-way classifier (0 = background) and class-specific box
regression (4 deltas per class, smooth L1). Box deltas are the R-CNN parameterisation, normalised by
the mean and std of the training targets (stored as buffers so inference decodes with them).

Everything here is batched: RoI sampling, target assignment, loss and post-processing are tensor
operations over all RoIs at once (a loop runs over the images of a minibatch only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, box_iou, roi_pool

BBOX_CLIP = math.log(1000.0 / 16)


# ----------------------------------------------------------------------------------------- box coding
def encode_boxes(rois: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """R-CNN deltas (dx, dy, dw, dh) taking `rois` [N,4] to `gt` [N,4] (xyxy, continuous coordinates)."""
    w = (rois[:, 2] - rois[:, 0]).clamp(min=1e-3)
    h = (rois[:, 3] - rois[:, 1]).clamp(min=1e-3)
    cx, cy = rois[:, 0] + 0.5 * w, rois[:, 1] + 0.5 * h
    gw = (gt[:, 2] - gt[:, 0]).clamp(min=1e-3)
    gh = (gt[:, 3] - gt[:, 1]).clamp(min=1e-3)
    gcx, gcy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
    return torch.stack([(gcx - cx) / w, (gcy - cy) / h, torch.log(gw / w), torch.log(gh / h)], dim=1)


def decode_boxes(rois: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Inverse of `encode_boxes`. rois [N,4], deltas [N,K*4] -> boxes [N,K*4]."""
    w = (rois[:, 2] - rois[:, 0]).clamp(min=1e-3)[:, None]
    h = (rois[:, 3] - rois[:, 1]).clamp(min=1e-3)[:, None]
    cx, cy = rois[:, 0, None] + 0.5 * w, rois[:, 1, None] + 0.5 * h
    dx, dy = deltas[:, 0::4], deltas[:, 1::4]
    dw, dh = deltas[:, 2::4].clamp(max=BBOX_CLIP), deltas[:, 3::4].clamp(max=BBOX_CLIP)
    pcx, pcy, pw, ph = dx * w + cx, dy * h + cy, torch.exp(dw) * w, torch.exp(dh) * h
    out = torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], dim=2)
    return out.reshape(deltas.shape)


# ----------------------------------------------------------------------------------------- sampling
def sample_rois(proposals: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, *,
                num: int = 64, fg_fraction: float = 0.25, fg_thresh: float = 0.5,
                bg_range: tuple = (0.1, 0.5), generator: torch.Generator | None = None):
    """Fast R-CNN minibatch sampling for one image, vectorised.

    proposals [P,4], gt_boxes [G,4], gt_labels [G] (0..C-1). The ground-truth boxes join the candidates
    (as in Fast R-CNN). Foreground: IoU >= fg_thresh, at most round(fg_fraction*num), drawn at random;
    background: IoU in [bg_lo, bg_hi), filling the rest (fewer RoIs when there are not enough candidates,
    as py-faster-rcnn). Returns rois [R,4], labels [R] (0 = background, c+1 = class c), matched gt [R,4].
    """
    cand = torch.cat([proposals.reshape(-1, 4).to(gt_boxes.dtype), gt_boxes], 0)
    if gt_boxes.numel() == 0:
        max_iou = torch.zeros(len(cand), device=cand.device)
        arg = torch.zeros(len(cand), dtype=torch.long, device=cand.device)
        gt_boxes = torch.zeros(1, 4, device=cand.device)
        gt_labels = torch.full((1,), -1, dtype=torch.long, device=cand.device)
    else:
        max_iou, arg = box_iou(cand, gt_boxes).max(dim=1)
    fg = max_iou >= fg_thresh
    bg = (max_iou < bg_range[1]) & (max_iou >= bg_range[0])
    n_fg = min(int(round(fg_fraction * num)), int(fg.sum()))
    n_bg = min(num - n_fg, int(bg.sum()))
    r = torch.rand(len(cand), generator=generator, device="cpu").to(cand.device)
    # a random permutation of each set: sort random keys, members first (keys in [0,1), others 2)
    fg_idx = torch.argsort(torch.where(fg, r, 2.0))[:n_fg]
    bg_idx = torch.argsort(torch.where(bg, r, 2.0))[:n_bg]
    keep = torch.cat([fg_idx, bg_idx])
    labels = torch.cat([gt_labels[arg[fg_idx]] + 1, torch.zeros(n_bg, dtype=torch.long, device=cand.device)])
    return cand[keep], labels, gt_boxes[arg[keep]]


# ----------------------------------------------------------------------------------------- model
class FastRCNN(nn.Module):
    """encoder: an `AlexNetEncoder` (conv5 used); num_classes: C object classes (+1 background)."""

    def __init__(self, encoder: nn.Module, num_classes: int, *, fc_dim: int = 4096, roi_size: int = 6,
                 dropout: float = 0.5, layer: str = "conv5"):
        super().__init__()
        self.encoder = encoder
        self.num_classes = num_classes
        self.layer = layer
        self.roi_size = roi_size
        self.spatial_scale = 1.0 / float(encoder.feature_stride(layer))
        channels = _layer_channels(encoder, layer)
        self.head = nn.Sequential(  # fc6, fc7 (new layers: the paper's encoders end at pool5)
            nn.Flatten(), nn.Linear(channels * roi_size * roi_size, fc_dim), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(fc_dim, fc_dim), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.cls_score = nn.Linear(fc_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(fc_dim, 4 * (num_classes + 1))
        for m in self.head:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.005)
                nn.init.constant_(m.bias, 0.1)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)
        self.register_buffer("target_mean", torch.zeros(4))
        self.register_buffer("target_std", torch.ones(4))

    def set_target_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.target_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.target_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp(min=1e-6))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.encoder.forward_intermediates(images, layers=(self.layer,))[self.layer]  # [B, C5, h, w]
        return F.relu(feats)

    def forward(self, images: torch.Tensor, rois: torch.Tensor):
        """images [B,3,H,W] (normalised); rois [R,5] (batch index, x1, y1, x2, y2) in input pixels.
        Returns class logits [R, C+1] and normalised box deltas [R, 4(C+1)]."""
        # RoI pooling in fp32 (boxes stay exact; under bf16 autocast the conv map is bf16 and torchvision's CPU
        # kernel wants one dtype): [B,C5,h,w] -> [R,C5,6,6]; the fc head runs under the autocast again
        feats = self.features(images)
        pooled = roi_pool(feats.float(), rois.to(torch.float32), (self.roi_size, self.roi_size), self.spatial_scale)
        h = self.head(pooled)
        return self.cls_score(h), self.bbox_pred(h)

    def loss(self, logits, deltas, labels, rois, gt_boxes, bbox_weight: float = 1.0) -> dict:
        """Multi-task loss: softmax cross-entropy + smooth L1 on the true class's deltas of foreground RoIs
        (averaged over all RoIs, as Fast R-CNN)."""
        loss_cls = F.cross_entropy(logits, labels)
        targets = (encode_boxes(rois, gt_boxes) - self.target_mean) / self.target_std  # [R,4]
        idx = labels[:, None] * 4 + torch.arange(4, device=labels.device)  # [R,4]
        pred = deltas.gather(1, idx)
        fg = (labels > 0).float()[:, None]
        loss_box = (F.smooth_l1_loss(pred, targets, reduction="none", beta=1.0) * fg).sum() / max(len(labels), 1)
        return {"cls": loss_cls, "box": loss_box, "total": loss_cls + bbox_weight * loss_box}

    @torch.no_grad()
    def detect(self, images: torch.Tensor, proposals: list, image_sizes: list, *, score_thresh: float = 0.05,
               nms_thresh: float = 0.3, max_per_image: int = 100):
        """Test-time detection for a batch. proposals: list of [P_i,4]; image_sizes: list of (h, w) of the
        valid (unpadded) image area. Returns, per image, dict(boxes [K,4], scores [K], labels [K] 0..C-1)."""
        counts = [len(p) for p in proposals]
        rois = _rois_with_index(proposals, images.device)
        logits, deltas = self(images, rois)
        logits, deltas = logits.float(), deltas.float()  # post-processing in fp32 (the forward may run in bf16)
        probs = logits.softmax(1)[:, 1:]  # [R, C]
        C = self.num_classes
        deltas = deltas.view(-1, C + 1, 4)[:, 1:] * self.target_std + self.target_mean  # [R, C, 4]
        boxes = decode_boxes(rois[:, 1:], deltas.reshape(-1, 4 * C)).view(-1, C, 4)
        img = torch.repeat_interleave(torch.arange(len(counts), device=images.device),
                                      torch.tensor(counts, device=images.device))  # [R]
        sizes = torch.tensor(image_sizes, dtype=boxes.dtype, device=boxes.device)[img]  # [R,2] (h, w)
        lo = torch.zeros_like(boxes)
        hi = torch.stack([sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]], 1)[:, None, :].expand_as(boxes)
        boxes = torch.minimum(torch.maximum(boxes, lo), hi)  # clipped to each image
        cls = torch.arange(C, device=boxes.device).expand(len(boxes), C)
        img_rc = img[:, None].expand(-1, C)
        keep = probs > score_thresh
        b, s, c, i = boxes[keep], probs[keep], cls[keep], img_rc[keep]
        nonempty = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        b, s, c, i = b[nonempty], s[nonempty], c[nonempty], i[nonempty]
        k = batched_nms(b, s, i * C + c, nms_thresh)  # class-wise and image-wise NMS in one call
        b, s, c, i = b[k], s[k], c[k], i[k]
        # top `max_per_image` per image: k is sorted by score, so rank within image by a stable sort on i
        order = torch.argsort(i, stable=True)
        b, s, c, i = b[order], s[order], c[order], i[order]
        starts = torch.cumsum(torch.bincount(i, minlength=len(counts)), 0) - torch.bincount(i, minlength=len(counts))
        rank = torch.arange(len(i), device=i.device) - starts[i]
        sel = rank < max_per_image
        b, s, c, i = b[sel], s[sel], c[sel], i[sel]
        return [dict(boxes=b[i == n], scores=s[i == n], labels=c[i == n]) for n in range(len(counts))]


def _rois_with_index(boxes_list, device) -> torch.Tensor:
    """list of [N_i,4] -> [sum N_i, 5] with the batch index first (roi_pool's format)."""
    counts = torch.tensor([len(b) for b in boxes_list], device=device)
    idx = torch.repeat_interleave(torch.arange(len(boxes_list), device=device), counts).to(torch.float32)
    boxes = torch.cat([torch.as_tensor(b, dtype=torch.float32, device=device).reshape(-1, 4) for b in boxes_list], 0)
    return torch.cat([idx[:, None], boxes], 1)


def _layer_channels(encoder: nn.Module, layer: str) -> int:
    with torch.no_grad():  # probe once
        was = encoder.training
        encoder.eval()
        size = int(getattr(getattr(encoder, "cfg", None), "input_size", 64))
        out = encoder.forward_intermediates(torch.zeros(1, 3, size, size), layers=(layer,))[layer]
        encoder.train(was)
    return int(out.shape[1])


__all__ = ["FastRCNN", "encode_boxes", "decode_boxes", "sample_rois"]
