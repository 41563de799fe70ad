"""Context prediction (Doersch, Gupta and Efros, ICCV 2015): where a patch sits relative to the centre
patch of a 3x3 grid, 8 classes; a two-tower network with shared weights.

Pretext data (`sample_grid`, `make_pairs`), on a batch of D x D crops, D = 3 * patch + 2 * gap + 2 * jitter:
the grid's cells are patch_size apart by `gap` px (no shared edge to continue); every patch moves by up
to `jitter` px in x and y on its own (no exact alignment to read off). Positions are row-major, the centre
left out: label 0 1 2 / 3 . 4 / 5 6 7 (the authors' 1-8 minus one). Each image gives `pairs` pairs
(centre, neighbour k) with label k, the neighbours drawn without replacement (8: all of them).

The remedy for chromatic aberration (`aberration`): "drop" (the authors' released code: every patch keeps
one random colour channel, mean-subtracted, the other two become uniform noise of +-0.5 grey levels),
"projection" (the paper's other remedy: the green-magenta component of every pixel is projected out),
or "none". Each patch is then standardised (zero mean, unit RMS), as the released code does.

Network: both patches through the shared encoder, pool5 -> fc6 (fc_dim) per patch, the pair's two fc6
concatenated (centre first) -> fc7 (fc_dim) -> fc8 over the 8 positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .models import AlexNetConfig, AlexNetEncoder
from .pretext import MLP, PretextSchedule, accuracy, check_schedule, crop_patches, hidden_layer, pool5_size, standardize

# grid cell (row, col) of each label; the centre (1, 1) is the reference patch
NEIGHBOURS = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2))
CENTRE = (1, 1)
ABERRATIONS = ("drop", "projection", "none")
_GREEN_MAGENTA = (-1.0, 2.0, -1.0)  # the axis the projection removes (normalised below)


@dataclass
class ContextPredictionConfig(PretextSchedule):
    """`pretrain.context_prediction`: the defaults are the CPU demo's (64 px images); the paper's in
    configs/paper.yaml (96 px patches, 48 px gap, 7 px jitter)."""

    patch_size: int = 14          # paper 96
    gap: int = 7                  # px between neighbouring cells (paper 48)
    jitter: int = 2               # px each patch moves in x and y (paper 7)
    pairs: int = 8                # pairs per image, (centre, neighbour): 8 = every neighbour
    aberration: str = "drop"      # drop (released code) | projection (paper) | none
    fc_dim: int = 256             # fc6 per patch and fc7 (paper 4096)
    dropout: float = 0.0


def crop_size(cfg: ContextPredictionConfig) -> int:
    """D: the crop that holds the grid with its jitter margin."""
    return 3 * cfg.patch_size + 2 * cfg.gap + 2 * cfg.jitter


def sample_grid(batch: int, cfg: ContextPredictionConfig, device, generator=None) -> tuple[Tensor, Tensor, Tensor]:
    """(top-left corners y, x of the centre then the chosen neighbours: int64 [B, 1 + pairs] each,
    labels int64 [B, pairs]: the neighbour's position in NEIGHBOURS)."""
    step = cfg.patch_size + cfg.gap
    labels = torch.rand(batch, len(NEIGHBOURS), device=device, generator=generator).argsort(1)[:, :cfg.pairs]
    cells = torch.tensor((CENTRE, *NEIGHBOURS), device=device)  # [9, 2] (row, col)
    chosen = torch.cat([torch.zeros(batch, 1, dtype=torch.long, device=device), labels + 1], 1)  # [B, 1 + pairs]
    rc = cells[chosen]                                                      # [B, 1 + pairs, 2]
    jit = torch.randint(-cfg.jitter, cfg.jitter + 1, rc.shape, device=device, generator=generator)
    corners = cfg.jitter + rc * step + jit
    return corners[..., 0], corners[..., 1], labels


def remove_aberration(p: Tensor, kind: str, generator=None) -> Tensor:
    """Patches [..., 3, s, s] in [0, 1] with the colour cue of chromatic aberration taken away (see the
    module docstring)."""
    if kind == "none":
        return p
    if kind == "projection":
        a = torch.tensor(_GREEN_MAGENTA, device=p.device, dtype=p.dtype)
        a = a / a.norm()
        along = torch.einsum("...chw,c->...hw", p, a)  # the green-magenta component of each pixel
        return p - along[..., None, :, :] * a.view(3, 1, 1)
    keep = torch.randint(0, 3, p.shape[:-3], device=p.device, generator=generator)  # one channel per patch
    kept = p - p.mean(dim=(-2, -1), keepdim=True)
    noise = (torch.rand(p.shape, device=p.device, generator=generator, dtype=p.dtype) - 0.5) / 255.0
    is_kept = torch.arange(3, device=p.device).view(*([1] * (p.dim() - 3)), 3) == keep[..., None]
    return torch.where(is_kept[..., None, None], kept, noise)


def make_pairs(x: Tensor, cfg: ContextPredictionConfig, generator=None):
    """[B,3,D,D] in [0,1] -> (patches [B, 1 + pairs, 3, s, s] standardised (centre first), labels [B, pairs],
    corners (y, x) [B, 1 + pairs])."""
    d = crop_size(cfg)
    if x.shape[-1] != d or x.shape[-2] != d:
        raise ValueError(f"context prediction expects {d} px crops, got {tuple(x.shape[-2:])}")
    ys, xs, labels = sample_grid(x.shape[0], cfg, x.device, generator)
    p = crop_patches(x, ys, xs, cfg.patch_size)
    return standardize(remove_aberration(p, cfg.aberration, generator)), labels, (ys, xs)


def highlight(x01: Tensor, ys: Tensor, xs: Tensor, size: int) -> Tensor:
    """The image with everything but the centre and the first neighbour patch dimmed (sample grids)."""
    r = torch.arange(x01.shape[-1], device=x01.device)
    inside_y = (r >= ys[:, :2, None]) & (r < ys[:, :2, None] + size)   # [B, 2, D]
    inside_x = (r >= xs[:, :2, None]) & (r < xs[:, :2, None] + size)
    m = (inside_y[..., :, None] & inside_x[..., None, :]).any(1)       # [B, D, D]
    return x01 * (0.3 + 0.7 * m[:, None].to(x01.dtype))


class ContextPredictionNet(nn.Module):
    """Two towers with shared weights: patches [B, 1 + K, 3, s, s] -> logits [B, K, 8] for the pairs
    (patch 0, patch k)."""

    def __init__(self, encoder_cfg: AlexNetConfig, cfg: ContextPredictionConfig):
        super().__init__()
        self.encoder = AlexNetEncoder(encoder_cfg)
        feat = pool5_size(self.encoder, cfg.patch_size)
        self.fc6 = nn.Sequential(*hidden_layer(feat, cfg.fc_dim, cfg.dropout))
        self.head = MLP(2 * cfg.fc_dim, (cfg.fc_dim, len(NEIGHBOURS)), cfg.dropout)

    def forward(self, patches: Tensor) -> Tensor:
        b, n = patches.shape[:2]
        f = self.encoder.forward_features(patches.flatten(0, 1))   # [B(1+K), C5, m, m]
        f = self.fc6(f.flatten(1)).view(b, n, -1)                  # [B, 1+K, fc_dim]
        centre = f[:, :1].expand(-1, n - 1, -1)                    # [B, K, fc_dim]
        pair = torch.cat([centre, f[:, 1:]], -1)                   # [B, K, 2 fc_dim]
        return self.head(pair.flatten(0, 1)).view(b, n - 1, -1)    # [B, K, 8]


class ContextPredictionObjective(nn.Module):
    """Cross-entropy over the 8 relative positions; losses "loss" (= "xent") and "acc"."""

    def __init__(self, net: ContextPredictionNet, cfg: ContextPredictionConfig):
        super().__init__()
        self.net, self.cfg = net, cfg

    def forward(self, x01: Tensor, mask: Tensor | None = None, labels: Tensor | None = None):
        patches, target, (ys, xs) = make_pairs(x01.float(), self.cfg)
        logits = self.net(patches).flatten(0, 1)  # [B K, 8]
        target = target.flatten()
        xent = F.cross_entropy(logits.float(), target)
        pred = highlight(x01.detach(), ys, xs, self.cfg.patch_size)
        return {"loss": xent, "xent": xent, "acc": accuracy(logits, target)}, {"pred": pred}

    def arch_extra(self) -> dict:
        return {}


def input_size(encoder_cfg: AlexNetConfig, cfg: ContextPredictionConfig) -> int:
    return crop_size(cfg)


def check(encoder_cfg: AlexNetConfig, cfg: ContextPredictionConfig, where: str = "pretrain.context_prediction"):
    check_schedule(cfg, where)
    if cfg.patch_size < 1 or cfg.jitter < 0 or 2 * cfg.jitter > cfg.gap:
        raise ValueError(f"{where}: patch_size >= 1 and 0 <= 2 * jitter <= gap needed (neighbours never overlap), "
                         f"got patch_size={cfg.patch_size}, gap={cfg.gap}, jitter={cfg.jitter}")
    if not 1 <= cfg.pairs <= len(NEIGHBOURS):
        raise ValueError(f"{where}.pairs must be in [1, 8], got {cfg.pairs}")
    if cfg.aberration not in ABERRATIONS:
        raise ValueError(f"{where}.aberration must be one of {', '.join(ABERRATIONS)}, got {cfg.aberration!r}")
    if cfg.fc_dim < 1 or not 0 <= cfg.dropout < 1:
        raise ValueError(f"{where}: fc_dim >= 1 and dropout in [0, 1) needed")


def build(encoder_cfg: AlexNetConfig, cfg: ContextPredictionConfig, seed: int = 0) -> ContextPredictionObjective:
    return ContextPredictionObjective(ContextPredictionNet(encoder_cfg, cfg), cfg)


# the module protocol (docs/methods.md): its settings, the pretrain section that holds them
CONFIG = ContextPredictionConfig
SECTION = "context_prediction"

__all__ = ["CONFIG", "SECTION",
           "ContextPredictionConfig", "ContextPredictionNet", "ContextPredictionObjective", "NEIGHBOURS", "CENTRE",
           "sample_grid", "make_pairs", "remove_aberration", "crop_size", "build", "check", "input_size"]
