"""The transfer protocol: seeds, learning-rate selection on the validation split, parallel jobs, and the
aggregation.

A *job* (`TransferJob`) is one (task, init, seed, lr, phase) training run: one call `fit(job, ctx)` of the
task's module (`classification.fit`, `segmentation.fit`, `svm.fit`, `det.train.fit`), which returns
{"metrics": {name: value}, ...}; `ctx` is the picklable `common.TaskContext`. Each job has its own small
record under `out/jobs/` (and its per-step training metrics beside it, `<job>.metrics.jsonl`), so runs
resume and the pipeline can spread jobs over processes. The protocol (`run_seeds`):

1. select: for each init and each candidate lr, fit on `train` and score on `val` (both carved
   from trainval) for `select_seeds`; the lr with the best mean val score is that init's lr.
2. final: for each init and each seed, fit on `trainval` with the chosen lr, score once on `test`.
3. aggregate: mean, std and seed count per (init, task, metric) into `ResultsTable`.

Nothing is ever chosen on the test split.
"""

from __future__ import annotations

import contextlib
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
from cebench.logs import get_logger
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


def metrics_path(out_dir, job: TransferJob) -> Path:
    """The job's training curve: one JSON line per logged step."""
    return job_path(out_dir, job).with_suffix(".metrics.jsonl")


def _set_threads(threads: int) -> None:
    if threads:
        torch.set_num_threads(int(threads))
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def open_job(out_dir, job: TransferJob) -> dict | None:
    """The job's record when one of the same key is on disk ("ok" or "non-finite"; "unavailable" is not
    reused: the weights may have been placed since, and checking is instant). Else None, the job readied
    to run: one that does not resume from its `last` checkpoint starts its training curve afresh (a rerun
    with another config draws its own curve, not after the old one)."""
    path = job_path(out_dir, job)
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
            if cached.get("key") == job.key and cached.get("status") in ("ok", "non-finite"):
                return cached
        except (OSError, json.JSONDecodeError):
            pass
    if is_main_process() and not last_path(out_dir, job).is_file():  # under torchrun one rank owns the files
        metrics_path(out_dir, job).unlink(missing_ok=True)
    return None


def close_job(out_dir, job: TransferJob, outcome, seconds: float) -> dict:
    """The job's record from what its `fit` returned, or from the InitUnavailable / NonFiniteLossError it
    raised (status "unavailable" / "non-finite"); written by one rank, the job's `last` checkpoint removed."""
    rec = {"task": job.task, "init": job.init.name, "kind": job.init.kind, "checkpoint": job.init.checkpoint,
           "seed": job.seed, "lr": job.lr, "phase": job.phase, "fit_split": job.fit_split,
           "eval_split": job.eval_split, "key": job.key}
    if isinstance(outcome, InitUnavailable):
        rec.update(status="unavailable", reason=str(outcome), metrics={})
    elif isinstance(outcome, NonFiniteLossError):
        rec.update(status="non-finite", reason=str(outcome), metrics={})
    else:
        rec.update(status="ok", **outcome)
    rec["seconds"] = seconds
    if is_main_process():
        atomic_write_json(job_path(out_dir, job), rec)
        last_path(out_dir, job).unlink(missing_ok=True)
    barrier()
    return rec


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


def run_seeds(fit: Callable, task: str, inits: list[InitSpec], plan: SeedPlan, ctx, out_dir, *,
              metrics: list[str], primary: str, key: str = "", workers: int = 1, threads: int = 1,
              table: ResultsTable | None = None) -> ResultsTable:
    """lr selection on val, final runs on test for every seed, aggregated rows into the table. Each job is
    one call `fit(job, ctx)`: in this process, or with `workers` > 1 in a pool of spawned one-`threads`
    processes (not under torchrun: there the ranks run each job together). A job's `seconds` is its wall
    time (in a pool, from its submission)."""
    out_dir = Path(out_dir)
    table = table or ResultsTable(out_dir)
    lrs = list(plan.lrs)
    chosen: dict[str, float | None] = {spec.name: lrs[0] for spec in inits}  # one candidate: nothing to select
    val_scores: dict[str, dict] = {}
    for phase in ("select", "final") if len(lrs) > 1 else ("final",):
        if phase == "select":
            jobs = [TransferJob(task, spec, s, lr, "select", plan.train_split, plan.val_split, key)
                    for spec in inits for lr in lrs for s in plan.select_seeds]
            log.info(f"[{task}] selecting lr in {lrs} on {plan.val_split} ({len(jobs)} jobs)")
        else:
            jobs = [TransferJob(task, spec, s, chosen[spec.name], "final", plan.trainval_split, plan.test_split,
                                key) for spec in inits if chosen.get(spec.name) is not None for s in plan.seeds]
            log.info(f"[{task}] final runs on {plan.test_split}: {len(jobs)} jobs")
        recs = [open_job(out_dir, job) for job in jobs]  # None: the job runs
        todo = [i for i, rec in enumerate(recs) if rec is None]
        parallel = workers > 1 and len(todo) > 1 and not is_dist()
        with (ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_set_threads,
                                  initargs=(threads,)) if parallel else contextlib.nullcontext()) as pool:
            started = {i: (time.perf_counter(), pool.submit(fit, jobs[i], ctx)) for i in todo} if parallel else {}
            for i in todo:
                if not parallel:
                    _set_threads(threads)
                t0, future = started.get(i, (time.perf_counter(), None))
                try:
                    outcome = future.result() if future is not None else fit(jobs[i], ctx)
                except (InitUnavailable, NonFiniteLossError) as exc:
                    outcome = exc
                recs[i] = close_job(out_dir, jobs[i], outcome, time.perf_counter() - t0)
        if phase == "select":
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


__all__ = ["TransferJob", "SeedPlan", "run_seeds", "open_job", "close_job", "select_lr", "job_path", "metrics_path",
           "last_path"]
