"""The fine-tuning driver that classification, segmentation and detection share (written once).

- `FinetuneRuntime` (the `runtime:` keys of `transfer` and `det`): AMP, checkpoint interval, in-memory
  budget, DataLoader workers.
- `job_runtime`: the one `cebench.runtime.Runtime` of a job process (device, bf16 autocast and
  channels_last on CUDA, fp32 on CPU unless amp=bf16; under torchrun the rank and DDP).
- `open_split`: a VOC split held in memory (`MemorySplit`, the cached uint8 tensors) or, when it does not
  fit `memory_mb`, streamed from disk by DataLoader workers (`DiskSplit`); `train_stream` the seeded
  training batches over either, resumable.
- `fit`: the iterations of one job through `engine.train_one_epoch`, under DDP when distributed, with a
  checkpoint every `ckpt_every` iterations and on SIGTERM / SIGINT at a fixed `last` path (unwrapped model,
  optimizer, scheduler, scaler, step, every RNG and data-order state, the job's key); a rerun of the job
  resumes there and ends with the numbers of an uninterrupted run.
- `shard` / `gather`: evaluation split over the processes (each test image scored by exactly one rank),
  results all-reduced or gathered, so every image counts once.

A test hook (`CEBENCH_TEST_SIGNAL_AT="KILL:5"` or `"TERM:3"`) makes a job signal itself before that
iteration, to test resumption after a hard kill or a preemption.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist

from cebench.checkpoint import load_checkpoint, save_checkpoint
from cebench.errors import CheckpointError, ConfigError
from cebench.logs import get_logger
from cebench.runtime import Runtime, autocast_context, init_runtime, to_channels_last, unwrap_model, wrap_ddp

from .data import DiskSplit, load_split, split_bytes
from .engine import TensorBatches, train_one_epoch

log = get_logger("cebench.transfer")

TEST_SIGNAL_ENV = "CEBENCH_TEST_SIGNAL_AT"


@dataclass
class FinetuneRuntime:
    amp: str = "auto"             # auto: bf16 autocast on CUDA, fp32 elsewhere | bf16 | none
    ckpt_every: int = 0           # iterations between checkpoints of a job (0: none; SIGTERM still saves)
    memory_mb: float = 4096.0     # a split larger than this (uint8 at load_size) streams from disk
    loader_workers: int = 0       # DataLoader processes decoding streamed splits and detection images


class Preempted(KeyboardInterrupt):
    """SIGTERM or SIGINT during fine-tuning: the job saved its `last` checkpoint and stops; rerun to resume."""


def job_runtime(rt_cfg: FinetuneRuntime, device: str) -> Runtime:
    """The runtime of this process (chosen once; idempotent under torchrun)."""
    return init_runtime(device, rt_cfg.amp)


# ------------------------------------------------------------------------------------------------ data
class MemorySplit:
    """A split as in-memory tensors: images uint8 [N,3,S,S] and labels [N,C] or masks [N,S,S]."""

    def __init__(self, data: dict, kind: str):
        self.kind = kind
        self.classes = data["classes"]
        self.tensors = (data["images"], data["labels"] if kind == "cls" else data["masks"])
        self.labels = data.get("labels")

    def __len__(self) -> int:
        return int(self.tensors[0].shape[0])

    def first(self, k: int) -> torch.Tensor:
        return self.tensors[0][:k]

    def batches(self, index_lists: Iterable[list[int]], workers: int = 0):
        for idx in index_lists:
            yield tuple(t[idx] for t in self.tensors)


class StreamedSplit:
    """A split decoded from disk by `workers` DataLoader processes (same pixels as `MemorySplit`)."""

    def __init__(self, ds: DiskSplit):
        self.ds, self.kind, self.classes, self.labels = ds, ds.kind, ds.classes, ds.labels

    def __len__(self) -> int:
        return len(self.ds)

    def first(self, k: int) -> torch.Tensor:
        return torch.stack([self.ds[i][0] for i in range(min(k, len(self.ds)))])

    def batches(self, index_lists: Iterable[list[int]], workers: int = 0):
        lists = [list(map(int, x)) for x in index_lists]
        if not lists:
            return iter(())
        return iter(loader(self.ds, lists, workers))


def loader(ds, index_lists, workers: int, collate_fn=None) -> torch.utils.data.DataLoader:
    """A DataLoader over given batches of indices. Its own generator: a loader started at another
    iteration (after a resumption) must not draw from the global RNG, which dropout uses."""
    return torch.utils.data.DataLoader(ds, batch_sampler=index_lists, num_workers=workers, collate_fn=collate_fn,
                                       generator=torch.Generator().manual_seed(0), persistent_workers=False)


def open_split(root, split: str, *, kind: str, load_size: int, cache_dir, rt_cfg: FinetuneRuntime, classes=None):
    """The split in memory when it fits `rt_cfg.memory_mb`, else streamed from disk. `classes`:
    data.classes (None = the tree's own list)."""
    if split_bytes(root, split, kind, load_size) <= rt_cfg.memory_mb * 2**20:
        return MemorySplit(load_split(root, split, kind=kind, load_size=load_size, cache_dir=cache_dir,
                                      classes=classes), kind)
    log.info("%s split %s at %d px exceeds transfer.runtime.memory_mb=%g: streaming it from disk", kind, split,
             load_size, rt_cfg.memory_mb)
    return StreamedSplit(DiskSplit(root, split, kind=kind, load_size=load_size, classes=classes))


class StreamBatches:
    """Seeded training batches read from a streamed split: pass p visits a permutation drawn from
    (seed, p) in full batches, so the batches of any step are known ahead (the DataLoader prefetches
    them) and the state is the step count plus the augmentation generator. Under DDP each rank keeps
    the slice [rank::world] of every global batch."""

    def __init__(self, split: StreamedSplit, batch_size: int, *, seed: int, augment: Callable | None,
                 device, rank: int = 0, world: int = 1, workers: int = 0):
        self.split, self.n = split, len(split)
        self.batch_size = min(int(batch_size), self.n)
        if world > 1 and self.batch_size % world:
            raise ConfigError(f"batch size {self.batch_size} is not divisible by the {world} processes")
        self.seed, self.rank, self.world, self.workers = int(seed), int(rank), int(world), int(workers)
        self.aug_gen = torch.Generator().manual_seed(self.seed * 1000 + 11 + rank)
        self.augment, self.device, self.step = augment, torch.device(device), 0

    def _indices(self, step: int) -> list[int]:
        per_pass = self.n // self.batch_size
        p, k = divmod(step, per_pass)
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1000003 + p))
        return perm[k * self.batch_size:(k + 1) * self.batch_size][self.rank::self.world].tolist()

    def take(self, k: int):
        start, k = self.step, int(k)
        for batch in self.split.batches([self._indices(s) for s in range(start, start + k)], self.workers):
            self.step += 1
            batch = tuple(t.to(self.device, non_blocking=True) for t in batch)
            yield self.augment(batch, self.aug_gen) if self.augment is not None else batch

    def state_dict(self) -> dict:
        return {"step": self.step, "aug_gen": self.aug_gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.aug_gen.set_state(state["aug_gen"])


def train_stream(split, batch_size: int, *, seed: int, augment, rt: Runtime, rt_cfg: FinetuneRuntime):
    """The training batches of a job: `TensorBatches` over a split in memory (the numbers of every
    earlier run), `StreamBatches` over one streamed from disk."""
    if isinstance(split, MemorySplit):
        return TensorBatches(split.tensors, batch_size, seed=seed, augment=augment, device=rt.device,
                             rank=rt.rank, world=rt.world_size)
    return StreamBatches(split, batch_size, seed=seed, augment=augment, device=rt.device, rank=rt.rank,
                         world=rt.world_size, workers=rt_cfg.loader_workers)


# ----------------------------------------------------------------------------------------- evaluation
def shard(items: list, rt: Runtime) -> list:
    """This rank's share of `items` (every item on exactly one rank)."""
    return items[rt.rank::rt.world_size] if rt.distributed else items


def all_reduce_(t: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """Sum over the ranks, in place (the tensor on the collective's device and back)."""
    if rt.distributed:
        dev = t.device
        u = t.to(rt.device) if rt.device.type == "cuda" else t
        dist.all_reduce(u, op=dist.ReduceOp.SUM)
        if u is not t:
            t.copy_(u.to(dev))
    return t


def gather(objs: list, rt: Runtime) -> list:
    """The lists of every rank, concatenated in rank order (picklable objects)."""
    if not rt.distributed:
        return objs
    parts = [None] * rt.world_size
    dist.all_gather_object(parts, objs)
    return [o for part in parts for o in part]


# ----------------------------------------------------------------------------------------- checkpoint
def _rng_state() -> dict:
    npk = np.random.get_state()
    out = {"torch": torch.get_rng_state(), "python": random.getstate(),
           "numpy": {"keys": torch.from_numpy(npk[1].astype(np.int64)), "pos": int(npk[2]),
                     "has_gauss": int(npk[3]), "cached": float(npk[4])}}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    v, keys, g = state["python"]
    random.setstate((v, tuple(keys), g))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class JobCheckpoint:
    """The fixed `last` path of one job and the key its checkpoint must carry to be resumed."""

    path: Path | None
    key: dict
    every: int = 0

    def load(self, rt: Runtime) -> dict | None:
        if self.path is None or not self.path.is_file():
            return None
        ck = load_checkpoint(self.path)
        if ck.get("config") != self.key:
            log.warning("%s: written for another job configuration; starting this job afresh", self.path)
            return None
        if int(ck.get("world_size", 1)) != rt.world_size:
            raise CheckpointError(f"{self.path}: written by {ck.get('world_size')} processes, resumed with "
                                  f"{rt.world_size}; use the same number or delete it")
        return ck

    def save(self, state: dict, rt: Runtime) -> None:
        per_rank = gather([state.pop("per_rank")], rt)  # every rank's data-order and RNG state
        if rt.is_main and self.path is not None:
            save_checkpoint(self.path, {**state, "per_rank": per_rank, "config": self.key,
                                        "world_size": rt.world_size, "epoch": 0})
        if rt.distributed:
            dist.barrier()


@contextlib.contextmanager
def _sigterm_flag():
    """A flag set by SIGTERM (a preemption, `cebench run` stopping its jobs) or SIGINT (Ctrl-C reaches
    every job of a terminal) while fine-tuning; the default actions elsewhere."""
    flag = {"set": False}
    previous = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: flag.__setitem__("set", True))
    except ValueError:  # not the main thread: no handler, no graceful stop
        pass
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _test_signal() -> tuple[int, int] | None:
    spec = os.environ.get(TEST_SIGNAL_ENV, "")
    if not spec:
        return None
    name, _, step = spec.partition(":")
    return {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM}[name.upper()], int(step)


def _until_stop(batches, flag, rt: Runtime, step0: int, hook):
    """Yield `batches` until SIGTERM (agreed over the ranks, so all stop at the same iteration). The
    flag is checked before the next batch is drawn: a saved stream state holds no untrained batch."""
    it, step = iter(batches), step0
    while True:
        if hook is not None and step == hook[1]:
            os.kill(os.getpid(), hook[0])
        stop = torch.tensor([1.0 if flag["set"] else 0.0])
        if all_reduce_(stop, rt).item() > 0:
            return
        try:
            batch = next(it)
        except StopIteration:
            return
        yield batch
        step += 1


def fit(model: torch.nn.Module, stream, loss_fn: Callable, optimizer, scheduler, *, iterations: int,
        rt: Runtime, ckpt: JobCheckpoint, grad_clip: float = 0.0, generators: dict | None = None,
        log_fn=None, log_every: int = 50) -> dict:
    """Train `model` (placed on rt.device) for `iterations`, resuming from `ckpt`; returns the means of
    the named losses over all iterations (also those before a resumption) and the throughput.

    `loss_fn(model, batch)` runs under the runtime's autocast; `generators` are extra torch Generators
    whose states belong to the job (e.g. detection's RoI sampling). The model is wrapped in DDP when
    distributed and handed back unwrapped."""
    generators = generators or {}
    done, sums, inputs = 0, {}, {}
    ck = ckpt.load(rt)
    core = unwrap_model(model)
    if ck is not None:
        core.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if scheduler is not None and ck.get("scheduler") is not None:
            scheduler.load_state_dict(ck["scheduler"])
        mine = ck["per_rank"][rt.rank]
        stream.load_state_dict(mine["stream"])
        for name, g in generators.items():
            g.set_state(mine["generators"][name])
        _set_rng_state(mine["rng"])
        done, sums, inputs = int(ck["step"]), dict(ck["sums"]), dict(ck.get("inputs") or {})
        log.info("resumed from %s at iteration %d of %d", ckpt.path, done, iterations)
    ddp = wrap_ddp(model, rt)

    def amp_loss(m, batch):
        if not inputs:  # what the net sees, for the record (e.g. [16, 3, 227, 227])
            inputs["train"] = list(batch[0].shape)
        with autocast_context(rt):
            return loss_fn(m, batch)

    def state(step: int) -> dict:
        return {"model": core.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None, "scaler": None,
                "step": step, "sums": sums, "inputs": inputs,
                "per_rank": {"stream": stream.state_dict(), "rng": _rng_state(),
                             "generators": {n: g.get_state() for n, g in generators.items()}}}

    seconds, images, hook = 0.0, 0, _test_signal()
    with _sigterm_flag() as flag:
        while done < iterations:
            every = ckpt.every if ckpt.every > 0 and ckpt.path is not None else iterations
            k = min((done // every + 1) * every, iterations) - done
            stats = train_one_epoch(ddp, _until_stop(stream.take(k), flag, rt, done, hook), amp_loss, optimizer,
                                    scheduler, grad_clip=grad_clip, step0=done, log=log_fn, log_every=log_every)
            n = int(stats["iterations"])
            for name in stats:
                if name not in ("iterations", "images", "seconds", "images_per_s"):
                    sums[name] = sums.get(name, 0.0) + stats[name] * n
            done, seconds, images = done + n, seconds + stats["seconds"], images + stats["images"]
            if n < k:  # SIGTERM / SIGINT (the ranks agreed to stop): save where we are and stop
                ckpt.save(state(done), rt)
                raise Preempted(f"fine-tuning stopped by a signal at iteration {done}; saved {ckpt.path}")
            if ckpt.path is not None and ckpt.every > 0 and done < iterations:
                ckpt.save(state(done), rt)
    del ddp
    out = {k: v / max(done, 1) for k, v in sums.items()}
    out.update(iterations=done, images=images, seconds=seconds,
               images_per_s=images / seconds if seconds > 0 else float("nan"), inputs=inputs)
    return out


def prepare(model: torch.nn.Module, rt: Runtime) -> torch.nn.Module:
    """The model on the job's device in the runtime's memory format (channels_last by default)."""
    return to_channels_last(model.to(rt.device), rt)


__all__ = ["FinetuneRuntime", "Preempted", "job_runtime", "loader", "MemorySplit", "StreamedSplit", "open_split",
           "StreamBatches", "train_stream", "shard", "all_reduce_", "gather", "JobCheckpoint", "fit", "prepare",
           "TEST_SIGNAL_ENV"]
