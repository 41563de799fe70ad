"""What every transfer task shares: the run context, init resolution and the magic-init batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from cebench.runtime import seed_everything

from .finetune import FinetuneRuntime, JobCheckpoint
from .inits import InitSpec, build_init, parse_init


@dataclass
class TaskContext:
    """Picklable context of one task run (sent to every job process)."""

    cfg: object                 # the task's config dataclass (ClsConfig / SegConfig / SvmConfig)
    root: str                   # VOCyyyy folder
    cache_dir: str              # in-memory split cache (.pt files)
    device: str = "cpu"
    arch: object = "demo"       # architecture of the random row: preset name or AlexNetConfig dict
    magic: str = "random"       # random | all | none (see build_init)
    magic_images: int = 64
    runtime: FinetuneRuntime = field(default_factory=FinetuneRuntime)  # AMP, checkpoints, memory budget
    out_dir: str = ""           # the command's output folder: jobs keep their `last` checkpoints there


def resolve_inits(items) -> list[InitSpec]:
    """`--init` strings, or a {name: checkpoint-or-empty} mapping -> InitSpecs (names unique)."""
    if isinstance(items, dict):
        items = [f"{k}={v}" if v else k for k, v in items.items()]
    specs = [parse_init(x) if isinstance(x, str) else x for x in items]
    seen = set()
    for s in specs:
        if s.name in seen:
            from cebench.errors import ConfigError

            raise ConfigError(f"--init {s.name!r} given twice")
        seen.add(s.name)
    return specs


def encoder_for_job(job, ctx: TaskContext, magic_batch: torch.Tensor | None):
    """Seeded encoder of the job's init (magic init on `magic_batch`, normalised images)."""
    seed_everything(job.seed)
    return build_init(job.init.kind, arch_cfg=ctx.arch, checkpoint=job.init.checkpoint,
                      data_for_magic_init=magic_batch, seed=job.seed, magic=ctx.magic)


def job_checkpoint(job, ctx) -> JobCheckpoint:
    """The fixed `last` checkpoint of one (task, init, seed, lr, phase) job, beside its result JSON; it
    carries the job's identity and config key, so only the same job resumes from it."""
    from .protocol import last_path

    key = {"key": job.key, "task": job.task, "init": job.init.name, "checkpoint": job.init.checkpoint,
           "seed": job.seed, "lr": job.lr, "phase": job.phase, "fit": job.fit_split, "eval": job.eval_split}
    return JobCheckpoint(last_path(ctx.out_dir, job) if ctx.out_dir else None, key, ctx.runtime.ckpt_every)
