"""Semantic segmentation with an FCN-32s head on the AlexNet trunk (`cebench transfer seg`).

The task side by side: the data (`make_augment` over the splits of `transfer.data`), the head (`FCN32`),
the loss (pixel cross-entropy), `evaluate` and `fit`, one job, which steps `engine.train_one_epoch`
between the checkpoints of its `CheckpointSaver`.

fc6 / fc7 convolutionalised (fc6 a `fc6_kernel` conv on pool5, fc7 1x1, dropout), a 1x1 score layer over
K = 1 + C classes (background first), and one learned up-convolution of stride = the pool5 stride,
initialised bilinear (`feature="conv5"` puts fc6 on conv5 instead, pool5 dropped: half the stride, for
small inputs whose pool5 grid is too coarse). It is per class (each class's scores upsampled by its own
kernel, groups = K): FCN-32s itself keeps this layer fixed at the bilinear kernel, which maps each class
to itself, so per-class learned kernels cover it, and they cost about a third of a dense K x K one on
CPU, where the dense up-convolution was the largest single cost of a demo training step. Outputs are
resized to the input when the stride does not divide it. Loss: pixel cross-entropy ignoring 255. Metric:
mean IU from the confusion matrix.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cebench.errors import ConfigError
from cebench.runtime import Runtime, all_reduce_sum, autocast_context, place_model, shard

from .common import TaskContext, encoder_for_job, job_runtime, job_sources, job_training
from .data import flip_rot_perm, scale_crop, to_input, train_stream
from .engine import OptimConfig, make_optimizer, train_one_epoch
from .metrics import confusion_matrix, iou_per_class, mean_iu, pixel_accuracy

SEG_FEATURES = ("pool5", "conv5")  # the trunk layer under fc6


@dataclass
class SegConfig:
    iterations: int = 300          # demo budget (the prototype recipe used 800; paper 80k)
    batch_size: int = 32
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3])
    optim: OptimConfig = field(default_factory=OptimConfig)
    fc_dim: int = 256             # fc6/fc7 channels (paper 4096)
    fc6_kernel: int = 3           # paper 7 (FCN) on 227-px AlexNet; 3 on the 4x4 demo pool5
    feature: str = "pool5"        # trunk layer under fc6: pool5 (FCN-32s) | conv5 (pool5 dropped: half the stride)
    dropout: float = 0.5
    load_size: int = 64
    scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    flip: bool = True
    rot90: bool = True
    channel_perm: bool = True
    eval_batch: int = 128
    ignore_index: int = 255
    # split names of the segmentation tree where they differ from data.*_split: VOC2012 has no public
    # test masks, so the paper protocol fits on train and scores val: {trainval: train, test: val}
    splits: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.feature not in SEG_FEATURES:
            raise ConfigError(f"transfer.seg.feature must be one of {', '.join(SEG_FEATURES)}, got {self.feature!r}")
        bad = sorted(set(self.splits) - {"train", "val", "trainval", "test"})
        if bad:
            raise ConfigError(f"transfer.seg.splits: unknown key(s) {', '.join(bad)}; valid keys: test, train, "
                              "trainval, val")


def bilinear_kernel(channels: int, k: int) -> Tensor:
    """[C, C, k, k] bilinear up-sampling weights (each channel to itself), as FCN initialises them."""
    factor = (k + 1) // 2
    center = factor - 1 if k % 2 == 1 else factor - 0.5
    og = torch.arange(k, dtype=torch.float32)
    filt = 1 - (og - center).abs() / factor
    w = torch.zeros(channels, channels, k, k)
    w[range(channels), range(channels)] = filt[:, None] * filt[None, :]
    return w


class PerClassUpscore(nn.Module):
    """FCN's learned per-class up-sampling, `ConvTranspose2d(K, K, 2s, stride=s, padding=s//2, groups=K,
    bias=False)` (the same `weight` [K, 1, 2s, 2s], so checkpoints load either way), computed as one
    batched matrix product: with a kernel twice the stride, each s x s block of the output is reached
    by exactly four input pixels (the block's own and its up/left neighbours), each through one quarter
    of the kernel. oneDNN has no fast kernel for this grouped 16x16 transposed convolution: under bf16
    autocast it took ~130 ms of a ~190 ms demo segmentation step, the product ~9 ms (fp32 ~15 vs 17).
    Agrees with the ConvTranspose2d it replaces, gradients included (tests/test_transfer_units.py)."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = int(stride)
        self.weight = nn.Parameter(torch.empty(channels, 1, 2 * self.stride, 2 * self.stride))

    def forward(self, x: Tensor) -> Tensor:
        b, k, h, w = x.shape
        s, p = self.stride, self.stride // 2
        xp = F.pad(x, (1, 1, 1, 1))                                                  # [B, K, H+2, W+2]
        # the four input pixels reaching each output block, (dy, dx) = the input offset: [K, B*(H+1)*(W+1), 4]
        x4 = torch.stack([xp[:, :, 1 - dy:2 - dy + h, 1 - dx:2 - dx + w] for dy in (0, 1) for dx in (0, 1)], -1)
        x4 = x4.permute(1, 0, 2, 3, 4).reshape(k, b * (h + 1) * (w + 1), 4)
        # the kernel quarter each of them goes through: [K, 4, s*s]
        w4 = self.weight.reshape(k, 2, s, 2, s).permute(0, 1, 3, 2, 4).reshape(k, 4, s * s)
        y = torch.bmm(x4, w4)                                                        # [K, B*(H+1)*(W+1), s*s]
        y = y.reshape(k, b, h + 1, w + 1, s, s).permute(1, 0, 2, 4, 3, 5).reshape(b, k, (h + 1) * s, (w + 1) * s)
        return y[:, :, p:(h + 1) * s - p, p:(w + 1) * s - p]                         # [B, K, (H-1)s+2s-2p, ...]


class FCN32(nn.Module):
    def __init__(self, encoder: nn.Module, num_classes: int, *, fc_dim: int = 256, fc6_kernel: int = 3,
                 dropout: float = 0.5, feature: str = "pool5"):
        super().__init__()
        if feature not in SEG_FEATURES:
            raise ValueError(f"seg feature must be one of {SEG_FEATURES}, got {feature!r}")
        self.encoder = encoder
        self.feature = feature
        c = encoder.out_channels
        self.fc6 = nn.Conv2d(c, fc_dim, fc6_kernel, padding=fc6_kernel // 2)
        self.fc7 = nn.Conv2d(fc_dim, fc_dim, 1)
        self.drop = nn.Dropout2d(dropout)
        self.score = nn.Conv2d(fc_dim, num_classes, 1)
        s = encoder.feature_stride(feature)
        self.stride = s
        self.upscore = PerClassUpscore(num_classes, s)  # weight [K, 1, 2s, 2s]
        with torch.no_grad():
            k = torch.arange(num_classes)
            self.upscore.weight.copy_(bilinear_kernel(num_classes, 2 * s)[k, k].unsqueeze(1))
            nn.init.zeros_(self.score.weight)
            nn.init.zeros_(self.score.bias)

    def forward(self, x: Tensor) -> Tensor:
        f = self.encoder.forward_intermediates(x, (self.feature,))[self.feature]  # [B, C5, n, n]
        h = self.drop(F.relu(self.fc6(f)))
        h = self.drop(F.relu(self.fc7(h)))
        y = self.upscore(self.score(h))                       # [B, K, n*s, n*s]
        if y.shape[-2:] != x.shape[-2:]:
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return y


def make_augment(cfg: SegConfig, out_size: int):
    def augment(batch, gen):
        x, m = batch
        x = to_input(x)
        x, m = scale_crop(x, gen, out_size, cfg.scale, masks=m)
        x, m = flip_rot_perm(x, gen, flip=cfg.flip, rot90=cfg.rot90, channel_perm=cfg.channel_perm, masks=m)
        return x, m.long()
    return augment


@torch.no_grad()
def evaluate(model: nn.Module, split, num_classes: int, cfg: SegConfig, rt: Runtime,
             workers: int = 0) -> tuple[Tensor, int]:
    """Confusion matrix [K, K] over every image of `split` and the number of images scored: each rank
    scores its share of the chunks, the matrices are summed over the ranks (every image once)."""
    model.eval()
    n = len(split)
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    chunks = shard([list(range(i, min(i + cfg.eval_batch, n))) for i in range(0, n, cfg.eval_batch)], rt)
    counted = torch.zeros(1, dtype=torch.long)
    for x_u8, masks in split.batches(chunks, workers):
        with autocast_context(rt):
            logits = model(to_input(x_u8.to(rt.device)))
        conf += confusion_matrix(logits.float().argmax(1).cpu(), masks.long(), num_classes, cfg.ignore_index)
        counted += x_u8.shape[0]
    conf, counted = all_reduce_sum(conf, rt), all_reduce_sum(counted, rt)
    if int(counted) != n:
        raise RuntimeError(f"evaluation scored {int(counted)} images for a split of {n}")
    return conf, int(counted)


def fit(job, ctx: TaskContext) -> dict:
    """One segmentation job: fit on job.fit_split with job.lr (resuming from the job's `last` checkpoint),
    then mean IU on job.eval_split."""
    cfg: SegConfig = ctx.cfg
    rt = job_runtime(ctx.runtime, ctx.device)
    train, test = job_sources(job, ctx, "seg")  # in memory, or streamed from disk over the budget
    encoder = encoder_for_job(job, ctx, to_input(train.first(ctx.magic_images)))
    k = len(train.classes)
    model = place_model(FCN32(encoder, k, fc_dim=cfg.fc_dim, fc6_kernel=cfg.fc6_kernel, dropout=cfg.dropout,
                              feature=cfg.feature), rt.device, channels_last=rt.channels_last)
    optimizer, scheduler = make_optimizer(model, cfg.optim, job.lr, cfg.iterations, backbone=model.encoder)
    stream = train_stream(train, cfg.batch_size, seed=job.seed, augment=make_augment(cfg, encoder.cfg.input_size),
                          rt=rt, workers=ctx.runtime.loader_workers)

    def loss_fn(m, batch):
        x, y = batch
        return {"loss": F.cross_entropy(m(x).float(), y, ignore_index=cfg.ignore_index)}

    with job_training(job, ctx, rt, model, optimizer, scheduler, stream) as (saver, ddp, log):  # resumed
        while saver.step < cfg.iterations:  # an epoch: the iterations up to the next checkpoint
            saver.end_epoch(train_one_epoch(ddp, saver.batches(), loss_fn, optimizer, scheduler, rt, step0=saver.step,
                                            grad_clip=cfg.optim.grad_clip, log=log, log_every=ctx.log_every))
    t0 = time.perf_counter()
    conf, n_scored = evaluate(model, test, k, cfg, rt, workers=ctx.runtime.loader_workers)
    infer_s = time.perf_counter() - t0
    stats = saver.totals()
    iu = iou_per_class(conf)
    return {"metrics": {"mean IU": mean_iu(conf)},
            "details": {"iu": dict(zip(train.classes, [None if v != v else float(v) for v in iu])),
                        "pixel_acc": pixel_accuracy(conf), "train_loss": stats["loss"]},
            "inputs": {**stats["inputs"], "test_images": n_scored, "processes": rt.world_size},
            "train_images_per_s": stats["images_per_s"],
            "infer_images_per_s": len(test) / max(infer_s, 1e-9)}


__all__ = ["SegConfig", "FCN32", "PerClassUpscore", "bilinear_kernel", "make_augment", "evaluate", "fit"]
