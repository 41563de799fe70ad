"""The report: paper numbers beside ours, % scaling, ordering, unavailable rows, CSV columns."""

import json
import math

import pandas as pd

from cebench.benchmarks.report import build_paired, build_table1, build_table2, table2_markdown, write_report
from cebench.transfer.stats import paired_difference


def _rows():
    return [
        {"init": "random", "task": "cls", "metric": "mAP", "mean": 0.5, "std": 0.02, "seeds": 3, "status": "ok",
         "per_seed": {"0": 0.4, "1": 0.6, "2": 0.5}},
        {"init": "context encoder", "task": "cls", "metric": "mAP", "mean": 0.6, "std": 0.01, "seeds": 3,
         "status": "ok",
         "lr": 0.003, "val_scores": {"0.001": 0.5, "0.003": 0.55}, "per_seed": {"0": 0.5, "1": 0.6, "2": 0.7}},
        {"init": "supervised", "task": "seg", "metric": "mean IU", "mean": 0.25, "std": 0.0, "seeds": 3,
         "status": "ok"},
        {"init": "imagenet", "task": "cls", "metric": "mAP", "mean": math.nan, "std": math.nan, "seeds": 0,
         "status": "unavailable", "reason": "place alexnet-owt-7be5be79.pth in TORCH_HOME"},
        {"init": "random", "task": "svm", "metric": "svm conv3 mAP", "mean": 0.3, "std": 0.01, "seeds": 2,
         "status": "ok"},
    ]


def test_table2_scales_to_percent_and_adds_paper():
    t2 = build_table2(_rows())
    assert list(t2["init"]) == ["random", "context encoder", "imagenet", "supervised (demo labels)"]
    ce = t2[t2["init"] == "context encoder"].iloc[0]
    assert ce["mean"] == 60.0 and abs(ce["std"] - 1.0) < 1e-9 and ce["paper"] == 56.5
    assert math.isnan(t2[t2["init"] == "supervised (demo labels)"].iloc[0]["paper"])  # no paper row for it
    md = table2_markdown(t2)
    assert "| context encoder | 60.0 ± 1.0 (n=3) | 56.5 |" in md
    assert "unavailable" in md


def test_table1_keeps_paper_rows(tmp_path):
    csv = tmp_path / "table1.csv"
    ours = [{"method": "CE (L2)", "l1_pct": 10.0, "l2_pct": 2.0, "psnr_db": 18.0, "n_images": 5}]
    pd.DataFrame(ours).to_csv(csv, index=False)
    t1 = build_table1(csv)
    assert (t1["source"] == "paper").sum() == 3
    assert t1[t1["source"] == "ours"].iloc[0]["method"] == "CE (L2)"


def test_write_report_files(tmp_path):
    tr = tmp_path / "transfer" / "cls" / "random"
    tr.mkdir(parents=True)
    (tr / "results.json").write_text(json.dumps({"rows": _rows()}))
    info = {"config": "x.yaml", "wall_minutes": 1.5, "machine": {"cpu": "cpu", "cpu_count": 2, "torch": "2"},
            "jobs": {"pretrain/ce": {"status": "done", "seconds": 3.0}}, "demo": True,
            "overrides": ["transfer.det.iterations=9"],
            "transfer_protocol": {"cls": {"iterations": 600, "batch": "32 images", "lrs": [0.001, 0.003],
                                          "seeds": [0, 1, 2], "select_seeds": [100], "magic": "all"},
                                  "seg": {"iterations": 600, "batch": "32 images", "lrs": [0.01, 0.03],
                                          "seeds": [0, 1, 2], "select_seeds": [100], "magic": "all",
                                          "trunk_lr_mult": 0.1}}}
    rep = write_report(tmp_path, inpaint_dir=tmp_path / "none", transfer_dirs=[tr], retrieval_dir=tmp_path / "none",
                       pretrain_dirs={}, run_info=info)
    t2 = pd.read_csv(rep / "table2.csv")
    assert list(t2.columns) == ["init", "task", "metric", "mean", "std", "seeds", "paper", "lr", "val"]
    assert t2.set_index("init").loc["context encoder", "lr"] == 0.003
    assert t2.set_index("init").loc["context encoder", "val"] == 55.0
    svm = pd.read_csv(rep / "svm.csv")
    assert list(svm["metric"]) == ["svm conv3 mAP"] and svm["mean"].iloc[0] == 30.0
    md = (rep / "results.md").read_text()
    assert "Table 2" in md and "pretrain/ce" in md and "imagenet` unavailable" in md
    assert "with `transfer.det.iterations=9`" in md
    assert "- cls: 600 iterations x 32 images, lr from [0.001, 0.003] chosen per init on val" in md
    assert "- seg: 600 iterations x 32 images, lr from [0.01, 0.03] (the trunk at 0.1x it) chosen per init on val" in md
    assert "data-dependent init: every row (within-layer for random, between-layer for loaded weights)" in md
    assert "| context encoder | 0.003 (55.0) |" in md  # chosen lr and its val score
    paired = pd.read_csv(rep / "paired.csv")
    assert list(paired["comparison"]) == ["context encoder - random"] and paired["wins"].iloc[0] == 2
    assert "| cls | context encoder - random | +10.0 (" in md and "| 2/3 |" in md
    per = pd.read_csv(rep / "per_seed.csv", dtype={"seed": str})  # main metric of fine-tuned rows only, in points
    assert list(per.columns) == ["init", "task", "metric", "seed", "value"]
    assert sorted(zip(per["init"], per["seed"], per["value"])) == [
        ("context encoder", "0", 50.0), ("context encoder", "1", 60.0), ("context encoder", "2", 70.0),
        ("random", "0", 40.0), ("random", "1", 60.0), ("random", "2", 50.0)]


def test_paired_difference_hand_case_and_scipy():
    """diffs 0.1, 0.0, 0.2: mean 0.1, sd 0.1, t = sqrt(3); with 2 df P(|T| > t) = 1 - t / sqrt(t^2 + 2)."""
    from scipy import stats

    a = {"0": 0.5, "1": 0.6, "2": 0.7, "9": 0.9}       # seed 9 has no partner: left out
    b = {"0": 0.4, "1": 0.6, "2": 0.5, "5": None}
    d = paired_difference(a, b)
    assert d["n"] == 3 and d["seeds"] == ["0", "1", "2"] and d["wins"] == 2  # a tie is not a win
    assert math.isclose(d["mean_diff"], 0.1) and math.isclose(d["std_diff"], 0.1)
    assert math.isclose(d["t"], math.sqrt(3)) and math.isclose(d["p"], 1 - math.sqrt(3) / math.sqrt(5))
    ref = stats.ttest_rel([0.5, 0.6, 0.7], [0.4, 0.6, 0.5])
    assert math.isclose(d["t"], ref.statistic) and math.isclose(d["p"], ref.pvalue)
    half = stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3)
    assert math.isclose(d["ci95"][0], 0.1 - half) and math.isclose(d["ci95"][1], 0.1 + half)
    one = paired_difference({"0": 0.5}, {"0": 0.25})
    assert one["n"] == 1 and one["mean_diff"] == 0.25 and math.isnan(one["p"])


def test_paired_table_for_the_paper_orderings():
    p = build_paired(_rows())
    assert list(p["comparison"]) == ["context encoder - random"]  # the only ordering with both rows
    r = p.iloc[0]
    assert r["task"] == "cls" and r["n"] == 3 and r["wins"] == 2 and math.isclose(r["mean_diff"], 10.0)
    assert r["diffs"] == "+10.0 +0.0 +20.0"


def test_fig_curves_shows_pretraining_and_fine_tuning(tmp_path):
    """Each init's fine-tuning curve is the mean over its final jobs at the lr chosen on val (not the
    select runs, not a final job left from another lr)."""
    from cebench.benchmarks.report import finetune_curves, plot_curves
    from cebench.logs import JsonlLogger

    tr = tmp_path / "transfer" / "cls" / "ce"
    rows = [{"init": "context encoder", "task": "cls", "metric": "mAP", "lr": 0.003, "status": "ok", "per_seed": {}}]
    (tr / "jobs" / "cls" / "context_encoder").mkdir(parents=True)
    (tr / "results.json").write_text(json.dumps({"rows": rows}))
    for name, lr, losses in (("final_lr0.003_seed0", 0.003, [1.0, 0.5]), ("final_lr0.003_seed1", 0.003, [3.0, 1.5]),
                             ("final_lr0.001_seed0", 0.001, [9.0, 9.0]), ("select_lr0.003_seed100", 0.003, [7.0, 7.0])):
        job = tr / "jobs" / "cls" / "context_encoder" / f"{name}.json"
        job.write_text(json.dumps({"init": "context encoder", "task": "cls", "lr": lr, "status": "ok"}))
        log = JsonlLogger(job.with_suffix(".metrics.jsonl"))
        for step, loss in zip((5, 10), losses):
            log.log(step=step, loss=loss, lr=lr)
    assert finetune_curves([tr]) == {"cls": {"context encoder": ([5, 10], [2.0, 1.0], 2)}}
    pre = tmp_path / "pretrain" / "ce"
    JsonlLogger(pre / "metrics.jsonl").log(step=1, loss=0.3)
    assert plot_curves({"ce": pre}, [tr], tmp_path / "fig_curves.png")
    assert (tmp_path / "fig_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert not plot_curves({}, [], tmp_path / "none.png")
