"""The transfer protocol: seeds, learning-rate selection on the validation split, parallel jobs, and the
aggregation.

A *job* (`TransferJob`) is one (task, init, seed, lr, phase) training run; it writes its own small JSON
under `out/jobs/` (and its per-step training metrics beside it, `<job>.metrics.jsonl`), so runs resume
and the pipeline can spread jobs over processes. The protocol:

1. select: for each init and each candidate lr, fit on `train` and score on `val` (both carved
   from trainval) for `select_seeds`; the lr with the best mean val score is that init's lr.
2. final: for each init and each seed, fit on `trainval` with the chosen lr, score once on `test`.
3. aggregate: mean, std and seed count per (init, task, metric) into `ResultsTable`.

Nothing is ever chosen on the test split. A task is a picklable function
`task_fn(job: TransferJob, ctx, log) -> {"metrics": {name: value}, ...}`; `ctx` is any picklable object the
task needs (its config, data cache folder, device, threads) and `log(**metrics)` records one training step
(`cebench.logs.JsonlLogger.log`; TensorBoard too when `ctx.tensorboard`).
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from cebench.errors import NonFiniteLossError
from cebench.io import atomic_write_json
from cebench.logs import JsonlLogger, get_logger
from cebench.runtime import barrier, is_dist, is_main_process

from .inits import InitSpec, InitUnavailable
from .results import ResultsTable
from .stats import summarize

log = get_logger("cebench.transfer")


@dataclass
class TransferJob:
    task: str
    init: InitSpec
    seed: int
    lr: float
    phase: str            # "select" (fit train, score val) | "final" (fit trainval, score test)
    fit_split: str
    eval_split: str
    key: str = ""         # config hash: a cached job JSON is reused only for the same config

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.init.name).strip("_") or "init"


def job_path(out_dir, job: TransferJob) -> Path:
    return Path(out_dir) / "jobs" / job.task / job.slug / f"{job.phase}_lr{job.lr:g}_seed{job.seed}.json"


def last_path(out_dir, job: TransferJob) -> Path:
    """The job's `last` checkpoint (fine-tuning resumes from it; removed once the job's JSON is written)."""
    return job_path(out_dir, job).with_suffix(".last.pt")


def _set_threads(threads: int) -> None:
    if threads:
        torch.set_num_threads(int(threads))
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def metrics_path(out_dir, job: TransferJob) -> Path:
    """The job's training curve: one JSON line per logged step."""
    return job_path(out_dir, job).with_suffix(".metrics.jsonl")


def run_job(task_fn: Callable, job: TransferJob, ctx, out_dir, threads: int = 0) -> dict:
    """Run ONE job (or return its cached JSON) and write `jobs/<task>/<init>/<phase>_lr<lr>_seed<s>.json`."""
    path = job_path(out_dir, job)
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
            # "unavailable" is not reused: the weights may have been placed since (checking is instant)
            if cached.get("key") == job.key and cached.get("status") in ("ok", "non-finite"):
                return cached
        except (OSError, json.JSONDecodeError):
            pass
    _set_threads(threads)
    t0 = time.perf_counter()
    rec = {"task": job.task, "init": job.init.name, "kind": job.init.kind, "checkpoint": job.init.checkpoint,
           "seed": job.seed, "lr": job.lr, "phase": job.phase, "fit_split": job.fit_split,
           "eval_split": job.eval_split, "key": job.key}
    curve = metrics_path(out_dir, job)
    main_rank = is_main_process()  # under torchrun: one rank writes the curve and the record
    if main_rank and not last_path(out_dir, job).is_file():  # a resumed job continues its curve
        curve.unlink(missing_ok=True)  # a rerun (another config) draws its own curve, not after the old one
    tb = None
    if getattr(ctx, "tensorboard", False):  # out/tensorboard/<task>/<init>/<phase>_lr<lr>_seed<s>/
        tb = Path(out_dir) / "tensorboard" / job_path(out_dir, job).relative_to(Path(out_dir) / "jobs").with_suffix("")
    logger = JsonlLogger(curve, tensorboard_dir=tb, enabled=main_rank)
    try:
        out = task_fn(job, ctx, logger.log)
        rec.update(status="ok", **out)
    except InitUnavailable as exc:
        rec.update(status="unavailable", reason=str(exc), metrics={})
    except NonFiniteLossError as exc:
        rec.update(status="non-finite", reason=str(exc), metrics={})
    finally:
        logger.close()
    rec["seconds"] = time.perf_counter() - t0
    if main_rank:
        atomic_write_json(path, rec)
        last_path(out_dir, job).unlink(missing_ok=True)
    barrier()
    return rec


def _call(args):
    task_fn, job, ctx, out_dir, threads = args
    return run_job(task_fn, job, ctx, out_dir, threads)


def run_jobs(task_fn: Callable, jobs: list[TransferJob], ctx, out_dir, *, workers: int = 1,
             threads: int = 1) -> list[dict]:
    """All jobs, in `workers` one-`threads` processes (spawned) or in this process when workers <= 1."""
    if workers <= 1 or len(jobs) <= 1 or is_dist():  # under torchrun the ranks run each job together
        return [run_job(task_fn, j, ctx, out_dir, threads) for j in jobs]
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(_call, [(task_fn, j, ctx, out_dir, threads) for j in jobs]))


def select_lr(records: list[dict], lrs, metric: str) -> tuple[float | None, dict]:
    """Best lr by mean `metric` over the select-phase records of one init; ties -> the smaller lr."""
    scores = {}
    for lr in lrs:
        vals = [r["metrics"].get(metric) for r in records if r["lr"] == lr and r["status"] == "ok"]
        scores[lr] = summarize(vals)[0] if vals else math.nan
    finite = {lr: s for lr, s in scores.items() if math.isfinite(s)}
    if not finite:
        return None, scores
    best = max(sorted(finite), key=lambda lr: finite[lr])
    return best, scores


@dataclass
class SeedPlan:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3])
    select_seeds: list[int] = field(default_factory=lambda: [100])
    train_split: str = "train"
    val_split: str = "val"
    trainval_split: str = "trainval"
    test_split: str = "test"


def run_seeds(task_fn: Callable, task: str, inits: list[InitSpec], plan: SeedPlan, ctx, out_dir, *,
              metrics: list[str], primary: str, key: str = "", workers: int = 1, threads: int = 1,
              table: ResultsTable | None = None) -> ResultsTable:
    """lr selection on val, final runs on test for every seed, aggregated rows into the table."""
    out_dir = Path(out_dir)
    table = table or ResultsTable(out_dir)
    lrs = list(plan.lrs)
    chosen: dict[str, float | None] = {}
    val_scores: dict[str, dict] = {}
    if len(lrs) > 1:
        sel = [TransferJob(task, spec, s, lr, "select", plan.train_split, plan.val_split, key)
               for spec in inits for lr in lrs for s in plan.select_seeds]
        log.info(f"[{task}] selecting lr in {lrs} on {plan.val_split} ({len(sel)} jobs)")
        recs = run_jobs(task_fn, sel, ctx, out_dir, workers=workers, threads=threads)
        for spec in inits:
            mine = [r for r in recs if r["init"] == spec.name]
            if mine and all(r["status"] == "unavailable" for r in mine):
                chosen[spec.name] = None
                table.add_unavailable(spec.name, task, primary, mine[0].get("reason", "unavailable"))
                continue
            chosen[spec.name], val_scores[spec.name] = select_lr(mine, lrs, primary)
            log.info(f"[{task}] {spec.name}: val {primary} " +
                ", ".join(f"lr {lr:g}: {s:.4f}" for lr, s in val_scores[spec.name].items()) +
                f" -> lr {chosen[spec.name]}")
    else:
        chosen = {spec.name: lrs[0] for spec in inits}
    final = [TransferJob(task, spec, s, chosen[spec.name], "final", plan.trainval_split, plan.test_split, key)
             for spec in inits if chosen.get(spec.name) is not None for s in plan.seeds]
    log.info(f"[{task}] final runs on {plan.test_split}: {len(final)} jobs")
    recs = run_jobs(task_fn, final, ctx, out_dir, workers=workers, threads=threads)
    for spec in inits:
        mine = [r for r in recs if r["init"] == spec.name]
        if chosen.get(spec.name) is None and spec.name in val_scores:
            table.add(spec.name, task, primary, {}, lr=None, val_scores=val_scores[spec.name],
                      reason="no learning rate gave a finite validation score")
            continue
        if not mine:
            continue
        if all(r["status"] == "unavailable" for r in mine):
            table.add_unavailable(spec.name, task, primary, mine[0].get("reason", "unavailable"))
            continue
        for m in metrics:
            per_seed = {r["seed"]: (r["metrics"].get(m) if r["status"] == "ok" else None) for r in mine}
            extra = {"lr": chosen[spec.name], "checkpoint": spec.checkpoint}
            if spec.name in val_scores:
                extra["val_scores"] = {f"{k:g}": v for k, v in val_scores[spec.name].items()}
            if m == primary:
                extra["details"] = {str(r["seed"]): r.get("details") for r in mine if r.get("details")}
            table.add(spec.name, task, m, per_seed, **extra)
    return table


__all__ = ["TransferJob", "SeedPlan", "run_job", "run_jobs", "run_seeds", "select_lr", "job_path", "metrics_path",
           "last_path"]
