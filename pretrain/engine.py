"""The training step loop shared by every pretraining method, and the held-out evaluation.

Randomness of a step (masks, dropout) is reseeded from (seed, step, rank), so a run resumed from a
checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.profiler import record_function

from cebench.runtime import Runtime, all_reduce_sum, autocast_context, check_finite, to_channels_last, unwrap_model

from .losses import gan_d_loss, gan_g_loss, joint


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    total_steps: int = 0
    sums: dict = field(default_factory=dict)


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    return (int(seed) * 1_000_003 + int(step)) * 97 + int(rank)


def make_adam(params, lr: float, beta1: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam as every pretraining method uses it. `fused=True` (one kernel over all tensors, on CPU and
    CUDA) is the same update rule as the default per-tensor loop up to float rounding and ~6x faster
    on CPU: at the inpainting net's 71M parameters the default loop took 0.28 s a step on 2 cores,
    the fused one 0.05 s (results/profile.md)."""
    return torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999), weight_decay=weight_decay, fused=True)


def train_step(objective, disc, opt_g, opt_d, x, mask, labels, rt: Runtime, *, method: str = "", step: int = 0,
               w_rec: float = 0.999, w_adv: float = 0.001) -> tuple[dict, dict]:
    """One optimiser step: the objective's forward, then (with `disc`) the D step on the real region vs
    the detached prediction, then the G step on w_rec * rec + w_adv * adv. Returns (losses, outputs).

    The G step's adversarial term runs the *unwrapped* discriminator with its parameters frozen: G
    needs gradients w.r.t. the fake only, and D's weight gradients there would be thrown away (the
    next D step zeroes them) -- the port computes them, we skip them, and under DDP nothing is
    all-reduced for them. Same algorithm: D is updated before G's adversarial forward, as in the port."""
    # record_function labels: what `cebench bench profile` reports a step's time by (free when no profiler runs)
    with record_function("step.forward"), autocast_context(rt):
        losses, out = objective(x, mask, labels)
    if disc is not None:
        b = x.shape[0]
        with record_function("step.d_update"):
            with autocast_context(rt):
                both = disc(torch.cat([out["real"].detach(), out["fake"].detach()]))  # one forward (DDP)
                d_loss = gan_d_loss(both[:b], both[b:])
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        d_core = unwrap_model(disc)
        d_core.requires_grad_(False)  # recorded at op time: re-enabling after the forward is safe
        try:
            with record_function("step.adv_forward"), autocast_context(rt):
                adv = gan_g_loss(d_core(out["fake"]))
        finally:
            d_core.requires_grad_(True)
        losses = {**losses, "adv": adv, "d": d_loss.detach(), "loss": joint(losses["rec"], adv, w_rec, w_adv)}
    check_finite(losses, step, method, "lower the learning rate or check the input images")
    opt_g.zero_grad(set_to_none=True)
    with record_function("step.backward"):
        losses["loss"].backward()
    with record_function("step.optimizer"):
        opt_g.step()
    return losses, out


def train_one_epoch(objective, disc, opt_g, opt_d, loader, masker, state: TrainState, rt: Runtime, *,
                    seed: int, method: str, w_rec: float = 0.999, w_adv: float = 0.001,
                    on_step=None, stop_at: int | None = None, lr_scale=None) -> dict:
    """One pass over `loader` (or until `stop_at` steps). G and D alternate when `disc` is given.
    `lr_scale(step)` (optional) multiplies each param group's base lr before the step.

    Returns the mean of every loss term over the steps run; `on_step(state, losses, outputs, x, mask)`
    runs after each step (logging, samples, checkpoints)."""
    objective.train()
    if disc is not None:
        disc.train()
    sums: dict[str, float] = {}
    n = 0
    gen = torch.Generator(device=rt.device)
    for x, labels, _ in loader:
        if stop_at is not None and state.step >= stop_at:
            break
        s = step_seed(seed, state.step, rt.rank)
        torch.manual_seed(s)
        gen.manual_seed(s)
        if lr_scale is not None:
            f = lr_scale(state.step)
            for opt in (opt_g, opt_d):
                for group in (opt.param_groups if opt is not None else ()):
                    group["lr"] = group.setdefault("base_lr", group["lr"]) * f  # base_lr rides in the checkpoint
        x = to_channels_last(x.to(rt.device, non_blocking=True).float().div_(255), rt)
        labels = labels.to(rt.device, non_blocking=True)
        mask = masker(x.shape[0], gen)
        losses, out = train_step(objective, disc, opt_g, opt_d, x, mask, labels, rt, method=method, step=state.step,
                                 w_rec=w_rec, w_adv=w_adv)
        state.step += 1
        n += 1
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        if on_step is not None:
            on_step(state, losses, out, x, mask)
    if n == 0:
        return {}
    t = all_reduce_sum(torch.tensor([*sums.values(), float(n)], dtype=torch.float64), rt)
    return {k: float(v / t[-1]) for k, v in zip(sums, t[:-1])}


@torch.no_grad()
def evaluate(objective, loader, masker, rt: Runtime, seed: int = 0) -> dict:
    """Mean loss terms on held-out images with fixed masks (reseeded per batch)."""
    objective.eval()
    sums: dict[str, float] = {}
    n = 0
    gen = torch.Generator(device=rt.device)
    for b, (x, labels, _) in enumerate(loader):
        gen.manual_seed(step_seed(seed, 10_000_000 + b))
        x = x.to(rt.device).float().div_(255)
        mask = masker(x.shape[0], gen)
        with autocast_context(rt):
            losses, _ = objective(x, mask, labels.to(rt.device))
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v) * x.shape[0]
        n += x.shape[0]
    return {f"val_{k}": v / max(n, 1) for k, v in sums.items()}
