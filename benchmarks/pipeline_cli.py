"""`cebench run`: registration of the pipeline command."""

from __future__ import annotations

import argparse
from pathlib import Path

from cebench.cliutil import add_cache_arg
from cebench.errors import ConfigError

from .pipeline import main

PLACEMENT_HELP = """\
where the jobs run (SECTION.key=value overrides of the `run` section):
  run.parallel=N        jobs side by side (default: one per CPU core on CPU, one per GPU on GPUs)
  run.jobs_per_gpu=N    jobs sharing one GPU (default 1)
  run.pretrain_gpus=K   each pretraining on K GPUs: torchrun with K DDP processes (pretrain.batch_size
                        is per GPU, so a step sees K x batch_size images; set batch_size=64/K for the
                        paper's 64); other jobs wait for free GPUs
  run.executor=local    subprocesses on this machine; every visible GPU (CUDA_VISIBLE_DEVICES) gets
                        its own job, which sees only its GPU
  run.executor=slurm    each job one SLURM job through submitit (pip install 'cebench[cluster]'), same
                        command, cache and resume; preempted jobs requeue and resume from their
                        checkpoint. run.slurm.partition=P run.slurm.gpus_per_node=1
                        run.slurm.cpus_per_task=8 run.slurm.timeout_min=720 run.slurm.mem_gb=0
                        run.slurm.account=A run.slurm.qos=Q run.slurm.constraint=C
                        'run.slurm.setup=[module load cuda]' 'run.slurm.additional={mail-type: END}'
  run.executor=submitit-local
                        submitit's local executor (tests; jobs outlive the command)
GPU check of a new machine: bash scripts/gpu_check.sh (see docs/gpus-and-clusters.md)."""


def data_overrides(data: str | None, overrides) -> list[str]:
    """`cebench run --data DIR` is `data.root=DIR` (the VOC2007 tree, or a VOCdevkit holding VOC2007 and
    VOC2012; segmentation reads data.seg_root when set); refused when it contradicts a data.root override."""
    overrides = list(overrides)
    if not data:
        return overrides
    given = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].strip() == "data.root"]
    if any(g != data for g in given):
        raise ConfigError(f"--data {data} and data.root={given[0]} disagree: give the VOC root once "
                          "(--data DIR is data.root=DIR; segmentation reads data.seg_root)")
    return overrides if given else [*overrides, f"data.root={data}"]


def _cmd(args) -> int:
    main(args.config, data_overrides(args.data, args.overrides), Path(args.out or f"runs/{args.config.stem}"),
         device=args.device, force=tuple(args.force), dry_run=args.dry_run, cache=args.cache,
         wait=not args.no_wait)
    return 0


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "run", parents=[common], help="run the whole benchmark pipeline (default: demo config, built-in data)",
        description="Run every stage (data, pretraining, inpainting evaluation, transfer, SVMs, retrieval, "
        "report) with caching: a second run skips finished stages; an interrupted run resumes. "
        "Overrides are SECTION.key=value (e.g. pretrain.steps=500), plus encoder.checkpoint=PATH name=NAME "
        "to add your own learner to every table. --data DIR is data.root=DIR (VOC2007, or a VOCdevkit holding "
        "VOC2007 and VOC2012); segmentation reads data.seg_root, else that VOCdevkit's VOC2012, and pretraining "
        "data.pretrain_images; --dry-run prints what each job reads. --device cuda uses every visible GPU "
        "(one job each); --device cuda:N only GPU N.",
        epilog=PLACEMENT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--force", action="append", default=[], metavar="STAGE",
                   help="rerun a stage even if cached: pretrain, inpaint, transfer, svm, retrieval")
    p.add_argument("--dry-run", action="store_true", help="print the jobs and their commands, run nothing")
    p.add_argument("--no-wait", action="store_true",
                   help="with run.executor=slurm: submit the jobs (later ones held by SLURM dependencies) and "
                   "return; the same command run again collects the finished jobs, attaches to the queued "
                   "ones and writes the report once all are done")
    add_cache_arg(p)
    p.set_defaults(func=_cmd)
