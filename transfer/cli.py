"""`cebench transfer cls|seg|svm`: fine-tuning and frozen-feature transfer for any set of inits.

    cebench transfer cls --init random --init "context encoder=runs/ce/checkpoint.pt" \
        --init supervised=runs/sup/checkpoint.pt --init imagenet --seeds 0,1,2 --out runs/cls

`TASKS` is the one mapping from a subcommand to its (config attribute, task function, metrics,
primary metric). The detection engineer's `det_cli.register_det(transfer_subparsers, common)` adds `det`.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from cebench.cliutil import out_dir as make_out_dir, parse_seeds, split_overrides
from cebench.config import config_hash, config_to_dict, load_config, save_config
from cebench.data.sources import DataConfig, record_sources, voc_root
from cebench.errors import ConfigError
from cebench.runtime import cleanup, is_main_process

from .classification import cls_task
from .common import TaskContext, resolve_inits
from .config import TransferConfig
from .inits import InitSpec
from .results import ResultsTable, format_table
from .protocol import SeedPlan, run_seeds
from .segmentation import seg_task
from .svm import svm_task

TASKS = {
    "cls": ("cls", cls_task, "mAP"),
    "seg": ("seg", seg_task, "mean IU"),
    "svm": ("svm", svm_task, None),
}


def _arch_for(cfg: TransferConfig, inits: list[InitSpec]):
    """The random row's architecture: the preset, or with arch=auto that of the first checkpoint."""
    if cfg.arch != "auto":
        return cfg.arch
    from cebench.checkpoint import load_checkpoint

    for spec in inits:
        if spec.checkpoint and spec.kind != "imagenet":
            return dict(load_checkpoint(spec.checkpoint)["arch"]["encoder"])
    return "demo"


def main(task: str, cfg: TransferConfig, data_cfg: DataConfig, inits, out_dir, device: str = "auto", *,
         data: str | None = None, log=print) -> pd.DataFrame:
    """Run `task` (cls | seg | svm) for every init over cfg.seeds -> the results table (also on disk)."""
    if task not in TASKS:
        raise ConfigError(f"unknown transfer task {task!r}; choose one of {', '.join(TASKS)}")
    attr, task_fn, primary = TASKS[task]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = resolve_inits(inits)
    root = voc_root(data_cfg, data, segmentation=(task == "seg"))
    sub = getattr(cfg, attr)
    ctx = TaskContext(cfg=sub, root=str(root), cache_dir=cfg.cache_dir or str(out_dir / "cache"), device=device,
                      arch=_arch_for(cfg, specs), magic=cfg.magic, magic_images=cfg.magic_images,
                      runtime=cfg.runtime, out_dir=str(out_dir))
    save_config({"transfer": config_to_dict(cfg), "data": config_to_dict(data_cfg), "task": task,
                 "root": str(root), "inits": [vars(s) for s in specs]}, out_dir)
    record_sources(out_dir, data_cfg, voc=str(root), task=task)
    lrs = list(getattr(sub, "lrs", [0.0]))
    names = {"train": data_cfg.train_split, "val": data_cfg.val_split, "trainval": data_cfg.trainval_split,
             "test": data_cfg.test_split, **getattr(sub, "splits", {})}
    if len(lrs) > 1 and names["test"] in (names["train"], names["val"]):
        raise ConfigError(f"transfer.{task}: the test split {names['test']!r} would also choose the learning rate "
                          f"(lr selection fits {names['train']!r}, scores {names['val']!r}); give one lr or other splits")
    plan = SeedPlan(seeds=list(cfg.seeds), lrs=lrs, select_seeds=list(cfg.select_seeds),
                    train_split=names["train"], val_split=names["val"], trainval_split=names["trainval"],
                    test_split=names["test"])
    if task == "svm":  # no learning rate: fit on trainval (C by CV inside), score on test
        plan = replace(plan, lrs=[0.0])
    key = config_hash({"task": task, "sub": config_to_dict(sub), "arch": str(ctx.arch), "magic": cfg.magic,
                       "root": str(root), "amp": cfg.runtime.amp})
    metrics = [primary] if primary else [f"{kind} {layer} mAP" for layer in sub.layers
                                         for kind in (("svm", "knn") if sub.knn else ("svm",))]
    t0 = time.time()
    table = run_seeds(task_fn, task, specs, plan, ctx, out_dir, metrics=metrics, primary=primary or metrics[0],
                      key=key, workers=cfg.workers, threads=cfg.threads, log=log)
    df = table.save() if is_main_process() else table.frame(list(table.rows.values()))
    log(format_table(df[df["task"] == task]))
    log(f"[{task}] {time.time() - t0:.0f}s; results in {out_dir / 'results.csv'}")
    return df


def _run(args) -> int:
    ov = split_overrides(args.overrides, "data")
    cfg = load_config(TransferConfig, args.config, ov[""], section="transfer")
    if args.seeds:
        cfg.seeds = parse_seeds(args.seeds)
    data_cfg = load_config(DataConfig, args.config, ov["data"], section="data")
    out = make_out_dir(args, f"runs/transfer/{args.task}")
    from .finetune import job_runtime

    rt = job_runtime(cfg.runtime, args.device)  # under torchrun: joins the process group once
    try:
        main(args.task, cfg, data_cfg, args.init or ["random"], out, args.device, data=args.data,
             log=print if rt.is_main else (lambda *a, **k: None))
    finally:
        cleanup(rt)
    return 0


def register(subparsers, common) -> None:
    p = subparsers.add_parser("transfer", help="transfer: fine-tune (cls, seg, det) or frozen features (svm)",
                              description="Transfer an AlexNet initialisation to VOC tasks.")
    sub = p.add_subparsers(dest="transfer_task", metavar="TASK", required=True)
    helps = {"cls": "multi-label VOC classification (mAP, VOC07 11-point)",
             "seg": "FCN-32s segmentation (mean IU)",
             "svm": "frozen features: per-layer linear SVM and kNN (mAP)"}
    for task, text in helps.items():
        q = sub.add_parser(task, parents=[common], help=text, description=text)
        add_init_args(q)
        q.set_defaults(func=_run, task=task)
    from .det import cli as det_cli

    det_cli.register_det(sub, common)


def add_init_args(q) -> None:
    q.add_argument("--init", action="append", metavar="NAME[=CKPT]",
                   help="initialisation, repeatable: random | imagenet | 'context encoder=CKPT' | "
                        "autoencoder=CKPT | supervised=CKPT | ANY_NAME=CKPT (default: random)")
    q.add_argument("--seeds", default=None, help="comma-separated seeds (default: transfer.seeds of the config); ',' = lr selection on val only")


__all__ = ["register", "main", "TASKS", "add_init_args"]
