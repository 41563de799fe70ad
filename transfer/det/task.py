"""What the detection task does around its jobs (the `prepare`, `prepare_job` and `finish` steps of
`transfer.tasks.TASKS`): proposals for every split before any job starts (in `cebench run` a job of their
own), and after them the speed summary (`det_summary.json`)
and the figure of the final jobs' detections (`det_detections.png`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from cebench.config import config_to_dict
from cebench.data.voc import read_classes, read_split
from cebench.io import atomic_write_json
from cebench.logs import get_logger

from ..protocol import TransferJob, job_path
from .data import check_voc_tree
from .figure import draw_detections
from .proposals import load_proposals
from .train import DetConfig

log = get_logger("cebench.transfer")


def prepare(cfg: DetConfig, root, data_cfg) -> dict:
    """Check the VOC tree and compute (or reuse the cached) proposals of every split the protocol reads."""
    splits = [data_cfg.train_split, data_cfg.val_split, data_cfg.trainval_split, data_cfg.test_split]
    check_voc_tree(root, splits)
    ids = sorted({i for s in splits for i in read_split(root, s)})
    t0 = time.perf_counter()
    load_proposals(root, ids, cfg.proposals, split="all")
    seconds = time.perf_counter() - t0
    log.info(f"[det] proposals for {len(ids)} images ready ({seconds:.1f}s)")
    return {"method": cfg.proposals.method, "images": len(ids), "seconds": seconds}


def prepare_job(cfg: DetConfig) -> tuple[str, dict]:
    """The proposals as `cebench run` plans them: one job (`cebench transfer det --proposals-only`, job
    `det-proposals` in folder `transfer/proposals`) before the per-init det jobs, which wait for it. Returns
    the folder's name and what the proposals depend on besides the data: the job's cache key inputs."""
    return "proposals", config_to_dict(cfg.proposals)


def finish(table, specs, plan, ctx, out_dir, prepared: dict) -> None:
    """Mean training / inference speeds of each init's final jobs, and the figure of one of them (the
    context encoder's when it is a row)."""
    out_dir = Path(out_dir)
    summary = {"proposals": prepared, "jobs": {}}
    figure_src = None
    for spec in specs:
        row = table.rows.get((spec.name, "det", "mAP"))
        if not row or row.get("lr") is None:
            continue
        recs = []
        for s in plan.seeds:
            p = job_path(out_dir, TransferJob("det", spec, s, row["lr"], "final", plan.trainval_split, plan.test_split))
            if p.is_file():
                recs.append(json.loads(p.read_text()))
        ok = [r for r in recs if r.get("status") == "ok"]
        if ok:
            summary["jobs"][spec.name] = {
                "train_images_per_s": sum(r["train_images_per_s"] for r in ok) / len(ok),
                "infer_images_per_s": sum(r["infer_images_per_s"] for r in ok) / len(ok)}
            if figure_src is None or spec.kind == "context encoder":
                figure_src = (spec.name, ok[0])
    atomic_write_json(out_dir / "det_summary.json", summary)
    if figure_src is not None and figure_src[1].get("examples"):
        name, rec = figure_src
        classes = read_classes(ctx.root, ctx.classes)
        png = draw_detections(ctx.root, rec["examples"], classes, out_dir / "det_detections.png",
                              title=f"Fast R-CNN detections, {name} init (seed {rec['seed']}, lr {rec['lr']:g}); "
                                    f"dashed: ground truth")
        log.info(f"[det] figure: {png}")


__all__ = ["prepare", "prepare_job", "finish"]
