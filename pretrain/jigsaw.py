"""Jigsaw puzzles (Noroozi and Favaro, ECCV 2016): which of a fixed set of permutations shuffled the nine
tiles of a 3x3 grid; a 9-tower network with shared weights (the context-free network, CFN).

Pretext data (`make_puzzles`), on a batch of G x G crops ([B,3,G,G], G = grid_size): the grid's nine
cells are G/3 px; in each cell a tile_size x tile_size tile at a random offset (the gaps between tiles
stop edge continuity from being a cue), each colour channel shifted by up to `channel_jitter` px on its own
(chromatic aberration stops being a cue), each tile standardised on its own (mean and contrast stop being
a cue). A label l draws permutation P = perms[l]: position i of the puzzle shows tile P[i] of the image
(cells in row-major order), so the tiles land where the permutation says.

The permutation set (`max_hamming_permutations`): greedy maximal Hamming distance, the paper's Algorithm 1
read as farthest-point selection: the first of the 9! permutations at random (seeded), then each next one
the permutation with the largest minimum Hamming distance to the ones chosen so far, ties broken by the
largest summed distance, then by lexicographic order. (Taking the argmax of the summed distance alone, as
Algorithm 1's pseudo-code prints it, gave a 100-permutation set with pairs 2 apart and a mean distance of
8.08, a random set's is 8.01; farthest-point selection keeps every pair of the set far apart, see
docs/methods.md.) The set is written with the checkpoint: `arch["permutations"]` and the net's buffer.

Network: each tile through the shared encoder (conv1 stride `tile_conv1_stride`, 2 in the paper for its
64 px tiles; the transfer tasks use the encoder's own stride), pool5 -> fc6 (tile_dim) per tile, the nine
concatenated in puzzle order -> fc7 (fc_dim) -> fc8 over the permutations.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .models import AlexNetConfig, AlexNetEncoder
from .pretext import MLP, PretextSchedule, accuracy, check_schedule, crop_patches, hidden_layer, pool5_size, standardize

TILES = 9


@dataclass
class JigsawConfig(PretextSchedule):
    """`pretrain.jigsaw`: the defaults are the CPU demo's (64 px images); the paper's in configs/paper.yaml."""

    grid_size: int = 63           # side of the crop cut into 3x3 cells (paper 225: 75 px cells)
    tile_size: int = 18           # tile inside each cell (paper 64)
    permutations: int = 100       # classes (paper 1000; the authors' code ships a 100-permutation set too)
    permutation_seed: int = 0     # the first permutation of the greedy set
    channel_jitter: int = 1       # px each colour channel of a tile moves on its own (paper: 0-2)
    tile_conv1_stride: int = 0    # conv1 stride on the tiles (0: the encoder's; paper 2)
    tile_dim: int = 128           # fc6 per tile (paper 1024)
    fc_dim: int = 256             # fc7 (paper 4096)
    dropout: float = 0.0          # after fc6 and fc7 (paper 0.5)


def all_permutations(n: int = TILES) -> np.ndarray:
    """Every permutation of range(n) in lexicographic order, int8 [n!, n]."""
    return np.array(list(itertools.permutations(range(n))), dtype=np.int8)


def max_hamming_permutations(count: int, seed: int = 0, n: int = TILES) -> np.ndarray:
    """`count` permutations of range(n), greedy farthest-point by Hamming distance (the largest minimum
    distance to those chosen, then the largest summed distance; see the module docstring); int64 [count, n]."""
    cands = all_permutations(n)
    if not 1 <= count <= len(cands):
        raise ValueError(f"permutations must be in [1, {len(cands)}], got {count}")
    first = int(np.random.default_rng(seed).integers(len(cands)))
    chosen = [first]
    d = (cands != cands[first]).sum(1, dtype=np.int64)
    nearest, total = d.copy(), d.copy()  # min and summed Hamming distance to the chosen set
    for _ in range(count - 1):
        j = int((nearest * (n * count + 1) + total).argmax())  # max of the min, then of the sum (chosen: min 0)
        chosen.append(j)
        d = (cands != cands[j]).sum(1, dtype=np.int64)
        np.minimum(nearest, d, out=nearest)
        total += d
    return cands[chosen].astype(np.int64)


def tile_corners(batch: int, cfg: JigsawConfig, device, generator=None) -> tuple[Tensor, Tensor]:
    """Top-left corners [B, 9, 3] (y, x) of the tiles: cell origin + a random offset in
    [0, cell - tile] + a per-channel jitter in [-channel_jitter, channel_jitter], kept inside the crop."""
    cell, t, j = cfg.grid_size // 3, cfg.tile_size, cfg.channel_jitter
    origin = torch.arange(3, device=device) * cell
    oy, ox = origin.repeat_interleave(3), origin.repeat(3)  # [9] row-major cells

    def draw(o):
        base = o + torch.randint(0, cell - t + 1, (batch, TILES, 1), device=device, generator=generator)
        jit = torch.randint(-j, j + 1, (batch, TILES, 3), device=device, generator=generator) if j else 0
        return (base + jit).clamp(0, cfg.grid_size - t)
    return draw(oy[None, :, None]), draw(ox[None, :, None])


def shuffle_tiles(tiles: Tensor, perms: Tensor, labels: Tensor) -> Tensor:
    """tiles [B, 9, ...], perms int64 [P, 9], labels int64 [B] -> puzzles [B, 9, ...] with
    puzzle[b, i] = tiles[b, perms[labels[b], i]]."""
    order = perms[labels]  # [B, 9]
    idx = order.view(*order.shape, *([1] * (tiles.dim() - 2))).expand_as(tiles)
    return tiles.gather(1, idx)


def make_puzzles(x: Tensor, cfg: JigsawConfig, perms: Tensor, generator=None) -> tuple[Tensor, Tensor, Tensor]:
    """[B,3,G,G] in [0,1] -> (puzzles [B,9,3,T,T] standardised, labels [B], raw puzzles [B,9,3,T,T] in [0,1])."""
    b = x.shape[0]
    if x.shape[-1] != cfg.grid_size or x.shape[-2] != cfg.grid_size:
        raise ValueError(f"jigsaw expects {cfg.grid_size} px crops, got {tuple(x.shape[-2:])}")
    ys, xs = tile_corners(b, cfg, x.device, generator)
    tiles = crop_patches(x, ys, xs, cfg.tile_size)  # [B, 9, 3, T, T]
    labels = torch.randint(0, perms.shape[0], (b,), device=x.device, generator=generator)
    raw = shuffle_tiles(tiles, perms, labels)
    return standardize(raw), labels, raw


def mosaic(puzzles: Tensor, size: int) -> Tensor:
    """[B, 9, 3, T, T] -> [B, 3, size, size]: the tiles in their puzzle positions (grey border)."""
    b, _, c, t, _ = puzzles.shape
    grid = puzzles.view(b, 3, 3, c, t, t).permute(0, 3, 1, 4, 2, 5).reshape(b, c, 3 * t, 3 * t)
    pad = size - 3 * t
    return F.pad(grid, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), value=0.5)


@contextmanager
def conv1_stride(encoder: AlexNetEncoder, stride: int):
    """The encoder's conv1 at another stride (the same weights) inside the block."""
    if not stride:
        yield
        return
    old = encoder.conv1.stride
    encoder.conv1.stride = (stride, stride)
    try:
        yield
    finally:
        encoder.conv1.stride = old


class JigsawNet(nn.Module):
    """Nine towers with shared weights: [B,9,3,T,T] -> logits [B, permutations]."""

    def __init__(self, encoder_cfg: AlexNetConfig, cfg: JigsawConfig, perms: np.ndarray):
        super().__init__()
        self.encoder = AlexNetEncoder(encoder_cfg)
        self.stride = cfg.tile_conv1_stride
        self.register_buffer("perms", torch.as_tensor(perms, dtype=torch.int64))  # [P, 9], in the checkpoint
        with conv1_stride(self.encoder, self.stride):
            feat = pool5_size(self.encoder, cfg.tile_size)
        self.fc6 = nn.Sequential(*hidden_layer(feat, cfg.tile_dim, cfg.dropout))
        self.head = MLP(TILES * cfg.tile_dim, (cfg.fc_dim, len(perms)), cfg.dropout)

    def forward(self, puzzles: Tensor) -> Tensor:
        b = puzzles.shape[0]
        with conv1_stride(self.encoder, self.stride):
            f = self.encoder.forward_features(puzzles.flatten(0, 1))  # [9B, C5, n, n]
        f = self.fc6(f.flatten(1)).view(b, -1)                        # [B, 9 * tile_dim], puzzle order
        return self.head(f)                                           # [B, P]


class JigsawObjective(nn.Module):
    """Cross-entropy over the permutation set; losses "loss" (= "xent") and "acc"."""

    def __init__(self, net: JigsawNet, cfg: JigsawConfig):
        super().__init__()
        self.net, self.cfg = net, cfg

    def forward(self, x01: Tensor, mask: Tensor | None = None, labels: Tensor | None = None):
        puzzles, target, raw = make_puzzles(x01.float(), self.cfg, self.net.perms)
        logits = self.net(puzzles)
        xent = F.cross_entropy(logits.float(), target)
        pred = mosaic(raw.detach(), x01.shape[-1])
        return {"loss": xent, "xent": xent, "acc": accuracy(logits, target)}, {"pred": pred}

    def arch_extra(self) -> dict:
        return {"permutations": self.net.perms.tolist()}


def input_size(encoder_cfg: AlexNetConfig, cfg: JigsawConfig) -> int:
    return cfg.grid_size


def check(encoder_cfg: AlexNetConfig, cfg: JigsawConfig, where: str = "pretrain.jigsaw") -> None:
    check_schedule(cfg, where)
    cell = cfg.grid_size // 3
    if cfg.grid_size % 3 or not 1 <= cfg.tile_size <= cell:
        raise ValueError(f"{where}: grid_size must be a multiple of 3 and tile_size in [1, grid_size / 3], "
                         f"got grid_size={cfg.grid_size}, tile_size={cfg.tile_size}")
    if not 2 <= cfg.permutations <= 362880 or cfg.channel_jitter < 0 or cfg.tile_conv1_stride < 0:
        raise ValueError(f"{where}: permutations in [2, 9!], channel_jitter >= 0, tile_conv1_stride >= 0 needed")
    if cfg.tile_dim < 1 or cfg.fc_dim < 1 or not 0 <= cfg.dropout < 1:
        raise ValueError(f"{where}: tile_dim, fc_dim >= 1 and dropout in [0, 1) needed")


def build(encoder_cfg: AlexNetConfig, cfg: JigsawConfig, seed: int = 0) -> JigsawObjective:
    perms = max_hamming_permutations(cfg.permutations, cfg.permutation_seed)
    return JigsawObjective(JigsawNet(encoder_cfg, cfg, perms), cfg)


# the module protocol (docs/methods.md): its settings, the pretrain section that holds them
CONFIG = JigsawConfig
SECTION = "jigsaw"

__all__ = ["CONFIG", "SECTION",
           "JigsawConfig", "JigsawNet", "JigsawObjective", "max_hamming_permutations", "all_permutations",
           "tile_corners", "shuffle_tiles", "make_puzzles", "mosaic", "build", "check", "input_size", "TILES"]
