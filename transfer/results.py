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

import numpy as np
import pandas as pd

from cebench.io import atomic_write_json, atomic_write_text
from cebench.locks import file_lock

COLUMNS = ["init", "task", "metric", "mean", "std", "seeds", "status"]


def summarize(values) -> tuple[float, float, int]:
    """(mean, sample std (ddof=1; 0 for one seed), count) of the finite values."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


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


def paired_difference(a: dict, b: dict) -> dict:
    """Seed-paired comparison of two rows' `per_seed` values ({seed: value}): a - b on the seeds both
    have (the same seed gives both inits the same head init, data order and augmentations, so the
    pair removes that share of the spread). Two-sided paired t-test and the 95% interval of the mean
    difference; with one common seed only the difference itself."""
    from scipy import stats

    def finite(row: dict) -> set:
        return {k for k, v in row.items() if v is not None and math.isfinite(v)}

    common = sorted(finite(a) & finite(b), key=str)
    d = np.array([a[k] - b[k] for k in common], dtype=np.float64)
    out = {"seeds": [str(k) for k in common], "n": int(d.size), "diffs": d.tolist(),
           "mean_diff": float(d.mean()) if d.size else math.nan, "wins": int((d > 0).sum()),
           "std_diff": math.nan, "t": math.nan, "p": math.nan, "ci95": (math.nan, math.nan)}
    if d.size >= 2:
        sd = float(d.std(ddof=1))
        out["std_diff"] = sd
        if sd > 0:
            se = sd / math.sqrt(d.size)
            out["t"] = float(d.mean() / se)
            out["p"] = float(2 * stats.t.sf(abs(out["t"]), d.size - 1))
            h = float(stats.t.ppf(0.975, d.size - 1)) * se
            out["ci95"] = (out["mean_diff"] - h, out["mean_diff"] + h)
    return out


def combine_paired(parts: list[dict]) -> dict:
    """Fixed-effect combination of independent replicates' seed-paired differences.

    parts: `paired_difference` results, one per replicate (e.g. one per independently generated dataset,
    each with its own pretraining). Each replicate with n >= 2 and a nonzero spread is weighted by the
    inverse of its squared standard error; the combined mean's 95% interval and two-sided p use a t
    distribution with the pooled degrees of freedom sum(n_r - 1), since each standard error is itself
    estimated from few seeds. Cochran's Q (chi-square, k - 1 df) tests whether the replicates disagree
    more than their own seed spread allows: a small p_q means the effect depends on the replicate and
    the combined mean hides it.

    Random effects beside it (`re_*`): DerSimonian-Laird's between-replicate variance tau2, weights
    1 / (se_r^2 + tau2), and the Hartung-Knapp interval on k - 1 df with its variance factor floored at 1
    (never narrower than the weights alone claim). The fixed effect speaks for these replicates; the
    random effect for a new draw of the data, and with 3 replicates its interval is wide.
    """
    from scipy import stats

    used = [p for p in parts if p["n"] >= 2 and p["std_diff"] == p["std_diff"] and p["std_diff"] > 0]
    out = {"replicates": len(used), "n": int(sum(p["n"] for p in used)), "wins": int(sum(p["wins"] for p in used)),
           "mean_diff": math.nan, "se": math.nan, "df": 0, "t": math.nan, "p": math.nan,
           "ci95": (math.nan, math.nan), "q": math.nan, "p_q": math.nan,
           "tau2": math.nan, "re_mean_diff": math.nan, "re_se": math.nan, "re_p": math.nan,
           "re_ci95": (math.nan, math.nan)}
    if not used:
        return out
    d = np.array([p["mean_diff"] for p in used])
    w = np.array([p["n"] / p["std_diff"] ** 2 for p in used])  # 1 / se_r^2
    mean, se, df = float((w * d).sum() / w.sum()), float(1.0 / math.sqrt(w.sum())), int(sum(p["n"] - 1 for p in used))
    t = mean / se
    h = float(stats.t.ppf(0.975, df)) * se
    out.update(mean_diff=mean, se=se, df=df, t=t, p=float(2 * stats.t.sf(abs(t), df)), ci95=(mean - h, mean + h))
    if len(used) >= 2:
        k = len(used)
        q = float((w * (d - mean) ** 2).sum())
        out.update(q=q, p_q=float(stats.chi2.sf(q, k - 1)))
        tau2 = max(0.0, (q - (k - 1)) / float(w.sum() - (w ** 2).sum() / w.sum()))
        wr = 1.0 / (1.0 / w + tau2)
        re = float((wr * d).sum() / wr.sum())
        hk = max(1.0, float((wr * (d - re) ** 2).sum()) / (k - 1))
        re_se = math.sqrt(hk / float(wr.sum()))
        h = float(stats.t.ppf(0.975, k - 1)) * re_se
        out.update(tau2=tau2, re_mean_diff=re, re_se=re_se, re_ci95=(re - h, re + h),
                   re_p=float(2 * stats.t.sf(abs(re / re_se), k - 1)))
    return out


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


__all__ = ["ResultsTable", "summarize", "paired_difference", "combine_paired", "format_table", "COLUMNS"]
