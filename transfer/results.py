"""The transfer results file: one row per (init, task, metric) with mean, std and seed count.

`ResultsTable(out_dir)` reads/merges/writes `results.csv` and `results.json` atomically under a file
lock, so classification, segmentation, SVM and detection (task "det") runs, possibly in parallel
processes, add their rows to the same table. JSON rows also carry the per-seed values and extras
(chosen learning rate, per-class APs, ...). Unavailable rows (e.g. imagenet without weights) are kept
with `status="unavailable"` and the reason.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from cebench.io import atomic_write_json, atomic_write_text
from cebench.locks import file_lock

from .stats import summarize

COLUMNS = ["init", "task", "metric", "mean", "std", "seeds", "status"]


class ResultsTable:
    """Rows keyed by (init, task, metric); `save()` merges with what is on disk (ours win)."""

    def __init__(self, out_dir, name: str = "results"):
        self.out_dir = Path(out_dir)
        self.json_path = self.out_dir / f"{name}.json"
        self.csv_path = self.out_dir / f"{name}.csv"
        self.rows: dict[tuple[str, str, str], dict] = {}

    def add(self, init: str, task: str, metric: str, per_seed: dict, **extra) -> dict:
        """per_seed: {seed: value}. extra: anything JSON-able (lr, per-class values, ...)."""
        per_seed = {str(k): (None if v is None else float(v)) for k, v in per_seed.items()}
        mean, std, n = summarize(per_seed.values())
        row = {"init": init, "task": task, "metric": metric, "mean": mean, "std": std, "seeds": n,
               "status": "ok" if n else "failed", "per_seed": per_seed, **extra}
        self.rows[(init, task, metric)] = row
        return row

    def add_unavailable(self, init: str, task: str, metric: str, reason: str) -> dict:
        row = {"init": init, "task": task, "metric": metric, "mean": math.nan, "std": math.nan, "seeds": 0,
               "status": "unavailable", "reason": reason, "per_seed": {}}
        self.rows[(init, task, metric)] = row
        return row

    @staticmethod
    def read(path) -> list[dict]:
        path = Path(path)
        if not path.is_file():
            return []
        return json.loads(path.read_text()).get("rows", [])

    def save(self) -> pd.DataFrame:
        with file_lock(self.json_path.with_name(self.json_path.name + ".lock")):
            merged = {(r["init"], r["task"], r["metric"]): r for r in self.read(self.json_path)}
            merged.update(self.rows)
            rows = sorted(merged.values(), key=lambda r: (r["task"], r["metric"], r["init"]))
            atomic_write_json(self.json_path, {"rows": rows})
            df = self.frame(rows)
            atomic_write_text(self.csv_path, df.to_csv(index=False))
        return df

    @staticmethod
    def frame(rows) -> pd.DataFrame:
        return pd.DataFrame([{c: r.get(c) for c in COLUMNS} for r in rows], columns=COLUMNS)


def format_table(df: pd.DataFrame, scale: float = 100.0) -> str:
    """Markdown-ish table: one line per row with mean +- std (xscale) and the seed count."""
    lines = [f"{'task':<6} {'metric':<14} {'init':<22} {'mean +- std':>16} seeds"]
    for r in df.itertuples(index=False):
        if r.status == "unavailable":
            val = "unavailable"
        else:
            val = f"{r.mean * scale:6.2f} +- {r.std * scale:5.2f}"
        lines.append(f"{r.task:<6} {r.metric:<14} {r.init:<22} {val:>16} {r.seeds}")
    return "\n".join(lines)


__all__ = ["ResultsTable", "format_table", "COLUMNS"]
