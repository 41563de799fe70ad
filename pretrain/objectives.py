"""Training objectives: modules whose forward returns the loss terms by name.

Each objective takes images in [0, 1] ([B,3,S,S]) and a mask ([B,1,S,S], 1 = missing, or None),
converts them to its network's input range and returns `(losses, outputs)`:
`losses` a dict of named scalar tensors (always with "loss", the total to minimise by the generator),
`outputs` the tensors the trainer needs ("pred": a displayable [0,1] image of the prediction,
"fake"/"real": the predicted region and the real one, in the discriminator's range).
DDP wraps the objective, so its forward is the whole generator step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cebench.images import IMAGENET_MEAN, denormalize, normalize

from .losses import multilabel_bce, overlap_weights, patch_standardize, weighted_l2
from .masks import center_box
from .models import ContextEncoder, InpaintingCE, SupervisedNet


class ReconstructionObjective(nn.Module):
    """Feature-learning context encoder (method ce / ce-adv) and autoencoder (ae: mask None).

    region: "masked" (paper: L2 over the hole + overlap band) or "all" (released code: whole image).
    target_patch: 0 (paper: the target is the image) or p > 0: the target is the image with every
    p x p patch standardised (MAE's normalised-pixel loss): the brightness and contrast of a patch are
    free, so the L2 is paid on edges and texture instead of on the low-frequency fill that a blurry
    code already gets right. The displayed prediction is mapped back with the true patch statistics."""

    def __init__(self, net: ContextEncoder, region: str = "masked", overlap: int = 4, overlap_weight: float = 10.0,
                 target_patch: int = 0):
        super().__init__()
        if region not in ("masked", "all"):
            raise ValueError(f"region must be 'masked' or 'all', got {region!r}")
        self.check_target_patch(target_patch, net.encoder.cfg.input_size)
        self.net, self.region, self.overlap, self.overlap_weight = net, region, overlap, overlap_weight
        self.target_patch = target_patch

    @staticmethod
    def check_target_patch(target_patch: int, input_size: int) -> None:
        """ValueError unless target_patch is 0 or a divisor of the input size (the patches tile the image)."""
        if target_patch < 0 or (target_patch and input_size % target_patch):
            raise ValueError(f"target_patch={target_patch} must be 0 or divide the input size {input_size}")

    def forward(self, x01: Tensor, mask: Tensor | None = None, labels: Tensor | None = None):
        x = normalize(x01)
        pred = self.net(x, mask)  # [B,3,S,S] normalised (patch-standardised with target_patch)
        weights = None
        if mask is not None and self.region == "masked":
            weights = overlap_weights(mask, self.overlap, self.overlap_weight)
        if self.target_patch:
            target, mean, std = patch_standardize(x, self.target_patch)
            rec = weighted_l2(pred, target, weights)
            pred = pred * std + mean  # back to image space for the samples and the adversary
        else:
            rec = weighted_l2(pred, x, weights)
        comp = pred if mask is None else pred * mask + x * (1 - mask)
        out = {"pred": denormalize(comp.detach()).clamp(0, 1), "fake": comp, "real": x}
        return {"loss": rec, "rec": rec}, out


class InpaintObjective(nn.Module):
    """The inpainting context encoder: the centre square (side S/2, 1/4 of the area) is erased and
    filled with the dataset mean; the net predicts that square in [-1, 1]; L2 weight 1 inside it and
    `overlap_weight` on its outer `overlap`-px ring (the seam). The official code instead erases
    only the inner (S/2 - 2*overlap) square and weights the visible ring; we erase the whole
    quarter so that training and the Table 1 hole agree (stated departure)."""

    def __init__(self, net: InpaintingCE, overlap: int = 4, overlap_weight: float = 10.0):
        super().__init__()
        self.net, self.overlap, self.overlap_weight = net, overlap, overlap_weight
        fill = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 2 - 1
        self.register_buffer("fill", fill, persistent=False)

    def region(self, size: int) -> tuple[int, int]:
        return center_box(size, 0.5)

    def ring_weights(self, side: int, device) -> Tensor:
        w = torch.full((1, 1, side, side), self.overlap_weight, device=device)
        o = self.overlap
        if o > 0 and side > 2 * o:
            w[:, :, o:side - o, o:side - o] = 1.0
        elif o <= 0:
            w.fill_(1.0)
        return w

    def predict(self, x01: Tensor) -> Tensor:
        """[B,3,S,S] in [0,1] -> centre prediction [B,3,S/2,S/2] in [0,1] (the hole is ignored)."""
        x = x01 * 2 - 1
        lo, side = self.region(x.shape[-1])
        x = x.clone()
        x[:, :, lo:lo + side, lo:lo + side] = self.fill.to(x.dtype)
        return (self.net(x) + 1) / 2

    def forward(self, x01: Tensor, mask: Tensor | None = None, labels: Tensor | None = None):
        x = x01 * 2 - 1
        lo, side = self.region(x.shape[-1])
        real = x[:, :, lo:lo + side, lo:lo + side]
        x_in = x.clone()
        x_in[:, :, lo:lo + side, lo:lo + side] = self.fill.to(x.dtype)
        fake = self.net(x_in)  # [B,3,S/2,S/2]
        rec = weighted_l2(fake, real, self.ring_weights(side, x.device).expand_as(fake[:, :1]))
        comp = x.clone().detach()
        comp[:, :, lo:lo + side, lo:lo + side] = fake.detach()
        out = {"pred": ((comp + 1) / 2).clamp(0, 1), "fake": fake, "real": real}
        return {"loss": rec, "rec": rec}, out


class SupervisedObjective(nn.Module):
    """The supervised upper bound: multi-label BCE on a VOC split's labels ([B, C] in {1, 0, -1}), or
    softmax cross-entropy on one class index per image ([B] int64: an image folder's labels, e.g. Tiny
    ImageNet's ImageNet classes). The labels' type says which; the loss is returned under its own name."""

    def __init__(self, net: SupervisedNet):
        super().__init__()
        self.net = net

    def forward(self, x01: Tensor, mask: Tensor | None = None, labels: Tensor | None = None):
        logits = self.net(normalize(x01))  # [B, C]
        out = {"pred": x01.detach(), "logits": logits.detach()}
        if labels.dim() == 1:  # [B] class indices
            xent = F.cross_entropy(logits.float(), labels)
            return {"loss": xent, "xent": xent}, out
        bce = multilabel_bce(logits, labels)
        return {"loss": bce, "bce": bce}, out
