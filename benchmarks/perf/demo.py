"""`cebench bench demo --old REPORT --new REPORT`: two runs of the demo pipeline side by side.

A demo run takes tens of minutes, so this benchmark does not run the pipeline: it reads the `run.json`
of two reports made by the same command, one after the other on one machine (typically the code before
a change and after it), and writes their wall times, the ratio, and the per-job and per-stage seconds
(results/bench_demo.json; its table in results/bench.md is `tables.demo_markdown`). A comparison says
nothing unless both runs computed every job: a report whose jobs came from the stage cache is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

from cebench.errors import CebenchError
from cebench.io import atomic_write_json

STAGE_ORDER = ("pretrain", "inpaint", "retrieval", "det-proposals", "cls", "seg", "det", "svm")


def read_run(report: Path) -> dict:
    """The run.json of a report folder (or the run.json file itself), checked to be an uncached run."""
    path = Path(report)
    path = path / "run.json" if path.is_dir() else path
    try:
        run = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CebenchError(f"{path}: not a readable run.json of a cebench report ({exc.__class__.__name__})")
    jobs = run.get("jobs") if isinstance(run, dict) else None
    if not isinstance(jobs, dict) or not jobs:
        raise CebenchError(f"{path}: no jobs in this run.json (is it a `cebench run` report?)")
    cached = sorted(n for n, j in jobs.items() if j.get("status") != "done")
    if cached:
        raise CebenchError(f"{path}: {len(cached)} job(s) were not computed in this run ({', '.join(cached[:3])}"
                           f"{', ...' if len(cached) > 3 else ''}): time a run from an empty output folder")
    return run


def stage_of(job: str) -> str:
    return job.split("/")[0]


def _seeds(run: dict) -> str:
    proto = run.get("transfer_protocol") or {}
    seeds = {len(p.get("seeds") or []) for p in proto.values()}
    return "/".join(str(s) for s in sorted(seeds)) or "-"


def _summary(run: dict) -> dict:
    """What the comparison states about one run: wall time, version, CPU, seeds, precision, command."""
    machine = run.get("machine", {})
    return {"wall_minutes": round(run["wall_minutes"], 2), "cebench": machine.get("cebench"), "cpu": machine.get("cpu"),
            "seeds": _seeds(run), "precision": run.get("precision"), "config": run.get("config"),
            "overrides": run.get("overrides")}


def compare_demo_runs(old: Path, new: Path, out_path=None) -> dict:
    """Wall time and per-job seconds of two uncached runs; ratio = new / old."""
    a, b = read_run(old), read_run(new)
    rows = {}
    for name in sorted(set(a["jobs"]) | set(b["jobs"]),
                       key=lambda n: (STAGE_ORDER.index(stage_of(n)) if stage_of(n) in STAGE_ORDER else 99, n)):
        sa, sb = (r["jobs"].get(name, {}).get("seconds") for r in (a, b))
        rows[name] = {"old_s": None if sa is None else round(sa, 1), "new_s": None if sb is None else round(sb, 1),
                      "ratio": round(sb / sa, 3) if sa and sb else None}
    stages = {}
    for name, r in rows.items():
        s = stages.setdefault(stage_of(name), {"jobs": 0, "old_s": 0.0, "new_s": 0.0})
        s["jobs"] += 1
        s["old_s"] += r["old_s"] or 0.0
        s["new_s"] += r["new_s"] or 0.0
    for s in stages.values():
        s["old_s"], s["new_s"] = round(s["old_s"], 1), round(s["new_s"], 1)
        s["ratio"] = round(s["new_s"] / s["old_s"], 3) if s["old_s"] else None
    res = {
        "old": _summary(a), "new": _summary(b),
        "wall_ratio": round(b["wall_minutes"] / a["wall_minutes"], 3),
        "job_seconds_ratio": round(sum(r["new_s"] or 0 for r in rows.values())
                                   / max(1e-9, sum(r["old_s"] or 0 for r in rows.values())), 3),
        "stages": stages, "jobs": rows,
    }
    if a.get("machine", {}).get("cpu") != b.get("machine", {}).get("cpu"):
        res["warning"] = "the two runs ran on different CPU models: the ratio is not a side-by-side measurement"
    if out_path is not None:
        atomic_write_json(Path(out_path), res)
    return res

