"""The report: the paper's tables reproduced beside our numbers, figures, machine and timings.

Reads what the stages wrote (inpainting table, transfer results file, retrieval table, training
logs) and writes `report/`: results.md, table1.csv, table2.csv, paired.csv, svm.csv, retrieval.csv,
fig_inpainting.png, fig_retrieval.png, fig_curves.png, run.json (machine, versions, stage times).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

from cebench.io import atomic_copy, atomic_save_figure, atomic_write_text
from cebench.logs import read_jsonl
from cebench.transfer.inits import init_rank, table_label
from cebench.transfer.results import ResultsTable
from cebench.transfer.stats import paired_difference

from .paper import TABLE1, TABLE1_MATCH, TABLE2, TASK_METRIC, published_sources

TABLE1_ORDER = ["mean colour", "Telea (OpenCV)", "NN (HOG)", "NN (pixels)", "CE (L2)", "CE (L2+adv)"]


def _portable(text: str) -> str:
    """No path of this machine in a report that may be committed: home -> ~, cwd -> relative."""
    text = text.replace(os.getcwd() + os.sep, "")
    return text.replace(str(Path.home()), "~")


def atomic_csv(df: pd.DataFrame, path: Path, float_format: str = "%.4g") -> None:
    atomic_write_text(path, _portable(df.to_csv(index=False, float_format=float_format)))


def _fmt(mean, std=None, seeds=None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if std is None or seeds in (None, 0, 1) or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {std:.1f}"


def md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(str(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def build_table1(inpaint_csv: Path) -> pd.DataFrame:
    """Our Table 1 rows plus the paper's, with a `source` column."""
    rows = []
    if inpaint_csv.is_file():
        ours = pd.read_csv(inpaint_csv)
        ours["order"] = ours["method"].map(lambda m: TABLE1_ORDER.index(m) if m in TABLE1_ORDER else 99)
        for _, r in ours.sort_values("order").iterrows():
            rows.append({"method": r["method"], "l1_pct": r["l1_pct"], "l2_pct": r["l2_pct"],
                         "psnr_db": r["psnr_db"], "psnr_pooled_db": r.get("psnr_pooled_db"),
                         "sharpness": r.get("sharpness"), "source": "ours",
                         "paper_row": TABLE1_MATCH.get(r["method"], "")})
    for name, (l1, l2, psnr) in TABLE1.items():
        rows.append({"method": name, "l1_pct": l1, "l2_pct": l2, "psnr_db": psnr, "source": "paper", "paper_row": name})
    return pd.DataFrame(rows, columns=["method", "l1_pct", "l2_pct", "psnr_db", "psnr_pooled_db", "sharpness",
                                       "source", "paper_row"])


def _pct(v):
    """Transfer results are stored as fractions in [0, 1]; the tables show % like the paper."""
    return None if v is None else float(v) * 100.0


def build_table2(transfer_rows: list[dict]) -> pd.DataFrame:
    rows = []
    for r in transfer_rows:
        if r.get("task") not in TASK_METRIC:
            continue
        init = table_label(r["init"])
        paper = TABLE2.get(init, {}).get(r["task"])
        val = (r.get("val_scores") or {}).get(f"{r['lr']:g}") if r.get("lr") is not None else None
        rows.append({"init": init, "task": r["task"], "metric": r.get("metric", TASK_METRIC[r["task"]]),
                     "mean": _pct(r.get("mean")), "std": _pct(r.get("std")), "seeds": r.get("seeds", 0),
                     "paper": paper, "lr": r.get("lr"), "val": _pct(val), "status": r.get("status", "ok"),
                     "note": r.get("reason", "")})
    df = pd.DataFrame(rows, columns=["init", "task", "metric", "mean", "std", "seeds", "paper", "lr", "val", "status",
                                     "note"])
    if len(df):
        df["o"] = df["init"].map(init_rank)
        df["t"] = df["task"].map(lambda t: list(TASK_METRIC).index(t))
        df = df.sort_values(["t", "o", "init"]).drop(columns=["o", "t"]).reset_index(drop=True)
    return df


# The paper's orderings, each as (better, worse): what the paired differences test
ORDERINGS = [("context encoder", "random"), ("context encoder", "autoencoder"), ("autoencoder", "random"),
             ("supervised (demo labels)", "context encoder"), ("supervised (ImageNet labels)", "context encoder"),
             ("imagenet", "context encoder")]


def per_seed_values(transfer_rows: list[dict]) -> dict[tuple[str, str], dict]:
    """{(init display name, task): {seed: value}} for each fine-tuned task's main metric (ok rows)."""
    return {(table_label(r["init"]), r["task"]): r.get("per_seed") or {} for r in transfer_rows
            if r.get("task") in TASK_METRIC and r.get("metric", TASK_METRIC[r["task"]]) == TASK_METRIC[r["task"]]
            and r.get("status", "ok") == "ok"}


def build_per_seed(transfer_rows: list[dict]) -> pd.DataFrame:
    """Long table (init, task, metric, seed, value in points): what `cebench replicates` combines."""
    rows = [{"init": init, "task": task, "metric": TASK_METRIC[task], "seed": str(seed), "value": _pct(v)}
            for (init, task), vals in per_seed_values(transfer_rows).items() for seed, v in vals.items()]
    return pd.DataFrame(rows, columns=["init", "task", "metric", "seed", "value"])


def comparisons(per: dict[tuple[str, str], dict], task: str) -> list[tuple[str, str]]:
    """The paper's orderings, then the context encoder minus every other row of `task` that none of them
    pairs with it (the other self-supervised learners, a plugged-in encoder), in table order."""
    with_ce = {x for pair in ORDERINGS if "context encoder" in pair for x in pair}
    others = sorted({init for init, t in per if t == task} - with_ce, key=lambda lab: (init_rank(lab), lab))
    return ORDERINGS + [("context encoder", o) for o in others]


def paired_rows(per: dict[tuple[str, str], dict]):
    """(task, better, worse, paired_difference) for each comparison (`comparisons`) both inits have."""
    for task in TASK_METRIC:
        for a, b in comparisons(per, task):
            if (a, task) in per and (b, task) in per:
                d = paired_difference(per[(a, task)], per[(b, task)])
                if d["n"]:
                    yield task, a, b, d


def build_paired(transfer_rows: list[dict]) -> pd.DataFrame:
    """Seed-paired differences (points) for the paper's orderings, per fine-tuned task's main metric."""
    rows = [{"task": task, "comparison": f"{a} - {b}", "n": d["n"], "mean_diff": _pct(d["mean_diff"]),
             "ci95_low": _pct(d["ci95"][0]), "ci95_high": _pct(d["ci95"][1]), "wins": d["wins"],
             "t": d["t"], "p": d["p"], "diffs": " ".join(f"{100 * x:+.1f}" for x in d["diffs"])}
            for task, a, b, d in paired_rows(per_seed_values(transfer_rows))]
    return pd.DataFrame(rows, columns=["task", "comparison", "n", "mean_diff", "ci95_low", "ci95_high", "wins", "t",
                                       "p", "diffs"])


def paired_markdown(df: pd.DataFrame) -> str:
    if not len(df):
        return "_no seed-paired rows_"
    show = pd.DataFrame({
        "task": df["task"], "comparison": df["comparison"],
        "mean diff (95% CI)": [f"{m:+.1f} ({lo:+.1f}, {hi:+.1f})" if lo == lo else f"{m:+.1f}"
                               for m, lo, hi in zip(df["mean_diff"], df["ci95_low"], df["ci95_high"])],
        "wins": [f"{w}/{n}" for w, n in zip(df["wins"], df["n"])],
        "paired t, p": [f"{t:.2f}, {p:.3f}" if t == t else "-" for t, p in zip(df["t"], df["p"])],
        "per seed": df["diffs"]})
    return md_table(show)


def table2_markdown(df: pd.DataFrame) -> str:
    """Paper layout: one row per init, one column per task, ours (mean ± std, n seeds) | paper."""
    if not len(df):
        return "_no transfer results_"
    inits = sorted(df["init"].unique(), key=init_rank)
    out = []
    for init in inits:
        row = {"initialisation": init}
        for task in TASK_METRIC:
            sel = df[(df["init"] == init) & (df["task"] == task)]
            paper = TABLE2.get(init, {}).get(task)
            if not len(sel):
                ours = "-"
            elif sel.iloc[0]["status"] != "ok":
                ours = sel.iloc[0]["status"]
            else:
                r = sel.iloc[0]
                ours = f"{_fmt(r['mean'], r['std'], r['seeds'])} (n={int(r['seeds'])})"
            row[f"{task} ours"] = ours
            row[f"{task} paper"] = "-" if paper is None else f"{paper:.1f}"
        out.append(row)
    return md_table(pd.DataFrame(out))


_MAGIC = {"all": "every row (within-layer for random, between-layer for loaded weights)",
          "random": "random row only", "none": "none"}


def protocol_lines(protocol: dict, t2: pd.DataFrame) -> list[str]:
    """How long each task fine-tuned and which lr each init got on val: a schedule too short for the
    supervised row to separate makes the orderings above mean little, so the table says it."""
    out = []
    for task, p in protocol.items():
        mult = p.get("trunk_lr_mult", 1.0)
        trunk = f" (the trunk at {mult:g}x it)" if mult != 1.0 else ""
        out.append(f"- {task}: {p['iterations']} iterations x {p['batch']}, lr from {p['lrs']}{trunk} chosen per init "
                   f"on val (fit on train, select seeds {p['select_seeds']}), then seeds {p['seeds']} fit on trainval, "
                   f"scored on test; data-dependent init: {_MAGIC.get(p.get('magic'), p.get('magic', '?'))}")
    ok = t2[(t2["status"] == "ok") & t2["lr"].notna()] if len(t2) else t2
    ok = ok[[m == TASK_METRIC.get(t) for t, m in zip(ok["task"], ok["metric"])]].drop_duplicates(["init", "task"])
    if len(ok):
        out += ["", "lr chosen on val (val score at that lr, %):", "",
                md_table(ok.assign(chosen=[f"{lr:g} ({v:.1f})" if v == v and v is not None else f"{lr:g}"
                                            for lr, v in zip(ok["lr"], ok["val"])])
                          .pivot(index="init", columns="task", values="chosen").fillna("-")
                          .sort_index(key=lambda ix: [init_rank(i) for i in ix])
                          .reset_index())]
    return out + [""] if out else []


def build_svm_table(transfer_rows: list[dict]) -> pd.DataFrame:
    rows = []
    for r in transfer_rows:
        task = r.get("task", "")
        if task in TASK_METRIC:
            continue
        rows.append({"init": table_label(r["init"]), "task": task, "metric": r.get("metric", ""),
                     "mean": _pct(r.get("mean")), "std": _pct(r.get("std")), "seeds": r.get("seeds", 0),
                     "status": r.get("status", "ok")})
    return pd.DataFrame(rows, columns=["init", "task", "metric", "mean", "std", "seeds", "status"])


def pretrain_curves(pretrain_dirs: dict[str, Path]) -> dict[str, tuple[list, list, str]]:
    """{method: (steps, loss, loss name)} from each pretraining's metrics.jsonl (per-step rows)."""
    series = {}
    for name, d in pretrain_dirs.items():
        rows = [r for r in read_jsonl(d / "metrics.jsonl") if "step" in r]
        keys = [k for k in ("loss", "loss_rec", "loss_total") if any(k in r for r in rows)]
        if rows and keys:
            series[name] = ([r["step"] for r in rows if keys[0] in r],
                            [float(r[keys[0]]) for r in rows if keys[0] in r], keys[0])
    return series


def finetune_curves(transfer_dirs: list[Path]) -> dict[str, dict[str, tuple[list, list, int]]]:
    """{task: {init label: (steps, mean training loss over the seeds, seeds)}} from the final jobs' curves
    (`jobs/<task>/<init>/final_*.metrics.jsonl`) at the lr each init was given on val."""
    runs: dict[str, dict[str, list[list[dict]]]] = {}
    for d in transfer_dirs:
        chosen = {(r["init"], r["task"]): r.get("lr") for r in ResultsTable.read(d / "results.json")}
        for curve in sorted(d.glob("jobs/*/*/final_*.metrics.jsonl")):
            job = curve.with_name(curve.name.removesuffix(".metrics.jsonl") + ".json")
            rec = json.loads(job.read_text()) if job.is_file() else {}
            rows = [r for r in read_jsonl(curve) if "step" in r and "loss" in r]
            if rec.get("status") != "ok" or not rows or chosen.get((rec["init"], rec["task"])) != rec["lr"]:
                continue
            runs.setdefault(rec["task"], {}).setdefault(table_label(rec["init"]), []).append(rows)
    out = {}
    for task in sorted(runs, key=lambda t: list(TASK_METRIC).index(t) if t in TASK_METRIC else 99):
        out[task] = {}
        for label in sorted(runs[task], key=init_rank):
            seeds = runs[task][label]
            n = min(len(r) for r in seeds)  # seeds of one init run the same iterations
            out[task][label] = ([r["step"] for r in seeds[0][:n]],
                                [sum(float(r[i]["loss"]) for r in seeds) / len(seeds) for i in range(n)], len(seeds))
    return out


def plot_curves(pretrain_dirs: dict[str, Path], transfer_dirs: list[Path], path: Path) -> bool:
    """fig_curves.png: the pretraining losses (top row, one panel per method) and the fine-tuning losses
    (bottom row, one panel per task, one line per init: the mean over its seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pre, fine = pretrain_curves(pretrain_dirs), finetune_curves(transfer_dirs)
    rows = [r for r in (pre, fine) if r]
    if not rows:
        return False
    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(3.2 * cols, 2.9 * len(rows)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    r = 0
    if pre:
        for ax, (name, (x, y, key)) in zip(axes[r], pre.items()):
            ax.axis("on")
            ax.plot(x, y, lw=1, marker="o" if len(x) < 3 else None, ms=3)
            ax.set_title(f"pretrain: {name}", fontsize=9)
            ax.set_ylabel(key, fontsize=8)
        r += 1
    if fine:
        for ax, (task, inits) in zip(axes[r], fine.items()):
            ax.axis("on")
            for label, (x, y, n) in inits.items():
                ax.plot(x, y, lw=1, marker="o" if len(x) < 3 else None, ms=3, label=f"{label} ({n})")
            ax.set_title(f"fine-tune: {task}", fontsize=9)
            ax.set_ylabel("training loss (mean over seeds)", fontsize=8)
            ax.legend(fontsize=6)
    for ax in axes.ravel():
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)
    return True


def precision_line(precision: dict | None) -> str:
    """One sentence for the report: what precision every stage trained in, and the probe behind it."""
    if not precision:
        return ""
    stages = precision.get("stages", {})
    kinds = sorted(set(stages.values()))
    what = {"bf16": "bf16 autocast", "none": "fp32", "auto": "auto (bf16 on CUDA)"}
    said = ", ".join(f"{what.get(k, k)} ({', '.join(n for n, v in stages.items() if v == k)})" for k in kinds)
    probe = precision.get("probe")
    if probe and probe.get("pinned_by"):
        said += f"; pinned by ${probe['pinned_by']}"
    elif probe and probe.get("speedup") is not None:
        said += (f"; chosen by the start-up probe on this CPU: a convolution training step took "
                 f"{probe['fp32_ms']} ms in fp32 and {probe['bf16_ms']} ms in bf16 ({probe['speedup']}x)")
    elif probe:
        said += "; the start-up probe found no native bf16 on this CPU"
    return f"Precision: {said}."


def write_report(out: Path, *, inpaint_dir: Path, transfer_dirs: list[Path], retrieval_dir: Path,
                 pretrain_dirs: dict[str, Path], run_info: dict) -> Path:
    rep = out / "report"
    rep.mkdir(parents=True, exist_ok=True)

    t1 = build_table1(inpaint_dir / "table1.csv")
    atomic_csv(t1[t1["source"] == "ours"][["method", "l1_pct", "l2_pct", "psnr_db", "psnr_pooled_db", "sharpness"]],
                rep / "table1.csv")

    rows: list[dict] = []
    for d in transfer_dirs:
        p = d / "results.json"
        if p.is_file():
            rows += json.loads(p.read_text()).get("rows", [])
    t2 = build_table2(rows)
    atomic_csv(t2[["init", "task", "metric", "mean", "std", "seeds", "paper", "lr", "val"]], rep / "table2.csv")
    paired = build_paired(rows)
    atomic_csv(paired, rep / "paired.csv")
    atomic_csv(build_per_seed(rows), rep / "per_seed.csv", float_format="%.10g")  # what replicates recombine
    svm = build_svm_table(rows)
    atomic_csv(svm, rep / "svm.csv")

    retr_csv = retrieval_dir / "retrieval.csv"
    retr = pd.read_csv(retr_csv) if retr_csv.is_file() else pd.DataFrame()
    atomic_csv(retr, rep / "retrieval.csv")

    figs = {
        "fig_inpainting.png": atomic_copy(inpaint_dir / "fig_inpainting.png", rep / "fig_inpainting.png"),
        "fig_retrieval.png": atomic_copy(retrieval_dir / "fig_retrieval.png", rep / "fig_retrieval.png"),
        "fig_curves.png": plot_curves(pretrain_dirs, transfer_dirs, rep / "fig_curves.png"),
    }
    for d in transfer_dirs:
        for f in sorted(d.glob("fig_*.png")):
            figs[f.name] = atomic_copy(f, rep / f.name)
    det_figs = [d / "det_detections.png" for d in transfer_dirs if d.parent.name == "det"]
    det_figs.sort(key=lambda p: p.parent.name != "context-encoder")  # the CE init's detections first
    for f in det_figs:
        if atomic_copy(f, rep / "fig_detections.png"):
            figs["fig_detections.png"] = True
            break

    md = ["# Context Encoders benchmark: results", ""]
    full = run_info.get("uncached_wall_minutes")
    full_txt = f" (the run that computed every stage: {full:.1f} min)" if full else ""
    ov = " ".join(run_info.get("overrides") or [])
    machine = run_info.get("machine", {})
    md.append(f"Config: `{run_info.get('config')}`{f' with `{ov}`' if ov else ''}; wall time of this invocation "
              f"{run_info.get('wall_minutes', float('nan')):.1f} min{full_txt} "
              f"on {machine.get('cpu', '?')} ({machine.get('cpu_count', '?')} cores), "
              f"torch {machine.get('torch', '?')}.")
    if run_info.get("precision"):
        md += ["", precision_line(run_info["precision"])]
    if run_info.get("demo"):
        md += ["", "Demo scale: built-in synthetic VOC-format data at 64 px, minutes of CPU pretraining. "
               "The paper's numbers come from ImageNet/Paris StreetView pretraining for days on a GPU and real "
               "VOC; compare orderings, not absolute values."]
    elif (run_info.get("data") or {}).get("pretrain_images"):
        data = run_info["data"]
        md += ["", f"Real photographs: pretraining images `{data['pretrain_images']}`, transfer tree `{data['root']}`"
               f"{' (segmentation: `' + data['seg_root'] + '`)' if data.get('seg_root') else ''}. The paper's numbers "
               "come from ImageNet at 227 px pretrained for days on a GPU and PASCAL VOC's 20 classes; compare "
               "orderings, not absolute values."]
    md += ["", "## Table 1: semantic inpainting (centre 1/4 mask)", ""]
    protocol = (inpaint_dir / "protocol.txt")
    if protocol.is_file():
        md += ["Protocol: " + " ".join(protocol.read_text().split()), ""]
    show = t1.copy()
    for c in ("l1_pct", "l2_pct", "psnr_db", "psnr_pooled_db", "sharpness"):
        show[c] = show[c].map(lambda v: "" if v is None or pd.isna(v) else f"{v:.2f}")
    md += [md_table(show[["source", "method", "l1_pct", "l2_pct", "psnr_db", "psnr_pooled_db", "sharpness"]]), ""]
    md += ["## Table 2: transfer (mean ± std over seeds; n = seeds)", "",
           "cls = classification mAP, det = detection mAP, seg = segmentation mean IU (%).", "",
           table2_markdown(t2), ""]
    md += published_sources(sorted(t2["init"].unique(), key=init_rank) if len(t2) else [])
    md += protocol_lines(run_info.get("transfer_protocol") or {}, t2)
    md += ["Seed-paired differences for the paper's orderings and the context encoder against every other row "
           "(points; seed k of one init against seed k of "
           "the other; two-sided paired t-test; a positive mean whose interval excludes 0 is an ordering the "
           "seeds support):", "", paired_markdown(paired), ""]
    unavailable = t2[t2["status"] == "unavailable"] if len(t2) else t2
    for _, r in unavailable.drop_duplicates("init").iterrows():
        md.append(f"- `{r['init']}` unavailable: {r['note']}")
    md += ["", "## Frozen features (linear SVM / kNN per layer, mAP %)", ""]
    if len(svm):
        s = svm.copy()
        s["value"] = [_fmt(m, sd, n) for m, sd, n in zip(s["mean"], s["std"], s["seeds"])]
        md += [md_table(s[["init", "task", "metric", "value", "seeds"]]), ""]
    else:
        md += ["_not run_", ""]
    md += ["## Patch retrieval (precision@k and mAP, %)", ""]
    md += [md_table(retr.round(2)) if len(retr) else "_not run_", ""]
    if len(retr) and "index_recall" in retr:  # the neighbour index each row used and its measured recall
        md += [f"Neighbour index: {', '.join(sorted(set(retr['index'].astype(str))))}; `index_recall` is its "
               f"recall@k measured on the database when it was built (1 = exact search), lowest "
               f"{retr['index_recall'].min():.3f}.", ""]
    md += ["## Figures", ""]
    for name, ok in figs.items():
        if ok:
            md.append(f"![{name}]({name})")
    md += ["", "## Stages (wall time)", "", "| job | status | seconds |", "|---|---|---|"]
    for name, t in run_info.get("jobs", {}).items():
        md.append(f"| {name} | {t['status']} | {t['seconds']:.0f} |")
    md.append("")
    atomic_write_text(rep / "results.md", _portable("\n".join(md)))
    atomic_write_text(rep / "run.json", _portable(json.dumps(run_info, indent=2, default=str)))
    return rep
