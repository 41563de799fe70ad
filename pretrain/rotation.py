"""Rotation prediction (Gidaris, Singh and Komodakis, ICLR 2018): which of 0, 90, 180, 270 degrees an
image was turned by, a 4-way classification. All four rotations of every image are in the same batch
(the paper's finding: better than one random rotation per image).

Pretext data: `rotate_all(x)` turns a batch [B,3,S,S] into [4B,3,S,S], rotation-major: rows k*B..(k+1)*B-1
are the images turned by k * 90 degrees counter-clockwise (`torch.rot90(x, k, dims=(2, 3))`), label k.
Network: the shared AlexNet encoder (conv1..pool5), then fc6, fc7 (BatchNorm, ReLU) and a 4-way fc8, as the
authors' AlexNet (their fc block: 4096-4096 with BatchNorm).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cebench.images import normalize

from .models import AlexNetConfig, AlexNetEncoder
from .pretext import MLP, PretextSchedule, accuracy, check_schedule, pool5_flat, pool5_size

ROTATIONS = 4


@dataclass
class RotationConfig(PretextSchedule):
    """`pretrain.rotation`: the defaults are the CPU demo's; the paper's in configs/paper.yaml."""

    input_size: int = 0           # image side the net sees (0: the encoder's input size; paper 224)
    fc_dim: int = 256             # fc6 / fc7 width (paper 4096)
    dropout: float = 0.0          # after fc6 and fc7 (the authors use none: BatchNorm only)


def rotate_all(x: Tensor) -> tuple[Tensor, Tensor]:
    """[B,C,S,S] -> ([4B,C,S,S] rotation-major, labels int64 [4B]: k for a k * 90 degree turn)."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation needs square images, got {tuple(x.shape[-2:])}")
    b = x.shape[0]
    out = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(ROTATIONS)])
    labels = torch.arange(ROTATIONS, device=x.device).repeat_interleave(b)
    return out, labels


class RotationNet(nn.Module):
    """encoder -> pool5 -> fc6 -> fc7 -> 4 logits ([N,3,S,S] normalised -> [N,4])."""

    def __init__(self, encoder_cfg: AlexNetConfig, cfg: RotationConfig, input_size: int):
        super().__init__()
        self.encoder = AlexNetEncoder(encoder_cfg)
        self.head = MLP(pool5_size(self.encoder, input_size), (cfg.fc_dim, cfg.fc_dim, ROTATIONS), cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(pool5_flat(self.encoder, x))


class RotationObjective(nn.Module):
    """Cross-entropy over the four rotations of each image; losses "loss" (= "xent") and "acc"."""

    def __init__(self, net: RotationNet):
        super().__init__()
        self.net = net

    def forward(self, x01: Tensor, mask: Tensor | None = None, labels: Tensor | None = None):
        x, target = rotate_all(normalize(x01))      # [4B,3,S,S], [4B]
        logits = self.net(x)                        # [4B, 4]
        xent = F.cross_entropy(logits.float(), target)
        return {"loss": xent, "xent": xent, "acc": accuracy(logits, target)}, {"pred": x01.detach()}

    def arch_extra(self) -> dict:
        return {}


def input_size(encoder_cfg: AlexNetConfig, cfg: RotationConfig) -> int:
    return cfg.input_size or encoder_cfg.input_size


def check(encoder_cfg: AlexNetConfig, cfg: RotationConfig, where: str = "pretrain.rotation") -> None:
    check_schedule(cfg, where)
    if cfg.input_size < 0 or cfg.fc_dim < 1 or not 0 <= cfg.dropout < 1:
        raise ValueError(f"{where}: input_size >= 0, fc_dim >= 1 and dropout in [0, 1) needed")


def build(encoder_cfg: AlexNetConfig, cfg: RotationConfig, seed: int = 0) -> RotationObjective:
    return RotationObjective(RotationNet(encoder_cfg, cfg, input_size(encoder_cfg, cfg)))


# the module protocol (docs/methods.md): its settings, the pretrain section that holds them
CONFIG = RotationConfig
SECTION = "rotation"

__all__ = ["CONFIG", "SECTION",
           "RotationConfig", "RotationNet", "RotationObjective", "rotate_all", "build", "check", "input_size",
           "ROTATIONS"]
