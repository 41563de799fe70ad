"""What the self-supervised pretext methods share (context prediction, rotation, jigsaw, colorization).

- `PretextSchedule`: the fields every method's config section has beside its own settings: its batch, steps,
  input colour and optimiser, each 0 / "" by default, meaning "the pretrain section's" (the context
  encoder's), so at CPU scale every row sees the same images for the same steps. The paper configs set
  each method's published values (`schedule_overrides`, `make_optimizer`, `lr_steps`).
- `MLP`: the fully connected head of a pretext net (Linear, BatchNorm1d, ReLU, Dropout per hidden layer).
- `crop_patches`: many square patches of a batch in one gather, each colour channel at its own offset if
  asked (the chromatic-aberration jitter); `standardize`: per-patch zero mean, unit RMS.
- `pool5_flat`: the encoder's pool5, flattened.

A pretext objective is an nn.Module with `.net` (whose state dict holds `encoder.*`, the AlexNetEncoder the
transfer tasks load), `forward(x01, mask, labels) -> (losses by name, outputs)` like `objectives.py`, and
`arch_extra()` (what the checkpoint's `arch` carries beside the encoder).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .engine import make_adam
from .models import AlexNetEncoder

OPTIMIZERS = ("", "adam", "sgd")


@dataclass
class PretextSchedule:
    """How a pretext method trains. Zero / empty values take the pretrain section's (the CE's) value."""

    batch_size: int = 0          # images per step (0: pretrain.batch_size)
    steps: int = 0               # optimiser steps (0: pretrain.steps)
    colour: str = ""             # rgb | permute | gray ("": pretrain.colour)
    load_size: int = 0           # short side before the random crop (0: pretrain.load_size)
    optimizer: str = ""          # "": pretrain's Adam (lr, beta1, weight_decay, lr_schedule) | adam | sgd
    lr: float = 0.0              # with optimizer set (0: pretrain.lr)
    momentum: float = 0.9        # sgd momentum, adam beta1
    nesterov: bool = False       # sgd
    weight_decay: float = 0.0    # with optimizer set
    lr_milestones: tuple[float, ...] = ()   # fractions of the steps at which the lr drops ...
    lr_multipliers: tuple[float, ...] = ()  # ... to these multiples of lr (piecewise constant; with optimizer set)


def check_schedule(s: PretextSchedule, where: str) -> None:
    """ValueError naming the key for a schedule that cannot run."""
    if s.optimizer not in OPTIMIZERS:
        raise ValueError(f"{where}.optimizer must be one of adam, sgd or empty, got {s.optimizer!r}")
    if min(s.batch_size, s.steps, s.load_size, s.lr, s.weight_decay) < 0:
        raise ValueError(f"{where}: batch_size, steps, load_size, lr and weight_decay must be >= 0")
    if len(s.lr_milestones) != len(s.lr_multipliers):
        raise ValueError(f"{where}: lr_milestones {list(s.lr_milestones)} and lr_multipliers "
                         f"{list(s.lr_multipliers)} need the same length")
    if list(s.lr_milestones) != sorted(s.lr_milestones) or any(not 0 < m < 1 for m in s.lr_milestones):
        raise ValueError(f"{where}.lr_milestones must be increasing fractions in (0, 1), got {list(s.lr_milestones)}")
    if s.lr_milestones and not s.optimizer:
        raise ValueError(f"{where}.lr_milestones needs {where}.optimizer (adam or sgd)")


def schedule_overrides(s: PretextSchedule) -> dict:
    """The pretrain keys this method replaces (what `methods.method_config` applies before training)."""
    out = {}
    if s.batch_size:
        out["batch_size"] = s.batch_size
    if s.steps:
        out["steps"] = s.steps
    if s.colour:
        out["colour"] = s.colour
    if s.load_size:
        out["load_size"] = s.load_size
    if s.optimizer:
        out["lr"] = s.lr or None  # None: keep pretrain.lr
        out["weight_decay"] = s.weight_decay
        out["lr_schedule"] = "constant"  # the milestones (lr_steps) replace it
    return {k: v for k, v in out.items() if v is not None}


def make_optimizer(s: PretextSchedule):
    """params, lr -> optimizer for `optimizer` adam / sgd; None for "" (the trainer's Adam)."""
    if not s.optimizer:
        return None
    if s.optimizer == "adam":
        return lambda params, lr: make_adam(params, lr, s.momentum, s.weight_decay)
    return lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=s.momentum, nesterov=s.nesterov,
                                              weight_decay=s.weight_decay)


def lr_steps(s: PretextSchedule, total: int):
    """step -> multiple of the base lr (piecewise constant at the milestones), or None without milestones.
    A pure function of the step, like the trainer's schedules, so a resumed run sets the same rates."""
    if not s.lr_milestones:
        return None
    bounds = [round(m * total) for m in s.lr_milestones]
    mults = [1.0, *s.lr_multipliers]

    def scale(step: int) -> float:
        return mults[sum(step >= b for b in bounds)]
    return scale


def hidden_layer(in_features: int, width: int, dropout: float = 0.0) -> list[nn.Module]:
    """One hidden fully connected layer of a pretext head: Linear (no bias: BatchNorm follows), BatchNorm1d,
    ReLU, and Dropout when `dropout` > 0 (the fc6 of a tower, each hidden layer of `MLP`)."""
    layers: list[nn.Module] = [nn.Linear(in_features, width, bias=False), nn.BatchNorm1d(width),
                               nn.ReLU(inplace=True)]
    return layers + [nn.Dropout(dropout)] if dropout > 0 else layers


class MLP(nn.Module):
    """[N, in] -> [N, widths[-1]]: a `hidden_layer` for each hidden width, then a plain Linear to the last
    width (the logits)."""

    def __init__(self, in_features: int, widths, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        for w in widths[:-1]:
            layers += hidden_layer(in_features, w, dropout)
            in_features = w
        layers.append(nn.Linear(in_features, widths[-1]))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def pool5_size(encoder: AlexNetEncoder, size: int) -> int:
    """Flattened pool5 length for a `size` x `size` input (ValueError when the input is too small)."""
    was = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            out = encoder.forward_features(torch.zeros(1, 3, size, size))
    except RuntimeError:
        raise ValueError(f"a {size} px input is too small for the encoder (pool5 would be empty)") from None
    finally:
        encoder.train(was)
    return int(out.numel())


def pool5_flat(encoder: AlexNetEncoder, x: Tensor) -> Tensor:
    """[N, 3, s, s] -> [N, C5 * n * n]."""
    return encoder.forward_features(x).flatten(1)


def crop_patches(x: Tensor, y0: Tensor, x0: Tensor, size: int) -> Tensor:
    """Square patches of a batch in one gather.

    x: [B, C, H, W]; y0, x0: top-left corners, int64 [B, K] (one offset per patch) or [B, K, C] (one per
    colour channel: the chromatic-aberration jitter). Returns [B, K, C, size, size]:
    out[b, k, c, i, j] = x[b, c, y0[b, k(, c)] + i, x0[b, k(, c)] + j]. Corners must keep the patch inside."""
    b, c, h, w = x.shape
    if y0.dim() == 2:
        y0, x0 = y0[..., None].expand(-1, -1, c), x0[..., None].expand(-1, -1, c)
    ar = torch.arange(size, device=x.device)
    rows = (y0[..., None] + ar)[..., :, None]  # [B, K, C, size, 1]
    cols = (x0[..., None] + ar)[..., None, :]  # [B, K, C, 1, size]
    bi = torch.arange(b, device=x.device).view(b, 1, 1, 1, 1)
    ci = torch.arange(c, device=x.device).view(1, 1, c, 1, 1)
    return x[bi, ci, rows, cols]


def standardize(p: Tensor, eps: float = 1e-3) -> Tensor:
    """Each patch ([..., C, s, s]) to zero mean and unit RMS over its pixels and channels (low-level
    statistics, brightness and contrast, stop being a cue: Noroozi and Favaro, Doersch et al.)."""
    p = p - p.mean(dim=(-3, -2, -1), keepdim=True)
    return p / p.pow(2).mean(dim=(-3, -2, -1), keepdim=True).add(eps * eps).sqrt()


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Share of argmax hits (a detached scalar, logged beside the loss)."""
    return (logits.detach().argmax(1) == labels).float().mean()


__all__ = ["PretextSchedule", "check_schedule", "schedule_overrides", "make_optimizer", "lr_steps", "MLP",
           "pool5_size", "pool5_flat", "crop_patches", "standardize", "accuracy", "OPTIMIZERS"]
