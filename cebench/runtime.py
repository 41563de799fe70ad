"""One runtime: torchrun env -> DDP, or one local process; device, AMP, seeding, channels_last.

`init_runtime` is called once per process by a stage's `main`; everything else takes the returned
`Runtime`. AMP is chosen once as a context (bf16 autocast on CUDA, or on CPU when asked) so training
loops never branch on the device. `machine_info` says what a run or a measurement ran on.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import math
import os
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from . import __version__
from .errors import CebenchError, ConfigError, NonFiniteLossError


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def choose_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """The one device resolver: "auto" -> cuda:LOCAL_RANK, else mps, else cpu; "cuda" -> cuda:LOCAL_RANK;
    any torch device string or torch.device as given (a clear error when CUDA is asked for and absent)."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CebenchError("device=cuda requested but no CUDA device is available")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


AMP_CHOICES = ("auto", "bf16", "none")


def cpu_bf16_native() -> bool:
    """True where oneDNN computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated
    and slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def probe_cpu_bf16(rounds: int = 6, min_speedup: float = 1.3) -> dict:
    """The start-up probe behind amp=auto on CPU: a training step (forward + backward) of a small
    convolution stack shaped like the demo AlexNet's conv2..conv3 (batch 32, 32->64->96 channels,
    16x16 and 8x8 maps, channels_last), timed in fp32 and under bf16 autocast, the two alternating
    `rounds` times (best of each, so a busy neighbour slows both alike). bf16 is chosen only where the
    CPU computes it natively and it is at least `min_speedup` times faster. About 0.3 s.

    Returns {"choice": "bf16" | "none", "native_bf16": bool, "fp32_ms": .., "bf16_ms": .., "speedup": ..}.
    """
    native = cpu_bf16_native()
    out = {"choice": "none", "native_bf16": native, "fp32_ms": None, "bf16_ms": None, "speedup": None}
    if not native:
        return out
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 32, 16, 16, generator=gen).contiguous(memory_format=torch.channels_last)
    w2 = torch.randn(64, 32, 5, 5, generator=gen).mul_(0.03).contiguous(memory_format=torch.channels_last)
    w3 = torch.randn(96, 64, 3, 3, generator=gen).mul_(0.04).contiguous(memory_format=torch.channels_last)
    w2.requires_grad_(True)
    w3.requires_grad_(True)

    def step(bf16: bool) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            h = torch.nn.functional.conv2d(x, w2, padding=2).relu()           # [32, 64, 16, 16]
            h = torch.nn.functional.max_pool2d(h, 3, 2, 1)                   # [32, 64, 8, 8]
            h = torch.nn.functional.conv2d(h, w3, padding=1).relu()          # [32, 96, 8, 8]
        h.float().square().mean().backward()
        w2.grad = w3.grad = None
        return time.perf_counter() - t0

    step(False), step(True)  # warm-up: oneDNN builds its kernels
    best = {False: math.inf, True: math.inf}
    for _ in range(max(1, rounds)):
        for mode in (False, True):
            best[mode] = min(best[mode], step(mode))
    speedup = best[False] / best[True]
    out.update(fp32_ms=round(1000 * best[False], 2), bf16_ms=round(1000 * best[True], 2), speedup=round(speedup, 2),
               choice="bf16" if speedup >= min_speedup else "none")
    return out


CPU_AMP_ENV = "CEBENCH_CPU_AMP"


def cpu_amp() -> dict:
    """What amp=auto means on this CPU: $CEBENCH_CPU_AMP (bf16 | none) when set - a pin, for bit-for-bit
    reruns on a machine whose load could tip the probe - else `probe_cpu_bf16()`'s verdict."""
    pinned = os.environ.get(CPU_AMP_ENV, "").strip().lower()
    if pinned:
        if pinned not in ("bf16", "none"):
            raise ConfigError(f"${CPU_AMP_ENV} must be bf16 or none, got {pinned!r}")
        return {"choice": pinned, "pinned_by": CPU_AMP_ENV}
    return probe_cpu_bf16()


def resolve_amp(amp: str, device) -> str:
    """"auto" -> "bf16" on CUDA; on CPU the probe's choice (`cpu_amp`); "none" elsewhere.
    "bf16" and "none" are returned as given. A stage's `main` resolves once and passes the result on,
    so a process probes at most once and a cache key names the precision that ran."""
    if amp in ("fp32", "off"):
        return "none"
    if amp not in AMP_CHOICES:
        raise ConfigError(f"amp must be auto, bf16 or none, got {amp!r}")
    if amp != "auto":
        return amp
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda":
        return "bf16"
    if dev.type == "cpu":
        return cpu_amp()["choice"]
    return "none"


def init_runtime(device: str = "auto", amp: str = "auto", channels_last: bool | None = None) -> Runtime:
    """Read the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK); fall back to one process.

    amp: "auto" (bf16 on CUDA; on CPU bf16 where the start-up probe finds it native and faster, see
    `resolve_amp`), "bf16" (also on CPU), "none".
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = choose_device(device, local_rank)
    distributed = world_size > 1
    if distributed and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    amp_dtype = torch.bfloat16 if resolve_amp(amp, dev) == "bf16" else None
    use_cl = True if channels_last is None else channels_last  # faster on cuDNN and on oneDNN (CPU) alike
    return Runtime(dev, rank, world_size, local_rank, distributed, amp_dtype, use_cl)


def autocast_context(rt: Runtime):
    """The one AMP context of a run: autocast in bf16, or a no-op context."""
    if rt.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=rt.device.type, dtype=rt.amp_dtype)


def place_model(model: torch.nn.Module, device, channels_last: bool = True) -> torch.nn.Module:
    """Model to `device`, its 4-D weights in channels_last: convolutions then run in NHWC, the format
    cuDNN (GPU) prefers; on this project's CPU an interleaved micro-benchmark of the demo AlexNet's
    training step gave 1.1-1.25x, within the run-to-run spread of `cebench bench` there. Inputs may stay
    contiguous; the output format follows the weights."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def seed_everything(seed: int, rank: int = 0) -> None:
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)


def set_cpu_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(int(n))


def to_channels_last(x, rt: Runtime):
    """Model or 4-D tensor to channels_last when the runtime uses it (the default), else unchanged."""
    if not rt.channels_last:
        return x
    if isinstance(x, torch.nn.Module):
        return x.to(memory_format=torch.channels_last)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def wrap_ddp(model: torch.nn.Module, rt: Runtime, **kwargs) -> torch.nn.Module:
    if not rt.distributed:
        return model
    ids = [rt.device.index] if rt.device.type == "cuda" else None
    return DDP(model, device_ids=ids, **kwargs)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """True in a single process and on rank 0 under torchrun (the process that writes shared files)."""
    return not is_dist() or dist.get_rank() == 0


def barrier(rt: Runtime | None = None) -> None:
    if is_dist():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, rt: Runtime | None = None) -> torch.Tensor:
    """The sum of `t` over the processes of `rt` (over the process group when `rt` is None): a new tensor on
    `t`'s device, or `t` itself in one process. NCCL reduces CUDA tensors only, so a CPU tensor (a metric's
    counts) goes through the CUDA device of `rt` and back."""
    if not (rt.distributed if rt is not None else is_dist()):
        return t
    u = t.to(rt.device, copy=True) if rt is not None and rt.device.type == "cuda" else t.clone()
    dist.all_reduce(u, op=dist.ReduceOp.SUM)
    return u.to(t.device)


def gather(objs: list, rt: Runtime) -> list:
    """The lists of every rank, concatenated in rank order (picklable objects); `objs` in one process."""
    if not rt.distributed:
        return objs
    parts = [None] * rt.world_size
    dist.all_gather_object(parts, objs)
    return [o for part in parts for o in part]


def shard(items: list, rt: Runtime) -> list:
    """This rank's share of `items` (every item on exactly one rank): a sharded evaluation scores each image
    once, then sums (`all_reduce_sum`) or gathers (`gather`) what the ranks found."""
    return items[rt.rank::rt.world_size] if rt.distributed else items


def check_finite(losses: dict, step: int, what: str, advice: str) -> None:
    """Stop a run whose loss went NaN or infinite, in one line naming the terms: NonFiniteLossError
    "non-finite loss at step 5 (ce: rec=nan); <advice>". `losses`: {name: scalar tensor}, checked with one
    device sync for all of them. Pretraining and fine-tuning call it after every forward."""
    vals = torch.stack([v.detach().float() for v in losses.values()])
    if not bool(torch.isfinite(vals).all()):
        bad = {k: float(v.detach()) for k, v in losses.items() if not math.isfinite(float(v.detach()))}
        desc = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise NonFiniteLossError(f"non-finite loss at step {step} ({what}: {desc}); {advice}")


def cleanup(rt: Runtime | None = None) -> None:
    """Tear the process group down once every rank is done: without the barrier a rank that
    finishes first can destroy its Gloo context while the other's last collective is still in
    flight, and the process aborts at exit ("terminate called without an active exception").

    A DDP wrapper sits in reference cycles (its hooks point back at it), so dropping the last name
    does not free it; one that survives until interpreter shutdown, after the group is gone, aborted
    the same way in about 1 run in 4 on 2 busy cores (torch 2.14.1, Gloo). So drop the wrappers
    before this call (keep them in the training function's frame, as `pretrain.train` does) and the
    collection here frees them while the group still exists."""
    if is_dist():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def machine_info() -> dict:
    """What a measurement or a run ran on: versions (cebench, Python, torch and its CUDA build,
    torchvision), platform, CPU model and count, the GPU in use (None without CUDA)."""
    import torchvision  # here, not at the top: the runtime is imported by every process, this by few

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cebench": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,  # the CUDA torch was built with (None: a CPU build)
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,  # the GPU in use
        "torchvision": torchvision.__version__,
    }
