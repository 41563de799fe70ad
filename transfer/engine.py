"""The fine-tuning loop shared by classification, segmentation and detection (each task's module has its
own data, head, loss and `evaluate`, and steps this loop from its `fit`).

- `OptimConfig` + `make_optimizer(model, cfg, lr, iterations)` -> (optimizer, scheduler): SGD (the
  paper protocol: momentum, step decay) or Adam with a one-cycle schedule (the demo recipe).
- `train_one_epoch(model, batches, loss_fn, optimizer, scheduler, rt)`: one pass over an iterable of
  batches (an "epoch" may be any number of iterations: a job's are the iterations between two
  checkpoints); stops with NonFiniteLossError on a non-finite loss.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from cebench.errors import ConfigError
from cebench.runtime import Runtime, autocast_context, check_finite


@dataclass
class OptimConfig:
    optimizer: str = "adam"          # adam | sgd
    schedule: str = "onecycle"       # onecycle | step | constant
    momentum: float = 0.9
    weight_decay: float = 1e-4
    step_size: int = 10000           # schedule=step: lr x gamma every step_size iterations
    gamma: float = 0.5
    pct_start: float = 0.3           # schedule=onecycle: warm-up fraction
    grad_clip: float = 0.0           # 0 = off (paper: 10)
    backbone_lr_mult: float = 1.0    # lr of pretrained trunk relative to the new layers


def make_optimizer(model: nn.Module, cfg: OptimConfig, lr: float, iterations: int, *, backbone=None):
    """Optimizer over all trainable params (the trunk `backbone` at lr * backbone_lr_mult) + scheduler."""
    bb = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    trunk = [p for p in model.parameters() if p.requires_grad and id(p) in bb]
    new = [p for p in model.parameters() if p.requires_grad and id(p) not in bb]
    groups = [g for g in ({"params": new, "lr": lr}, {"params": trunk, "lr": lr * cfg.backbone_lr_mult})
              if g["params"]]
    if cfg.optimizer == "adam":
        # the fused kernel: one pass over each tensor instead of a dozen element-wise ops per parameter; for the
        # demo AlexNet's 0.4M parameters the per-op cost of the loop version was ~12% of a bf16 training step
        fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
        opt = torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay, fused=fused)
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        raise ConfigError(f"optimizer must be adam or sgd, got {cfg.optimizer!r}")
    iterations = max(1, int(iterations))
    if cfg.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g["lr"] for g in groups], total_steps=iterations, pct_start=cfg.pct_start)
    elif cfg.schedule == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, cfg.step_size), gamma=cfg.gamma)
    elif cfg.schedule == "constant":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    else:
        raise ConfigError(f"schedule must be onecycle, step or constant, got {cfg.schedule!r}")
    return opt, sched


def train_one_epoch(model: nn.Module, batches: Iterable, loss_fn: Callable, optimizer, scheduler, rt: Runtime, *,
                    grad_clip: float = 0.0, step0: int = 0, log: Callable | None = None,
                    log_every: int = 50) -> dict:
    """One pass over `batches`; `loss_fn(model, batch) -> dict of named losses` with "loss" the total, run
    under the runtime's autocast. `log(step=, **losses, lr=)` every `log_every` iterations (the job's curve).

    Returns averages of every named loss, plus "iterations", "images", "seconds" and "images_per_s".
    """
    model.train()
    sums: dict[str, float] = {}
    n, images, t0 = 0, 0, time.perf_counter()
    for i, batch in enumerate(batches):
        step = step0 + i
        with autocast_context(rt):
            losses = loss_fn(model, batch)
        check_finite(losses, step, "fine-tuning", "lower the learning rate or enable gradient clipping (grad_clip)")
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if grad_clip and grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        n += 1
        images += int(batch[0].shape[0])
        if log is not None and (step + 1) % log_every == 0:
            log(step=step + 1, **{k: float(v.detach()) for k, v in losses.items()},
                lr=optimizer.param_groups[0]["lr"])
    dt = time.perf_counter() - t0
    out = {k: v / max(n, 1) for k, v in sums.items()}
    out.update(iterations=n, images=images, seconds=dt, images_per_s=images / dt if dt > 0 else math.nan)
    return out


__all__ = ["OptimConfig", "make_optimizer", "train_one_epoch"]
