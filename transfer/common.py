"""What every transfer task shares: the run context and runtime, init resolution, the random row's
architecture, and the pieces of a job - its splits, its seeded encoder, and what it keeps around its
training loop (checkpointer, DDP wrapper, training curve: `job_training`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cebench.cache import cache_key
from cebench.checkpoint import CheckpointSaver, load_checkpoint
from cebench.errors import CheckpointError, ConfigError
from cebench.logs import JsonlLogger
from cebench.runtime import Runtime, init_runtime, is_main_process, seed_everything, wrap_ddp

from .data import load_split, open_split
from .inits import InitSpec, build_init, parse_init
from .protocol import job_path, last_path, metrics_path


@dataclass
class FinetuneRuntime:
    """The `transfer.runtime` keys: precision, checkpoints, memory budget, DataLoader workers."""

    amp: str = "auto"             # auto: bf16 autocast on CUDA, fp32 elsewhere | bf16 | none
    ckpt_every: int = 0           # iterations between checkpoints of a job (0: none; SIGTERM still saves)
    memory_mb: float = 4096.0     # a split larger than this (uint8 at load_size) streams from disk
    loader_workers: int = 0       # DataLoader processes decoding streamed splits and detection images


def job_runtime(rt_cfg: FinetuneRuntime, device: str) -> Runtime:
    """The runtime of this process (device, bf16 autocast and channels_last on CUDA, fp32 on CPU unless
    amp=bf16; under torchrun the rank and DDP), chosen once; idempotent under torchrun."""
    return init_runtime(device, rt_cfg.amp)


@dataclass
class TaskContext:
    """Picklable context of one task run (sent to every job process)."""

    cfg: object                 # the task's config dataclass (ClsConfig / SegConfig / SvmConfig / DetConfig)
    root: str                   # VOCyyyy folder
    cache_dir: str              # decoded-split cache folder (.pt files; never inside the data)
    device: str = "cpu"
    arch: object = "demo"       # architecture of the random row: preset name or AlexNetConfig dict
    magic: str = "random"       # random | all | none (see build_init)
    magic_images: int = 64
    runtime: FinetuneRuntime = field(default_factory=FinetuneRuntime)  # AMP, checkpoints, memory budget
    out_dir: str = ""           # the command's output folder: jobs keep their `last` checkpoints there
    classes: tuple | None = None  # data.classes resolved once by the command; None = the tree's own list
    log_every: int = 10         # training metrics every this many iterations (the job's .metrics.jsonl)
    tensorboard: bool = False   # mirror them to TensorBoard (out/tensorboard/...)


def resolve_inits(items) -> list[InitSpec]:
    """`--init` strings, or a {name: checkpoint-or-empty} mapping -> InitSpecs (names unique)."""
    if isinstance(items, dict):
        items = [f"{k}={v}" if v else k for k, v in items.items()]
    specs = [parse_init(x) if isinstance(x, str) else x for x in items]
    seen = set()
    for s in specs:
        if s.name in seen:
            raise ConfigError(f"--init {s.name!r} given twice")
        seen.add(s.name)
    return specs


def arch_for(arch, inits: list[InitSpec]):
    """The random row's architecture: the preset, or with arch=auto that of the first checkpoint."""
    if arch != "auto":
        return arch
    for spec in inits:
        if spec.checkpoint and spec.kind != "imagenet":
            arch = load_checkpoint(spec.checkpoint).get("arch")
            if not isinstance(arch, dict) or not isinstance(arch.get("encoder"), dict):
                raise CheckpointError(f"{spec.checkpoint}: no AlexNet encoder in this checkpoint (arch has no "
                                      f"'encoder' entry; a bare state_dict? save it with "
                                      f"cebench.pretrain.loading.save_encoder_checkpoint)")
            return dict(arch["encoder"])
    return "demo"


def job_splits(job, ctx: TaskContext, kind: str) -> tuple[dict, dict]:
    """The job's fit and eval splits in memory (`data.load_split`, kind cls | seg) at the task's load_size."""
    return tuple(load_split(ctx.root, split, kind=kind, load_size=ctx.cfg.load_size, cache_dir=ctx.cache_dir,
                            classes=ctx.classes) for split in (job.fit_split, job.eval_split))


def job_sources(job, ctx: TaskContext, kind: str):
    """The fit and eval splits of a fine-tuning job (kind cls | seg): in memory when they fit
    `transfer.runtime.memory_mb`, else streamed from disk (`data.open_split`)."""
    return tuple(open_split(ctx.root, split, kind=kind, load_size=ctx.cfg.load_size, cache_dir=ctx.cache_dir,
                            memory_mb=ctx.runtime.memory_mb, classes=ctx.classes)
                 for split in (job.fit_split, job.eval_split))


def encoder_for_job(job, ctx: TaskContext, magic_batch: torch.Tensor | None):
    """Seeded encoder of the job's init (magic init on `magic_batch`, normalised images)."""
    seed_everything(job.seed)
    return build_init(job.init.kind, arch_cfg=ctx.arch, checkpoint=job.init.checkpoint,
                      data_for_magic_init=magic_batch, seed=job.seed, magic=ctx.magic)


@contextlib.contextmanager
def job_training(job, ctx: TaskContext, rt: Runtime, model, optimizer, scheduler, stream, generators=None):
    """What a fine-tuning job keeps around its training loop, as (saver, ddp, log):

    - `saver`, its `cebench.checkpoint.CheckpointSaver` over `ctx.cfg.iterations`: the fixed `last` file beside
      the job's record (none without an output folder), saved every `transfer.runtime.ckpt_every` iterations
      and on SIGTERM / SIGINT, keyed by the cache key of the job's identity and config key so that only the
      same job resumes from it; entered here, so the job has resumed when its loop starts;
    - `ddp`, the model wrapped for DDP after the resumption (the model itself in one process);
    - `log(**metrics)`, one line of the job's training curve (`protocol.metrics_path`) per call, mirrored to
      TensorBoard under out/tensorboard/<task>/<init>/<phase>_lr<lr>_seed<s>/ when `ctx.tensorboard`; one
      rank writes, nothing is written without an output folder, a resumed job continues its curve.
    `generators`: the job's own torch Generators, saved with it (detection's RoI sampling)."""
    key = cache_key({"key": job.key, "task": job.task, "init": job.init.name, "checkpoint": job.init.checkpoint,
                     "seed": job.seed, "lr": job.lr, "phase": job.phase, "fit": job.fit_split, "eval": job.eval_split})
    out = Path(ctx.out_dir) if ctx.out_dir else None
    saver = CheckpointSaver(last_path(out, job) if out is not None else None, key, rt, iterations=ctx.cfg.iterations,
                            model=model, optimizer=optimizer, scheduler=scheduler, stream=stream, generators=generators,
                            every=ctx.runtime.ckpt_every)
    tb = None
    if out is not None and ctx.tensorboard:
        tb = out / "tensorboard" / job_path(out, job).relative_to(out / "jobs").with_suffix("")
    logger = JsonlLogger(metrics_path(out or ".", job), tensorboard_dir=tb,
                         enabled=out is not None and is_main_process())
    try:
        with saver:
            yield saver, wrap_ddp(model, rt), logger.log
    finally:
        logger.close()
