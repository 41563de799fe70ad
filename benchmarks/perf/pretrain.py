"""`cebench bench pretrain`: training images/s and peak memory of each architecture at its real size.

Each net is built as `cebench pretrain` builds it (`methods.METHODS` from a `PretrainConfig`, the
trainer's `train.nets_and_optimizers`: fused Adam) and one timed step is the trainer's own
`engine.train_step` (forward, loss, backward, optimiser step; the discriminator's step too for the
adversarial nets), after `warmup` untimed steps; synthetic inputs, so only the compute is measured.
Peak memory: torch.cuda.max_memory_allocated on GPU, the process's peak RSS growth on CPU.
"""

from __future__ import annotations

import multiprocessing as mp
import platform
import resource
from dataclasses import dataclass
from typing import Callable

import torch

from cebench.io import atomic_write_json
from cebench.pretrain import engine
from cebench.pretrain.config import PretrainConfig
from cebench.pretrain.methods import METHODS
from cebench.pretrain.models import AlexNetConfig, InpaintNetConfig
from cebench.pretrain.train import nets_and_optimizers
from cebench.runtime import Runtime, to_channels_last

from .timing import timed


def configs() -> dict[str, PretrainConfig]:
    """Name -> the config whose nets are timed (the paper's sizes and the demo's)."""
    return {
        "alexnet-ce-paper-227": PretrainConfig(method="ce", encoder=AlexNetConfig.paper(), mask="center",
                                               decoder_widths=(64, 64, 32, 32), decoder_layers=5),
        "inpaint-ce-paper-128": PretrainConfig(method="inpaint-adv", inpaint_net=InpaintNetConfig.paper()),
        "alexnet-supervised-paper-227": PretrainConfig(method="supervised", encoder=AlexNetConfig.paper()),
        "alexnet-ce-demo-64": PretrainConfig(method="ce", encoder=AlexNetConfig.demo(), mask="center"),
        "alexnet-supervised-demo-64": PretrainConfig(method="supervised", encoder=AlexNetConfig.demo()),
        "inpaint-ce-demo-64": PretrainConfig(method="inpaint-adv", inpaint_net=InpaintNetConfig()),
    }


def optimizer_name(opt) -> str:
    """"Adam (fused)": what the benchmark's optimiser is, for the record (the trainer's is fused)."""
    return f"{type(opt).__name__}{' (fused)' if opt.defaults.get('fused') else ''}"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class TrainerStep:
    """`run()` is one step of `cebench pretrain`'s trainer on a fixed synthetic batch."""

    run: Callable[[], tuple]
    objective: torch.nn.Module
    disc: torch.nn.Module | None
    opt_g: torch.optim.Optimizer


def trainer_step(cfg: PretrainConfig, rt: Runtime, batch: int, seed: int = 0) -> TrainerStep:
    """cfg's nets and optimisers built as the trainer builds them (`METHODS`, `nets_and_optimizers`),
    stepped by the trainer's `engine.train_step` on one seeded synthetic batch and one draw of the
    method's masks (the loop draws new ones each step; their cost is not what is timed here)."""
    torch.manual_seed(seed)
    built = METHODS[cfg.method](cfg, num_classes=20, silhouettes=None, device=rt.device)
    obj, disc, opt_g, opt_d = nets_and_optimizers(cfg, built, rt)
    size = built.input_size
    x = to_channels_last(torch.rand(batch, 3, size, size, device=rt.device), rt)  # [B,3,S,S] in [0, 1]
    mask = built.mask(batch, torch.Generator(device=rt.device).manual_seed(seed))
    labels = torch.randint(-1, 2, (batch, 20), device=rt.device).float()  # [B,20] VOC labels (-1, 0, 1)

    def run():
        return engine.train_step(obj, disc, opt_g, opt_d, x, mask, labels, rt, method=cfg.method, w_rec=cfg.w_rec,
                                 w_adv=cfg.w_adv)

    return TrainerStep(run, obj, disc, opt_g)


def bench_one(cfg: PretrainConfig, device, batch: int, steps: int, warmup: int = 1, amp: bool = False) -> dict:
    """img/s of `steps` trainer steps of `cfg`'s nets at `batch` (bf16 autocast when `amp`), peak memory,
    parameters, and the optimiser (the trainer's: fused Adam)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = _rss_mb()
    step = trainer_step(cfg, Runtime(dev, amp_dtype=torch.bfloat16 if amp else None, channels_last=True), batch)
    _, dt = timed(step.run, dev, repeat=steps, warmup=warmup)
    peak = (torch.cuda.max_memory_allocated() / 2**20) if dev.type == "cuda" else max(_rss_mb() - rss0, 0.0)
    return {"img_per_s": round(batch * steps / dt, 2), "batch": batch, "steps": steps, "seconds": round(dt, 3),
            "peak_mem_mb": round(peak, 1), "memory": "cuda max allocated" if dev.type == "cuda" else "RSS growth",
            "params": sum(p.numel() for p in step.objective.parameters()), "amp_bf16": amp,
            "threads": torch.get_num_threads(), "optimizer": optimizer_name(step.opt_g)}


def _bench_in_child(name: str, device: str, batch: int, steps: int, amp: bool) -> dict:
    # a fresh process per architecture, so the peak-RSS growth on CPU belongs to that architecture alone
    torch.set_num_threads(1)  # one-thread processes are how the demo runs on CPU
    return bench_one(configs()[name], device, batch, steps, amp=amp)


def _run_isolated(name: str, device: str, batch: int, steps: int, amp: bool) -> dict:
    if device != "cpu":
        return bench_one(configs()[name], device, batch, steps, amp=amp)
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_bench_in_child, (name, device, batch, steps, amp))


def bench_pretrain(out_path, device: str = "auto", archs=None, batch: int | None = None, steps: int | None = None,
                   quick: bool = False) -> dict:
    """Run every architecture (or those named in `archs`) on CPU and (when available) CUDA; write and
    return the JSON dict.

    On CPU each architecture runs in a fresh one-thread process (fp32, and bf16 autocast for the demo
    nets); on CUDA with bf16 autocast and channels_last.
    """
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and device in ("auto", "cuda") else [])
    if device == "cpu":
        devices = ["cpu"]
    result = {"host": platform.node(), "torch": torch.__version__, "results": {}}
    for dev in devices:
        for name in configs():
            if archs and name not in archs:
                continue
            b = batch or (64 if dev == "cuda" else (8 if "paper" in name else 64))
            s = steps or (20 if dev == "cuda" else (3 if "paper" in name else 10))
            if quick:
                b, s = min(b, 8), 1
            result["results"][f"{name}@{dev}"] = _run_isolated(name, dev, b, s, amp=dev == "cuda")
            if dev == "cpu" and "demo" in name and not quick:
                result["results"][f"{name}@cpu-bf16"] = _run_isolated(name, dev, b, s, amp=True)
            if dev == "cuda":
                result["gpu"] = torch.cuda.get_device_name()
    atomic_write_json(out_path, result)
    return result
