"""The statistics of the transfer tables: mean and spread over seeds, seed-paired differences between two
inits, and their combination over independent replicates (fixed and random effects)."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def summarize(values) -> tuple[float, float, int]:
    """(mean, sample std (ddof=1; 0 for one seed), count) of the finite values."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def paired_difference(a: dict, b: dict) -> dict:
    """Seed-paired comparison of two rows' `per_seed` values ({seed: value}): a - b on the seeds both
    have (the same seed gives both inits the same head init, data order and augmentations, so the
    pair removes that share of the spread). Two-sided paired t-test and the 95% interval of the mean
    difference; with one common seed only the difference itself."""
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


__all__ = ["summarize", "paired_difference", "combine_paired"]
