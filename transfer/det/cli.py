"""`cebench transfer det`: wiring only (config, data, proposals, seeds/lr protocol, results, figure)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from cebench.config import atomic_write_text, load_config, save_config
from cebench.data.sources import DataConfig, record_sources, voc_root

from .data import check_voc_tree
from .train import TASK, DetConfig, DetContext, det_task, job_key, validate
from .proposals import load_proposals
from ..results import ResultsTable, format_table

METRICS = ["mAP", "mAP_11pt", "mAP_allpoint"]


def main(cfg: DetConfig, data_cfg: DataConfig, root, out_dir, *, device: str = "cpu", log=print,
         proposals_only: bool = False) -> ResultsTable | None:
    """Proposals for every split, lr selection on val, seeds on test, results rows with task "det"."""
    from cebench.logs import progress  # noqa: F401  (progress bars inside load_proposals)

    from ..common import resolve_inits
    from ..protocol import SeedPlan, job_path, run_seeds

    validate(cfg)
    root, out_dir = Path(root), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = [data_cfg.train_split, data_cfg.val_split, data_cfg.trainval_split, data_cfg.test_split]
    check_voc_tree(root, splits)
    save_config(cfg, out_dir)
    record_sources(out_dir, data_cfg, voc=str(root), task="det", scale=cfg.scale, max_size=cfg.max_size)
    from cebench.data.voc import read_split

    ids = sorted({i for s in splits for i in read_split(root, s)})
    t0 = time.perf_counter()
    load_proposals(root, ids, cfg.proposals, split="all")
    prop_seconds = time.perf_counter() - t0
    if proposals_only:  # the pipeline computes them once before the per-init jobs start
        log(f"[det] proposals for {len(ids)} images ready ({prop_seconds:.1f}s)")
        return None
    specs = resolve_inits(cfg.inits)
    plan = SeedPlan(seeds=list(cfg.seeds), lrs=list(cfg.lrs), select_seeds=list(cfg.select_seeds),
                    train_split=data_cfg.train_split, val_split=data_cfg.val_split,
                    trainval_split=data_cfg.trainval_split, test_split=data_cfg.test_split)
    if cfg.arch == "auto":  # the random row takes the architecture of the first checkpoint
        from ..cli import _arch_for

        cfg = replace(cfg, arch=_arch_for(cfg, specs))
    ctx = DetContext(cfg=cfg, root=str(root), device=str(device), out_dir=str(out_dir))
    table = run_seeds(det_task, TASK, specs, plan, ctx, out_dir, metrics=METRICS, primary="mAP",
                      key=job_key(cfg, root), workers=cfg.workers, threads=cfg.threads, log=log)
    from cebench.runtime import is_main_process

    if not is_main_process():  # under torchrun rank 0 writes the results
        return table
    df = table.save()
    log(format_table(df[df.task == TASK]))
    # speeds and the figure from the final jobs' JSON
    summary = {"proposals": {"method": cfg.proposals.method, "images": len(ids), "seconds": prop_seconds},
               "jobs": {}}
    figure_src = None
    for spec in specs:
        row = table.rows.get((spec.name, TASK, "mAP"))
        if not row or row.get("lr") is None:
            continue
        from ..protocol import Job

        recs = []
        for s in cfg.seeds:
            p = job_path(out_dir, Job(TASK, spec, s, row["lr"], "final", plan.trainval_split, plan.test_split))
            if p.is_file():
                recs.append(json.loads(p.read_text()))
        ok = [r for r in recs if r.get("status") == "ok"]
        if ok:
            summary["jobs"][spec.name] = {
                "train_images_per_s": sum(r["train_images_per_s"] for r in ok) / len(ok),
                "infer_images_per_s": sum(r["infer_images_per_s"] for r in ok) / len(ok)}
            if figure_src is None or spec.kind == "context encoder":
                figure_src = (spec.name, ok[0])
    atomic_write_text(out_dir / "det_summary.json", json.dumps(summary, indent=2, default=str))
    if figure_src is not None and figure_src[1].get("examples"):
        from cebench.data.voc import read_classes

        from .figure import draw_detections

        name, rec = figure_src
        png = draw_detections(root, rec["examples"], read_classes(root), out_dir / "det_detections.png",
                              title=f"Fast R-CNN detections, {name} init (seed {rec['seed']}, lr {rec['lr']:g}); "
                                    f"dashed: ground truth")
        log(f"[det] figure: {png}")
    return table


def _cmd(args) -> int:
    from cebench.cliutil import out_dir, parse_seeds, split_overrides
    ov = split_overrides(args.overrides, "data")
    data_cfg = load_config(DataConfig, args.config, ov["data"], section="data")
    cfg = load_config(DetConfig, args.config, ov[""], section="det")
    if args.init:
        cfg = replace(cfg, inits=list(args.init))
    if args.seeds:
        cfg = replace(cfg, seeds=parse_seeds(args.seeds))
    root = voc_root(data_cfg, args.data)
    from cebench.runtime import cleanup

    from ..finetune import job_runtime

    rt = job_runtime(cfg.runtime, args.device)  # under torchrun: joins the process group once, its own GPU
    try:
        main(cfg, data_cfg, root, out_dir(args, "runs/det"), device=args.device, proposals_only=args.proposals_only,
             log=print if rt.is_main else (lambda *a, **k: None))
    finally:
        cleanup(rt)
    return 0


def register_det(transfer_subparsers, common) -> None:
    p = transfer_subparsers.add_parser(
        "det", parents=[common], help="Fast R-CNN detection fine-tuning, VOC2007 mAP (Table 2, detection)",
        description="Fast R-CNN on the AlexNet trunk from each initialisation: selective-search proposals "
                    "(cached), lr chosen on val, mean +- std over seeds on test, rows with task 'det'.")
    p.add_argument("--init", action="append", default=None, metavar="NAME[=CHECKPOINT]",
                   help="an initialisation row (repeatable): random, imagenet, ce=PATH, ae=PATH, supervised=PATH, "
                        "or any NAME=PATH; default: the config's det.inits")
    p.add_argument("--seeds", default="", help="comma-separated seeds (default: the config's det.seeds); ',' = lr selection on val only")
    p.add_argument("--proposals-only", action="store_true", help="compute (or check) the cached proposals and stop")
    p.set_defaults(func=_cmd)


__all__ = ["main", "register_det", "METRICS"]
