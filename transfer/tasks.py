"""The four transfer tasks and the one shell that runs any of them for every init over the seeds.

`TASKS` is the one mapping from a task name (`cebench transfer cls|seg|svm|det`, the `transfer.<task>`
config sub-section) to what differs between tasks: the job function, the metrics it reports, whether a
learning rate is selected, which VOC tree it reads, and the steps around its jobs. Everything else - the
seeds, lr selection on val, architecture of the random row, data-dependent init, parallel jobs, the results
table - is the shared protocol (`protocol.run_seeds`) configured once in the `transfer:` section.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import pandas as pd

from cebench.cache import cache_key, cache_root
from cebench.config import config_to_dict, save_config
from cebench.data.sources import DataConfig, record_sources, voc_root
from cebench.data.voc import describe_classes, resolve_classes
from cebench.errors import ConfigError
from cebench.logs import get_logger
from cebench.runtime import choose_device, is_main_process, resolve_amp

from . import classification, segmentation, svm
from .common import TaskContext, arch_for, resolve_inits
from .config import TransferConfig
from .det import task as det_steps
from .det import train as det_train
from .det.train import METRICS as DET_METRICS
from .protocol import SeedPlan, run_seeds
from .results import format_table

log = get_logger("cebench.transfer")


@dataclass(frozen=True)
class Task:
    help: str
    run: Callable                       # the module's fit(job, ctx) -> {"metrics": {...}, ...}: one job
    metrics: Callable                   # task config -> metric names; the first is the one lr is chosen by
    select_lr: bool = True              # False: one fit per seed on trainval, no lr (svm: C by CV inside)
    segmentation: bool = False          # reads the segmentation tree (data.seg_root)
    prepare: Callable | None = None     # (task config, VOC root, data config) -> info, once before the jobs
    finish: Callable | None = None      # (table, inits, plan, ctx, out dir, info) after the jobs
    prepare_flag: str = ""              # command-line flag that runs `prepare` only
    prepare_job: Callable | None = None  # task config -> (folder, key inputs): `prepare` as a job of its own in
    #                                      `cebench run`, before the task's jobs (det: the proposals)


def svm_metrics(cfg) -> list[str]:
    return [f"{kind} {layer} mAP" for layer in cfg.layers for kind in (("svm", "knn") if cfg.knn else ("svm",))]


TASKS: dict[str, Task] = {
    "cls": Task("multi-label VOC classification (mAP, VOC07 11-point)", classification.fit, lambda cfg: ["mAP"]),
    "seg": Task("FCN-32s segmentation (mean IU)", segmentation.fit, lambda cfg: ["mean IU"], segmentation=True),
    "svm": Task("frozen features: per-layer linear SVM and kNN (mAP)", svm.fit, svm_metrics, select_lr=False),
    "det": Task("Fast R-CNN detection fine-tuning on cached selective-search proposals, VOC2007 mAP", det_train.fit,
                lambda cfg: list(DET_METRICS), prepare=det_steps.prepare, finish=det_steps.finish,
                prepare_flag="--proposals-only", prepare_job=det_steps.prepare_job),
}


def main(task: str, cfg: TransferConfig, data_cfg: DataConfig, inits, out_dir, device: str = "auto", *,
         data: str | None = None, prepare_only: bool = False, cache=None) -> pd.DataFrame | None:
    """Run `task` for every init over cfg.seeds -> the results table (also on disk, merged with the other
    tasks' rows). `prepare_only`: the task's preparation (det: the proposals) and nothing else. `cache`:
    the folder of derived files (--cache; default $CEBENCH_CACHE, else out_dir/cache; never the data)."""
    if task not in TASKS:
        raise ConfigError(f"unknown transfer task {task!r}; choose one of {', '.join(TASKS)}")
    spec = TASKS[task]
    # the precision, as the command line resolved it (`cebench run` hands it resolved); a library call with
    # amp=auto resolves it here, once for every job; the cache key and the saved config name what ran
    cfg = replace(cfg, runtime=replace(cfg.runtime, amp=resolve_amp(cfg.runtime.amp, choose_device(device))))
    sub = getattr(cfg, task)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = resolve_inits(inits)
    root = voc_root(data_cfg, data, segmentation=spec.segmentation)
    classes, source = resolve_classes(root, data_cfg.classes or None)
    log.info(f"[{task}] {describe_classes(classes, source)}")
    given = classes if data_cfg.classes else None  # passed on only when configured (jobs resolve the same)
    cache = cache_root(cache, out_dir)
    # the checkpoints are read before the preparation (det: hours of selective search), not after
    arch = arch_for(cfg.arch, specs) if not prepare_only else None
    if getattr(sub, "proposals", None) is not None and not sub.proposals.cache_dir:  # det: its jobs read them too
        sub = replace(sub, proposals=replace(sub.proposals, cache_dir=str(cache / "proposals")))
    prepared = spec.prepare(sub, root, data_cfg) if spec.prepare else None
    if prepare_only:
        return None
    ctx = TaskContext(cfg=sub, root=str(root), cache_dir=cfg.cache_dir or str(cache / "splits"), device=device,
                      arch=arch, magic=cfg.magic,
                      magic_images=getattr(sub, "magic_images", cfg.magic_images),  # a task's own wins (det)
                      runtime=cfg.runtime, out_dir=str(out_dir),
                      log_every=cfg.log.every, tensorboard=cfg.log.tensorboard, classes=given)
    save_config({"transfer": config_to_dict(cfg), "data": config_to_dict(data_cfg), "task": task,
                 "root": str(root), "inits": [vars(s) for s in specs]}, out_dir)
    lrs = list(sub.lrs) if spec.select_lr else [0.0]
    # the tree's own split names (VOC2012 segmentation: no test masks, so fit train and score val)
    names = {"train": data_cfg.train_split, "val": data_cfg.val_split, "trainval": data_cfg.trainval_split,
             "test": data_cfg.test_split, **getattr(sub, "splits", {})}
    if len(lrs) > 1 and names["test"] in (names["train"], names["val"]):
        raise ConfigError(f"transfer.{task}: the test split {names['test']!r} would also choose the learning rate "
                          f"(lr selection fits {names['train']!r}, scores {names['val']!r}); give one lr or other "
                          "splits")
    plan = SeedPlan(seeds=list(cfg.seeds), lrs=lrs, select_seeds=list(cfg.select_seeds),
                    train_split=names["train"], val_split=names["val"], trainval_split=names["trainval"],
                    test_split=names["test"])
    # a cached job is reused only for the same result-changing settings (not the lr grid: each job has its lr)
    # (nor where derived files are cached or how many processes compute them)
    sub_key = {k: v for k, v in config_to_dict(sub).items() if k != "lrs"}
    if "proposals" in sub_key:
        sub_key["proposals"] = {k: v for k, v in sub_key["proposals"].items() if k not in ("cache_dir", "workers")}
    key = cache_key({"task": task, "sub": sub_key, "arch": str(ctx.arch), "magic": ctx.magic,
                     "magic_images": ctx.magic_images, "root": str(Path(root).resolve()),
                     "amp": cfg.runtime.amp, **({"classes": list(given)} if given else {})})
    metrics = spec.metrics(sub)
    t0 = time.time()
    table = run_seeds(spec.run, task, specs, plan, ctx, out_dir, metrics=metrics, primary=metrics[0], key=key,
                      workers=cfg.workers, threads=cfg.threads)
    if not is_main_process():  # under torchrun rank 0 writes the table and the task's extras
        return table.frame(list(table.rows.values()))
    df = table.save()
    record_sources(out_dir, data_cfg, voc=str(root), task=task)  # what the jobs read (written once they ran)
    log.info("\n" + format_table(df[df["task"] == task]))
    if spec.finish:
        spec.finish(table, specs, plan, ctx, out_dir, prepared)
    log.info(f"[{task}] {time.time() - t0:.0f}s; results in {out_dir / 'results.csv'}")
    return df


__all__ = ["Task", "TASKS", "main", "svm_metrics"]
