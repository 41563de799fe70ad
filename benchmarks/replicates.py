"""`cebench replicates`: does an ordering of Table 2 hold up across independent replicates of the benchmark?

A replicate is a whole `cebench run` on its own data and pretraining (e.g. the demo with another
`data.demo_seed`: new pretraining images, new labelled images, new checkpoints). Within a run the seeds
are paired (same head init, data order and augmentations for every init); across runs everything is
independent. This command reads each run's `report/per_seed.csv`, prints the seed-paired difference of
every paper ordering per replicate, and their fixed-effect combination with a heterogeneity test and
a random-effects combination beside it (`transfer.stats.combine_paired`). Nothing is rerun.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from cebench.errors import CebenchError
from cebench.io import atomic_write_text
from cebench.transfer.inits import init_rank
from cebench.transfer.stats import combine_paired, summarize

from .report import TASK_METRIC, atomic_csv, md_table, paired_rows

# a replicate's own row leaves the combination's columns (q ... re_p) empty: the frame fills them with NaN
COLUMNS = ["task", "comparison", "replicate", "n", "mean_diff", "ci95_low", "ci95_high", "wins", "p", "q", "p_q",
           "tau2", "re_mean_diff", "re_ci95_low", "re_ci95_high", "re_p"]


def replicate_name(report_dir: Path) -> str:
    report_dir = Path(report_dir)
    return report_dir.parent.name if report_dir.name == "report" else report_dir.name


def load_replicate(report_dir) -> tuple[dict[tuple[str, str], dict], dict | None]:
    """({(init, task): {seed: value in points}}, the run's replicate identity or None) of one report folder."""
    report_dir = Path(report_dir)
    path = report_dir / "per_seed.csv"
    if not path.is_file():
        raise CebenchError(f"{path}: missing; point at a report folder written by `cebench run` (rerun it on its run "
                           "folder to rewrite the report: every stage is cached)")
    try:
        df = pd.read_csv(path, dtype={"seed": str})
    except (ValueError, pd.errors.ParserError) as exc:
        raise CebenchError(f"{path}: not a per-seed table ({exc})") from None
    missing = {"init", "task", "seed", "value"} - set(df.columns)
    if missing:
        raise CebenchError(f"{path}: not a per-seed table (no column {', '.join(sorted(missing))})")
    per: dict[tuple[str, str], dict] = {}
    for r in df.itertuples(index=False):
        per.setdefault((r.init, r.task), {})[r.seed] = float(r.value)
    identity = None
    run_json = report_dir / "run.json"
    if run_json.is_file():
        identity = json.loads(run_json.read_text()).get("replicate")
    return per, identity


def build_replicates(replicates: dict[str, dict[tuple[str, str], dict]]) -> pd.DataFrame:
    """One row per (task, ordering, replicate) and a `combined` row per (task, ordering) with Cochran's Q."""
    by_key: dict[tuple[str, str], list[tuple[str, dict]]] = {}
    for name, per in replicates.items():
        for task, a, b, d in paired_rows(per):
            by_key.setdefault((task, f"{a} - {b}"), []).append((name, d))
    rows = []
    for (task, comparison), parts in by_key.items():
        for name, d in parts:
            rows.append({"task": task, "comparison": comparison, "replicate": name, "n": d["n"],
                         "mean_diff": d["mean_diff"], "ci95_low": d["ci95"][0], "ci95_high": d["ci95"][1],
                         "wins": d["wins"], "p": d["p"]})
        c = combine_paired([d for _, d in parts])
        rows.append({"task": task, "comparison": comparison, "replicate": f"combined ({c['replicates']})",
                     "n": c["n"], "mean_diff": c["mean_diff"], "ci95_low": c["ci95"][0], "ci95_high": c["ci95"][1],
                     "wins": c["wins"], "p": c["p"], "q": c["q"], "p_q": c["p_q"], "tau2": c["tau2"],
                     "re_mean_diff": c["re_mean_diff"], "re_ci95_low": c["re_ci95"][0],
                     "re_ci95_high": c["re_ci95"][1], "re_p": c["re_p"]})
    return pd.DataFrame(rows, columns=COLUMNS)


def levels_markdown(replicates: dict[str, dict[tuple[str, str], dict]]) -> str:
    """Each init's mean ± std over seeds, one column per replicate: how far the level moves with the data."""
    keys = sorted({k for per in replicates.values() for k in per},
                  key=lambda k: (list(TASK_METRIC).index(k[1]) if k[1] in TASK_METRIC else 99, init_rank(k[0]), k[0]))
    rows = []
    for init, task in keys:
        row = {"task": task, "init": init}
        for name, per in replicates.items():
            m, sd, n = summarize((per.get((init, task)) or {}).values())
            row[name] = f"{m:.1f} ± {sd:.1f} ({n})" if n else "-"
        rows.append(row)
    return md_table(pd.DataFrame(rows, columns=["task", "init", *replicates]))


def replicates_markdown(df: pd.DataFrame) -> str:
    if not len(df):
        return "_no ordering has paired seeds in these reports_"

    def num(v, fmt):
        return "-" if v is None or v != v else format(v, fmt)

    def interval(m, lo, hi):
        return f"{num(m, '+.1f')} ({num(lo, '+.1f')}, {num(hi, '+.1f')})"

    show = pd.DataFrame({
        "task": df["task"], "comparison": df["comparison"], "replicate": df["replicate"],
        "mean diff (95% CI)": [interval(m, lo, hi)
                               for m, lo, hi in zip(df["mean_diff"], df["ci95_low"], df["ci95_high"])],
        "wins": [f"{w}/{n}" for w, n in zip(df["wins"], df["n"])],
        "p": [num(p, ".3f") for p in df["p"]],
        "heterogeneity Q, p": [f"{num(q, '.2f')}, {num(pq, '.3f')}" if q is not None and q == q else ""
                               for q, pq in zip(df["q"], df["p_q"])],
        "random effects (95% CI), p": [f"{interval(m, lo, hi)}, {num(p, '.3f')}" if m is not None and m == m else ""
                                       for m, lo, hi, p in zip(df["re_mean_diff"], df["re_ci95_low"],
                                                               df["re_ci95_high"], df["re_p"])]})
    return md_table(show)


def _refuse_repeats(replicates: dict[str, dict], dirs: dict[str, str]) -> None:
    """Two fine-tuning results equal to 10 digits come from one run (e.g. a 3-seed report and the 8-seed
    report of the same run), whatever run.json says or lacks: counting them twice would fake evidence."""
    seen: dict[tuple, str] = {}
    for name, per in replicates.items():
        for (init, task), vals in per.items():
            for seed, v in vals.items():
                key = (init, task, seed, v)
                if key in seen and seen[key] != name:
                    raise CebenchError(f"{dirs[name]}: repeats {init} {task} seed {seed} = {v:g} of {dirs[seen[key]]}; "
                                       "these are one run, not independent replicates")
                seen[key] = name


def main(report_dirs: list[str], out: Path) -> pd.DataFrame:
    if len(report_dirs) < 2:
        raise CebenchError("replicates: give at least two report folders (one per independent run)")
    replicates, identities = {}, {}
    for d in report_dirs:
        name = replicate_name(Path(d))
        if name in replicates:
            raise CebenchError(f"{d}: a second replicate named {name!r}; give each run its own folder name")
        replicates[name], ident = load_replicate(d)
        if ident is not None:
            key = json.dumps(ident, sort_keys=True)
            if key in identities:
                raise CebenchError(f"{d}: same data and pretraining seed as {identities[key]} ({key}); "
                                   "a replicate needs its own data.demo_seed or pretrain.seed")
            identities[key] = d
    _refuse_repeats(replicates, dict(zip(replicates, report_dirs)))
    df = build_replicates(replicates)
    out.mkdir(parents=True, exist_ok=True)
    atomic_csv(df, out / "replicates.csv")
    md = ["# Table 2 orderings across independent replicates", "",
          "Points; each replicate's rows are its seed-paired differences (paired t-test); `combined` is their "
          "fixed-effect (inverse-variance) mean with a t interval on the pooled degrees of freedom, and Cochran's "
          "Q tests whether the replicates disagree beyond their seed spread. The random effects column treats "
          "the replicates as draws of the data (DerSimonian-Laird between-replicate variance, Hartung-Knapp "
          "interval on k - 1 df): where Q is small it matches the fixed effect, where the replicates disagree it "
          "is what a new data set can expect, and with 3 replicates its interval is wide.", "",
          "Replicates: " + ", ".join(f"`{n}`" for n in replicates), "", replicates_markdown(df), "",
          "Each init per replicate (mean ± std over seeds, n):", "", levels_markdown(replicates), ""]
    atomic_write_text(out / "replicates.md", "\n".join(md))
    print("\n".join(md))
    return df


def _cmd(args) -> int:
    main(args.reports, Path(args.out or "runs/replicates"))
    return 0


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "replicates", help="combine Table 2's paired differences over independent runs (e.g. other data seeds)",
        description="Read report/per_seed.csv of two or more `cebench run` folders that differ in their data or "
        "pretraining seed (e.g. `cebench run --out runs/demo-data1 data.demo_seed=1`), and write "
        "replicates.md / replicates.csv: each paper ordering per replicate and combined.")
    p.add_argument("reports", nargs="+", metavar="REPORT",
                   help="report folders (RUN/report or a copy such as results/demo)")
    p.add_argument("--out", default=None, help="output folder (default runs/replicates)")
    p.set_defaults(func=_cmd)


__all__ = ["build_replicates", "load_replicate", "main", "replicates_markdown"]
