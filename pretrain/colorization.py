"""Colorization (Zhang, Isola and Efros, ECCV 2016): the ab channels of CIE Lab predicted from L, as a
classification over quantised ab bins with class rebalancing.

Pretext data: Lab of the image (`rgb_to_lab`, skimage.color.rgb2lab's constants); the encoder sees
(L, 0, 0) scaled as `models.lab_input` does; the target is ab averaged over each cell of the encoder's
`feature` map (conv5: the head predicts one ab distribution per cell).
- Bins (`ab_bins`): the ab plane cut into `grid` x `grid` cells (the paper: 10); the bins are the centres
  (multiples of 10) of the cells that some colour of a `gamut_levels`^3 sRGB lattice falls into (nearest
  centre): 262 at 10 with 128 levels, 261 with 64 (the paper's convex-hull count was 313).
- Soft encoding (`soft_encode`): each target ab spreads over its 5 nearest bins with Gaussian weights
  (sigma 5), as the paper.
- Rebalancing (`rebalance_weights`): the empirical bin distribution p of the training targets (`prepare`:
  nearest bins over up to `prior_images` pretraining images), smoothed with a Gaussian kernel over the bin
  centres (sigma 5): p~ = K p / sum(K p); w = ((1 - lam) p~ + lam / Q)^-1, scaled so that sum(p~ w) = 1
  (lam = 1/2). A cell's loss is weighted by w of its nearest bin.
- Loss: -sum_cells w(q*) sum_q Z_q log softmax(logits)_q, averaged over the cells.

Transfer: the checkpoint's encoder has `input_space="lab"` (arch["input_space"]): it converts the suite's RGB
input to Lab itself; conv1's a and b weights are zero after pretraining (the pretext gives them no input)
and learn during fine-tuning, as Zhang et al.'s conv1 on L plus a zero-initialised conv1 on ab.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .models import _D65_WHITE, _XYZ_FROM_RGB, LAB_SCALE, AlexNetConfig, AlexNetEncoder, rgb_to_lab
from .pretext import PretextSchedule, check_schedule

NEAREST = 5        # bins a target spreads over (paper)
SIGMA = 5.0        # Gaussian of the soft encoding and of the prior's smoothing, in ab units (paper)
LAMBDA = 0.5       # mix of the smoothed prior with the uniform distribution (paper)
ANNEAL_T = 0.38    # temperature of the annealed mean shown in the sample grids (paper)


@dataclass
class ColorizationConfig(PretextSchedule):
    """`pretrain.colorization`: the defaults are the CPU demo's; the paper's in configs/paper.yaml."""

    colour: str = "rgb"           # the images must keep their colour (the demo's pretrain.colour is gray)
    input_size: int = 0           # 0: the encoder's input size (paper 227: Zhang et al.'s AlexNet crops)
    feature: str = "conv5"        # the encoder layer the head reads (its grid is the prediction grid)
    fc_dim: int = 256             # the head's two 1x1 convolutions (paper AlexNet: fc6 / fc7 at 4096)
    grid: int = 10                # ab bin size (paper 10)
    gamut_levels: int = 64        # sRGB lattice levels per channel that define the in-gamut bins
    rebalance: float = LAMBDA     # lam of the rebalancing (0: weights from the prior alone; 1: no rebalancing)
    prior_images: int = 2000      # pretraining images the empirical ab distribution is counted on


def ab_bins(grid: int = 10, levels: int = 64) -> Tensor:
    """In-gamut ab bin centres, float32 [Q, 2] sorted by (a, b) (see the module docstring)."""
    v = torch.linspace(0, 1, levels)
    rgb = torch.stack(torch.meshgrid(v, v, v, indexing="ij")).reshape(1, 3, -1, 1)  # [1,3,L^3,1]
    ab = rgb_to_lab(rgb)[0, 1:, :, 0].t()  # [L^3, 2]
    centres = torch.unique(torch.round(ab / grid).to(torch.int64), dim=0)
    return (centres * grid).float()


def nearest_bins(ab: Tensor, bins: Tensor) -> Tensor:
    """[N, 2] -> int64 [N]: the index of each point's nearest bin centre."""
    return torch.cdist(ab.float(), bins).argmin(1)


def soft_encode(ab: Tensor, bins: Tensor, k: int = NEAREST, sigma: float = SIGMA) -> Tensor:
    """[N, 2] -> [N, Q]: Gaussian weights exp(-d^2 / 2 sigma^2) on the k nearest bins, normalised to 1."""
    d = torch.cdist(ab.float(), bins)                                  # [N, Q]
    dk, ik = d.topk(k, dim=1, largest=False)
    wk = torch.exp(-dk ** 2 / (2 * sigma ** 2))
    wk = wk / wk.sum(1, keepdim=True)
    return torch.zeros_like(d).scatter_(1, ik, wk)


def smooth_prior(p: Tensor, bins: Tensor, sigma: float = SIGMA) -> Tensor:
    """p [Q] (sums to 1) smoothed over the bin centres with a Gaussian kernel, renormalised."""
    k = torch.exp(-torch.cdist(bins, bins) ** 2 / (2 * sigma ** 2))   # [Q, Q]
    s = k @ p.double().to(k.dtype)
    return s / s.sum()


def rebalance_weights(p_smooth: Tensor, lam: float = LAMBDA) -> Tensor:
    """w = ((1 - lam) p~ + lam / Q)^-1 scaled so that sum(p~ w) = 1 (the paper's eq. 4)."""
    q = p_smooth.numel()
    w = 1.0 / ((1 - lam) * p_smooth + lam / q)
    return w / (p_smooth * w).sum()


def lab_to_rgb(lab: Tensor) -> Tensor:
    """The inverse of `rgb_to_lab` ([B,3,H,W] -> sRGB clamped to [0, 1]; the sample grids)."""
    fy = (lab[:, 0] + 16) / 116
    f = torch.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], 1)
    t = torch.where(f > 0.2068966, f ** 3, (f - 16 / 116) / 7.787)
    m = torch.tensor(_XYZ_FROM_RGB, device=lab.device) / torch.tensor(_D65_WHITE, device=lab.device)[:, None]
    lin = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(m), t).clamp_min(0)
    return torch.where(lin > 0.0031308, 1.055 * lin ** (1 / 2.4) - 0.055, 12.92 * lin).clamp(0, 1)


class ColorizationNet(nn.Module):
    """encoder (input_space "lab", fed (L, 0, 0)) -> `feature` map -> 1x1 convs -> logits [B, Q, n, n]."""

    def __init__(self, encoder_cfg: AlexNetConfig, cfg: ColorizationConfig):
        super().__init__()
        self.encoder = AlexNetEncoder(encoder_cfg, input_space="lab")
        with torch.no_grad():
            self.encoder.conv1.weight[:, 1:].zero_()  # the ab inputs: zero, as Zhang et al.'s conv1_ab at transfer
        self.feature = cfg.feature
        bins = ab_bins(cfg.grid, cfg.gamut_levels)
        q = len(bins)
        self.register_buffer("bins", bins)                                   # [Q, 2] ab centres
        self.register_buffer("prior", torch.full((q,), 1.0 / q))            # empirical p over the bins
        self.register_buffer("weights", torch.ones(q))                      # rebalancing factor per bin
        self.register_buffer("prior_count", torch.zeros((), dtype=torch.int64))  # cells counted (0: not yet)
        c = _feature_channels(self.encoder, cfg.feature)
        self.head = nn.Sequential(
            nn.Conv2d(c, cfg.fc_dim, 1, bias=False), nn.BatchNorm2d(cfg.fc_dim), nn.ReLU(inplace=True),
            nn.Conv2d(cfg.fc_dim, cfg.fc_dim, 1, bias=False), nn.BatchNorm2d(cfg.fc_dim), nn.ReLU(inplace=True),
            nn.Conv2d(cfg.fc_dim, q, 1))

    def encoder_input(self, lab: Tensor) -> Tensor:
        """Lab [B,3,S,S] -> ((L - 50) / 50, 0, 0): the encoder sees lightness only."""
        lum = (lab[:, :1] - 50.0) / LAB_SCALE
        return torch.cat([lum, torch.zeros_like(lum), torch.zeros_like(lum)], 1)

    def forward(self, lab: Tensor) -> Tensor:
        f = self.encoder.forward_intermediates(self.encoder_input(lab), (self.feature,), stem=False)[self.feature]
        return self.head(f)  # [B, Q, n, n]


def _feature_channels(encoder: AlexNetEncoder, layer: str) -> int:
    widths = dict(zip(("conv1", "conv2", "conv3", "conv4", "conv5"), encoder.cfg.channels))
    return widths[layer.replace("pool", "conv")]


def cell_targets(lab: Tensor, size: tuple[int, int]) -> Tensor:
    """Lab [B,3,S,S] -> ab averaged over each cell of an n x n grid, as [B n n, 2] (row-major cells)."""
    ab = F.adaptive_avg_pool2d(lab[:, 1:], size)   # [B, 2, n, n]
    return ab.permute(0, 2, 3, 1).reshape(-1, 2)


class ColorizationObjective(nn.Module):
    """Rebalanced soft cross-entropy over the ab bins; losses "loss" (= "xent") and "acc" (argmax = nearest bin)."""

    def __init__(self, net: ColorizationNet, cfg: ColorizationConfig):
        super().__init__()
        self.net, self.cfg = net, cfg

    def forward(self, x01: Tensor, mask: Tensor | None = None, labels: Tensor | None = None):
        lab = rgb_to_lab(x01)                                   # [B,3,S,S] float32
        logits = self.net(lab)                                  # [B,Q,n,n]
        b, q, n, m = logits.shape
        ab = cell_targets(lab, (n, m))                          # [B n m, 2]
        z = soft_encode(ab, self.net.bins)                      # [B n m, Q]
        nearest = z.argmax(1)
        logp = F.log_softmax(logits.float().permute(0, 2, 3, 1).reshape(-1, q), 1)
        xent = -(self.net.weights[nearest] * (z * logp).sum(1)).mean()
        acc = (logp.detach().argmax(1) == nearest).float().mean()
        return {"loss": xent, "xent": xent, "acc": acc}, {"pred": self.colorize(lab, logits.detach())}

    def colorize(self, lab: Tensor, logits: Tensor) -> Tensor:
        """The annealed-mean ab (T = 0.38) upsampled onto the image's L, as sRGB [B,3,S,S] in [0, 1]."""
        p = torch.softmax(logits.float() / ANNEAL_T, 1)                     # [B,Q,n,n]
        ab = torch.einsum("bqhw,qc->bchw", p, self.net.bins)
        ab = F.interpolate(ab, size=lab.shape[-2:], mode="bilinear", align_corners=False)
        return lab_to_rgb(torch.cat([lab[:, :1], ab], 1))

    @torch.no_grad()
    def prepare(self, dataset) -> None:
        """Count the nearest bins of the training targets over the first `prior_images` images of `dataset`
        (items (uint8 [3,S,S], ...)) and set the prior and the rebalancing weights from them."""
        net = self.net
        n_img = min(len(dataset), self.cfg.prior_images)
        size = _grid_size(net, dataset[0][0].shape[-1])
        counts = torch.zeros(len(net.bins), dtype=torch.float64)
        for start in range(0, n_img, 128):
            x = torch.stack([dataset[i][0] for i in range(start, min(start + 128, n_img))]).float() / 255
            ab = cell_targets(rgb_to_lab(x), size)
            counts += torch.bincount(nearest_bins(ab, net.bins.cpu()), minlength=len(net.bins)).double()
        p = counts / counts.sum()
        w = rebalance_weights(smooth_prior(p, net.bins.cpu().double()), self.cfg.rebalance)
        net.prior.copy_(p.float().to(net.prior.device))
        net.weights.copy_(w.float().to(net.weights.device))
        net.prior_count.fill_(int(counts.sum()))

    def arch_extra(self) -> dict:
        return {"input_space": "lab", "ab_bins": len(self.net.bins)}


def _grid_size(net: ColorizationNet, size: int) -> tuple[int, int]:
    was = net.encoder.training
    net.encoder.eval()
    try:
        f = net.encoder.forward_intermediates(torch.zeros(1, 3, size, size, device=net.bins.device), (net.feature,),
                                             stem=False)[net.feature]
    finally:
        net.encoder.train(was)
    return tuple(f.shape[-2:])


def input_size(encoder_cfg: AlexNetConfig, cfg: ColorizationConfig) -> int:
    return cfg.input_size or encoder_cfg.input_size


def check(encoder_cfg: AlexNetConfig, cfg: ColorizationConfig, where: str = "pretrain.colorization") -> None:
    check_schedule(cfg, where)
    if cfg.colour != "rgb":
        raise ValueError(f"{where}.colour must be rgb (colorization predicts the colours), got {cfg.colour!r}")
    if cfg.feature not in ("conv3", "conv4", "conv5"):
        raise ValueError(f"{where}.feature must be conv3, conv4 or conv5, got {cfg.feature!r}")
    if cfg.grid < 1 or cfg.gamut_levels < 2 or cfg.fc_dim < 1 or cfg.prior_images < 1 or cfg.input_size < 0:
        raise ValueError(f"{where}: grid, fc_dim, prior_images >= 1, gamut_levels >= 2, input_size >= 0 needed")
    if not 0 <= cfg.rebalance <= 1 or math.isnan(cfg.rebalance):
        raise ValueError(f"{where}.rebalance must be in [0, 1], got {cfg.rebalance}")


def build(encoder_cfg: AlexNetConfig, cfg: ColorizationConfig, seed: int = 0) -> ColorizationObjective:
    return ColorizationObjective(ColorizationNet(encoder_cfg, cfg), cfg)


# the module protocol (docs/methods.md): its settings, the pretrain section that holds them
CONFIG = ColorizationConfig
SECTION = "colorization"

__all__ = ["CONFIG", "SECTION",
           "ColorizationConfig", "ColorizationNet", "ColorizationObjective", "ab_bins", "nearest_bins",
           "soft_encode", "smooth_prior", "rebalance_weights", "lab_to_rgb", "cell_targets", "build", "check",
           "input_size", "NEAREST", "SIGMA", "LAMBDA"]
