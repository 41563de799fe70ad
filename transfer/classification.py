"""Multi-label VOC classification by fine-tuning the whole AlexNet (`cebench transfer cls`).

The task side by side, as torchvision's classification reference: the data (`make_augment` over the
splits of `transfer.data`), the head (`ClsNet`), the loss (`bce_ignore_difficult`), `evaluate`, and `fit`,
one job, which steps `engine.train_one_epoch` between the checkpoints of its `CheckpointSaver`.

Model: the encoder (conv1..pool5) + fc6/fc7 (+ dropout) + fc8 over C classes. head="fc" flattens
pool5 (the paper's fc6 on 256x6x6); head="pooled" takes global max+avg pooled pool5 (the demo recipe).
Loss: BCE over present (1) / absent (-1) labels; "difficult"-only labels (0) are ignored.
Test: sigmoid scores averaged over `test_crops` random crops (scale + flip), per-class AP with the
VOC2007 11-point metric, mAP.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cebench.runtime import Runtime, all_reduce_sum, autocast_context, place_model, shard

from .common import TaskContext, encoder_for_job, job_runtime, job_sources, job_training
from .data import apply_flip, draw_flip, draw_scale_crop, flip_rot_perm, scale_crop, to_input, train_stream
from .engine import OptimConfig, make_optimizer, train_one_epoch
from .metrics import classification_ap, mean_ap


@dataclass
class ClsConfig:
    iterations: int = 300          # demo budget (the prototype recipe used 800; paper 80k)
    batch_size: int = 32
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3])  # candidates, chosen per init on val
    optim: OptimConfig = field(default_factory=OptimConfig)
    head: str = "pooled"          # pooled (global max+avg of pool5) | fc (flatten pool5, as the paper)
    fc_dim: int = 256             # fc6/fc7 width (paper 4096)
    fc_layers: int = 2            # hidden fc layers (fc6, fc7)
    dropout: float = 0.5
    load_size: int = 64           # images are held at load_size^2 (paper 256)
    scale: list[float] = field(default_factory=lambda: [1.0, 1.25])  # random rescale before the crop
    flip: bool = True
    rot90: bool = True
    channel_perm: bool = True
    test_crops: int = 10
    use_07_metric: bool = True
    eval_batch: int = 256


class ClsNet(nn.Module):
    def __init__(self, encoder: nn.Module, num_classes: int, *, head: str = "pooled", fc_dim: int = 256,
                 fc_layers: int = 2, dropout: float = 0.5):
        super().__init__()
        if head not in ("pooled", "fc"):
            raise ValueError(f"head must be 'pooled' or 'fc', got {head!r}")
        self.encoder, self.head_kind = encoder, head
        c, n = encoder.out_channels, encoder.out_size
        d_in = 2 * c if head == "pooled" else c * n * n
        layers: list[nn.Module] = []
        for _ in range(fc_layers):  # fc6, fc7
            layers += [nn.Linear(d_in, fc_dim), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            d_in = fc_dim
        if fc_layers == 0:
            layers.append(nn.Dropout(dropout))
        self.fc = nn.Sequential(*layers)
        self.classifier = nn.Linear(d_in, num_classes)  # fc8

    def forward(self, x: Tensor) -> Tensor:
        f = self.encoder.forward_features(x)  # [B, C5, n, n]
        if self.head_kind == "pooled":
            f = torch.cat([f.amax(dim=(2, 3)), f.mean(dim=(2, 3))], dim=1)
        else:
            f = f.flatten(1)
        return self.classifier(self.fc(f))  # logits [B, C]


def bce_ignore_difficult(logits: Tensor, labels: Tensor) -> Tensor:
    """BCE over labels in {1, -1}; 0 (difficult only) contributes nothing."""
    weight = (labels != 0).float()
    loss = F.binary_cross_entropy_with_logits(logits.float(), (labels > 0).float(), weight=weight, reduction="sum")
    return loss / weight.sum().clamp_min(1.0)


def make_augment(cfg: ClsConfig, out_size: int):
    def augment(batch, gen):
        x, y = batch
        x = to_input(x)
        x, _ = scale_crop(x, gen, out_size, cfg.scale)
        x, _ = flip_rot_perm(x, gen, flip=cfg.flip, rot90=cfg.rot90, channel_perm=cfg.channel_perm)
        return x, y
    return augment


@torch.no_grad()
def evaluate(model: nn.Module, split, cfg: ClsConfig, out_size: int, rt: Runtime, seed: int = 0,
             workers: int = 0) -> tuple[Tensor, int]:
    """Mean sigmoid score over `test_crops` random crops (scale range and flips of training) of every
    image of `split` -> (scores [N, C], images scored). The crops' random choices are drawn first, in
    the order of one process going crop by crop and chunk by chunk; each rank then scores its share of
    the chunks and the scores are summed over the ranks, so every image is scored exactly once and the
    numbers do not depend on the number of processes."""
    model.eval()
    gen = torch.Generator().manual_seed(10_000 + seed)
    n, s = len(split), cfg.load_size
    crops = max(1, cfg.test_crops)
    chunks = [list(range(i, min(i + cfg.eval_batch, n))) for i in range(0, n, cfg.eval_batch)]
    params = [[(draw_scale_crop(gen, len(c), s, s, out_size, cfg.scale if crops > 1 else (1.0, 1.0)),
                draw_flip(gen, len(c)) if crops > 1 and cfg.flip else None) for c in chunks] for _ in range(crops)]
    total = torch.zeros(n, model.classifier.out_features)
    counted = torch.zeros(n)
    mine = shard(list(range(len(chunks))), rt)
    for k, (x_u8, _) in zip(mine, split.batches([chunks[k] for k in mine], workers)):
        x0 = to_input(x_u8.to(rt.device))
        idx = torch.tensor(chunks[k])
        for c in range(crops):  # per image, the crops are added in the order of the one-process loop
            crop, flips = params[c][k]
            x, _ = scale_crop(x0, None, out_size, params=crop)
            if flips is not None:
                x = apply_flip(x, flips)
            with autocast_context(rt):
                logits = model(x)  # the output follows the weights' channels_last format
            total[idx] += torch.sigmoid(logits.float()).cpu()
        counted[idx] += 1
    total, counted = all_reduce_sum(total, rt), all_reduce_sum(counted, rt)
    if not bool((counted == 1).all()):
        raise RuntimeError(f"evaluation scored {int(counted.sum())} images for a split of {n}")
    return total / crops, int(counted.sum())


def fit(job, ctx: TaskContext) -> dict:
    """One classification job: fit on job.fit_split with job.lr (resuming from the job's `last`
    checkpoint), then score on job.eval_split."""
    cfg: ClsConfig = ctx.cfg
    rt = job_runtime(ctx.runtime, ctx.device)
    train, test = job_sources(job, ctx, "cls")  # in memory, or streamed from disk over the budget
    encoder = encoder_for_job(job, ctx, to_input(train.first(ctx.magic_images)))
    out_size = encoder.cfg.input_size
    model = ClsNet(encoder, len(train.classes), head=cfg.head, fc_dim=cfg.fc_dim, fc_layers=cfg.fc_layers,
                   dropout=cfg.dropout)
    model = place_model(model, rt.device, channels_last=rt.channels_last)
    optimizer, scheduler = make_optimizer(model, cfg.optim, job.lr, cfg.iterations, backbone=model.encoder)
    stream = train_stream(train, cfg.batch_size, seed=job.seed, augment=make_augment(cfg, out_size), rt=rt,
                          workers=ctx.runtime.loader_workers)

    def loss_fn(m, batch):
        x, y = batch
        return {"loss": bce_ignore_difficult(m(x), y)}

    with job_training(job, ctx, rt, model, optimizer, scheduler, stream) as (saver, ddp, log):  # resumed
        while saver.step < cfg.iterations:  # an epoch: the iterations up to the next checkpoint
            saver.end_epoch(train_one_epoch(ddp, saver.batches(), loss_fn, optimizer, scheduler, rt, step0=saver.step,
                                            grad_clip=cfg.optim.grad_clip, log=log, log_every=ctx.log_every))
    t0 = time.perf_counter()
    scores, n_scored = evaluate(model, test, cfg, out_size, rt, seed=job.seed, workers=ctx.runtime.loader_workers)
    infer_s = time.perf_counter() - t0
    stats = saver.totals()
    aps = classification_ap(scores.numpy(), test.labels.numpy(), use_07_metric=cfg.use_07_metric)
    return {"metrics": {"mAP": mean_ap(aps)},
            "details": {"ap": dict(zip(train.classes, [None if np.isnan(a) else float(a) for a in aps])),
                        "train_loss": stats["loss"]},
            "inputs": {**stats["inputs"], "test_crops": max(1, cfg.test_crops), "test_images": n_scored,
                       "processes": rt.world_size},
            "train_images_per_s": stats["images_per_s"],
            "infer_images_per_s": len(test) * max(1, cfg.test_crops) / max(infer_s, 1e-9)}


__all__ = ["ClsConfig", "ClsNet", "bce_ignore_difficult", "make_augment", "evaluate", "fit"]
