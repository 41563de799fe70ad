"""`cebench bench pretrain`: training images/s and peak memory of each architecture at its real size.

One timed training step = forward, loss, backward, Adam step (the discriminator step too for the
adversarial nets), after `warmup` untimed steps; synthetic inputs, so only the compute is measured.
Peak memory: torch.cuda.max_memory_allocated on GPU, the process's peak RSS growth on CPU.
"""

from __future__ import annotations

import multiprocessing as mp
import platform
import resource

import torch

from cebench.io import atomic_write_json
from cebench.runtime import Runtime, place_model, timed_steps

from .engine import make_adam
from .engine import train_step as engine_step
from .masks import center_mask
from .models import (
    AlexNetConfig,
    ContextEncoder,
    Discriminator,
    InpaintingCE,
    InpaintNetConfig,
    SupervisedNet,
)
from .objectives import InpaintObjective, ReconstructionObjective, SupervisedObjective


def _archs():
    return {
        "alexnet-ce-paper-227": lambda: (ReconstructionObjective(ContextEncoder(AlexNetConfig.paper())), None, 227),
        "inpaint-ce-paper-128": lambda: (InpaintObjective(InpaintingCE(InpaintNetConfig.paper())),
                                         Discriminator(InpaintNetConfig.paper().disc_widths), 128),
        "alexnet-supervised-paper-227": lambda: (SupervisedObjective(SupervisedNet(AlexNetConfig.paper())), None, 227),
        "alexnet-ce-demo-64": lambda: (ReconstructionObjective(ContextEncoder(
            AlexNetConfig.demo(), decoder_widths=(64, 32, 16), decoder_layers=4)), None, 64),
        "alexnet-supervised-demo-64": lambda: (SupervisedObjective(SupervisedNet(AlexNetConfig.demo())), None, 64),
        "inpaint-ce-demo-64": lambda: (InpaintObjective(InpaintingCE(InpaintNetConfig())),
                                       Discriminator(InpaintNetConfig().disc_widths), 64),
    }


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_one(build, device, batch: int, steps: int, warmup: int = 1, amp: bool = False) -> dict:
    obj, disc, size = build()
    obj, dev = place_model(obj, device), torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    disc = place_model(disc, device) if disc is not None else None
    opt = make_adam(obj.parameters(), 2e-4, 0.5)
    opt_d = make_adam(disc.parameters(), 2e-5, 0.5) if disc is not None else None
    x = torch.rand(batch, 3, size, size, device=device)
    mask = center_mask(batch, size, device)
    labels = torch.randint(-1, 2, (batch, 20), device=device).float()
    rss0 = _rss_mb()
    rt = Runtime(dev, amp_dtype=torch.bfloat16 if amp else None, channels_last=True)

    def train_step():  # the trainer's own step (pretrain.engine.train_step)
        engine_step(obj, disc, opt, opt_d, x, mask, labels, rt)

    dt = timed_steps(train_step, steps, warmup, dev)
    peak = (torch.cuda.max_memory_allocated() / 2**20) if dev.type == "cuda" else max(_rss_mb() - rss0, 0.0)
    return {"img_per_s": round(batch * steps / dt, 2), "batch": batch, "steps": steps, "seconds": round(dt, 3),
            "peak_mem_mb": round(peak, 1), "memory": "cuda max allocated" if dev.type == "cuda" else "RSS growth",
            "params": sum(p.numel() for p in obj.parameters()), "amp_bf16": amp, "threads": torch.get_num_threads()}


def _bench_in_child(name: str, device: str, batch: int, steps: int, amp: bool) -> dict:
    # a fresh process per architecture, so the peak-RSS growth on CPU belongs to that architecture alone
    torch.set_num_threads(1)  # one-thread processes are how the demo runs on CPU
    return bench_one(_archs()[name], device, batch, steps, amp=amp)


def _run_isolated(name: str, device: str, batch: int, steps: int, amp: bool) -> dict:
    if device != "cpu":
        return bench_one(_archs()[name], device, batch, steps, amp=amp)
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_bench_in_child, (name, device, batch, steps, amp))


def bench_pretrain(out_path, device: str = "auto", archs=None, batch: int | None = None, steps: int | None = None,
                   quick: bool = False) -> dict:
    """Run every architecture on CPU and (when available) CUDA; write and return the JSON dict.

    On CPU each architecture runs in a fresh one-thread process (fp32, and bf16 autocast for the demo
    nets, which this machine's EPYC supports); on CUDA with bf16 autocast and channels_last.
    """
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and device in ("auto", "cuda") else [])
    if device == "cpu":
        devices = ["cpu"]
    result = {"host": platform.node(), "torch": torch.__version__, "results": {}}
    for dev in devices:
        for name, build in _archs().items():
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
