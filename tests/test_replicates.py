"""`cebench replicates`: the fixed-effect combination (hand case, scipy) and the command on two report folders."""

import json
import math

import pandas as pd
import pytest
from scipy import stats

from cebench.benchmarks.cli import main as cli_main
from cebench.benchmarks.replicates import main as replicates_main
from cebench.errors import CebenchError
from cebench.transfer.stats import combine_paired, paired_difference


def test_combine_paired_hand_case():
    """Replicate A diffs 1, 3 and B diffs 3, 5: means 2 and 4, each se 1 (weight 1). Combined mean 3,
    se 1/sqrt(2), 2 pooled df, t = 3 sqrt(2); with 2 df P(|T| > t) = 1 - t / sqrt(t^2 + 2).
    Q = (2 - 3)^2 + (4 - 3)^2 = 2 on 1 df: P(chi2_1 > 2) = erfc(1)."""
    a = paired_difference({"0": 1.0, "1": 3.0}, {"0": 0.0, "1": 0.0})
    b = paired_difference({"0": 3.0, "1": 5.0}, {"0": 0.0, "1": 0.0})
    c = combine_paired([a, b])
    t = 3 * math.sqrt(2)
    assert c["replicates"] == 2 and c["n"] == 4 and c["wins"] == 4 and c["df"] == 2
    assert math.isclose(c["mean_diff"], 3.0) and math.isclose(c["se"], 1 / math.sqrt(2))
    assert math.isclose(c["t"], t) and math.isclose(c["p"], 1 - t / math.sqrt(t * t + 2))
    half = stats.t.ppf(0.975, 2) / math.sqrt(2)
    assert math.isclose(c["ci95"][0], 3 - half) and math.isclose(c["ci95"][1], 3 + half)
    assert math.isclose(c["q"], 2.0) and math.isclose(c["p_q"], math.erfc(1.0))
    # random effects: DerSimonian-Laird tau2 = (Q - (k-1)) / (sum w - sum w^2 / sum w) = (2 - 1) / (2 - 1) = 1;
    # weights 1 / (1 + 1) each, mean 3; Hartung-Knapp factor (0.5 + 0.5) / 1 = 1, se sqrt(1 / 1) = 1, t = 3
    # on 1 df (Cauchy): P(|T| > 3) = 1 - 2 atan(3) / pi
    assert math.isclose(c["tau2"], 1.0) and math.isclose(c["re_mean_diff"], 3.0) and math.isclose(c["re_se"], 1.0)
    assert math.isclose(c["re_p"], 1 - 2 * math.atan(3) / math.pi)
    assert math.isclose(c["re_ci95"][1] - 3, stats.t.ppf(0.975, 1))
    # replicates that agree within their seed spread (Q < k - 1): tau2 = 0 and the means coincide
    e = combine_paired([a, paired_difference({"0": 1.5, "1": 3.5}, {"0": 0.0, "1": 0.0})])
    assert e["tau2"] == 0.0 and math.isclose(e["re_mean_diff"], e["mean_diff"])


def test_combine_one_replicate_is_the_paired_t_test_and_unequal_weights():
    x, y = [0.52, 0.61, 0.58, 0.49, 0.66], [0.50, 0.55, 0.57, 0.47, 0.60]
    d = paired_difference(dict(enumerate(x)), dict(enumerate(y)))
    c = combine_paired([d])
    ref = stats.ttest_rel(x, y)
    assert math.isclose(c["t"], ref.statistic) and math.isclose(c["p"], ref.pvalue) and math.isnan(c["q"])
    # a precise replicate (se 0.5) outweighs a noisy one (se 2) 16:1
    p1 = {"n": 4, "mean_diff": 1.0, "std_diff": 1.0, "wins": 3}
    p2 = {"n": 4, "mean_diff": 6.0, "std_diff": 4.0, "wins": 4}
    c = combine_paired([p1, p2, {"n": 1, "mean_diff": 9.0, "std_diff": math.nan, "wins": 1}])
    assert c["replicates"] == 2 and math.isclose(c["mean_diff"], (16 * 1 + 6) / 17)
    assert combine_paired([])["replicates"] == 0 and math.isnan(combine_paired([])["p"])


def _report(path, values: dict, identity: dict | None):
    """values: {init: [per-seed cls mAP points]}"""
    path.mkdir(parents=True)
    rows = [{"init": init, "task": "cls", "metric": "mAP", "seed": str(s), "value": v}
            for init, vs in values.items() for s, v in enumerate(vs)]
    pd.DataFrame(rows).to_csv(path / "per_seed.csv", index=False)
    if identity is not None:
        (path / "run.json").write_text(json.dumps({"replicate": identity}))
    return str(path)


def test_replicates_command(tmp_path, capsys):
    ident = {"data": "demo:demo", "demo_seed": 0, "pretrain_seed": 0}
    r0 = _report(tmp_path / "demo" / "report", {"random": [40, 42, 44], "context encoder": [41, 45, 45],
                                                "autoencoder": [40, 41, 43]}, ident)
    r1 = _report(tmp_path / "demo-data1" / "report", {"random": [50, 50, 53], "context encoder": [53, 52, 54]},
                 {**ident, "demo_seed": 1})
    df = replicates_main([r0, r1], tmp_path / "out")
    ce = df[(df["comparison"] == "context encoder - random")]
    assert list(ce["replicate"]) == ["demo", "demo-data1", "combined (2)"]
    assert list(ce["n"]) == [3, 3, 6] and list(ce["wins"]) == [3, 3, 6]
    ref = combine_paired([paired_difference({"0": 41, "1": 45, "2": 45}, {"0": 40, "1": 42, "2": 44}),
                          paired_difference({"0": 53, "1": 52, "2": 54}, {"0": 50, "1": 50, "2": 53})])
    assert math.isclose(ce["mean_diff"].iloc[2], ref["mean_diff"]) and math.isclose(ce["p_q"].iloc[2], ref["p_q"])
    ae = df[df["comparison"] == "autoencoder - random"]  # only one replicate has the autoencoder
    assert list(ae["replicate"]) == ["demo", "combined (1)"]
    md = (tmp_path / "out" / "replicates.md").read_text()
    assert "| cls | context encoder - random | combined (2) |" in md and "`demo-data1`" in md
    assert "| cls | autoencoder | 41.3 ± 1.5 (3) | - |" in md  # levels: one column per replicate
    assert pd.read_csv(tmp_path / "out" / "replicates.csv").shape[0] == len(df)

    with pytest.raises(CebenchError, match="same data and pretraining seed"):
        replicates_main([r0, _report(tmp_path / "again", {"random": [1, 2]}, ident)], tmp_path / "out2")
    with pytest.raises(CebenchError, match="repeats random cls seed 1 = 42 of"):  # no run.json, same numbers
        replicates_main([r0, _report(tmp_path / "subset", {"random": [39, 42]}, None)], tmp_path / "out2")
    with pytest.raises(CebenchError, match="at least two"):
        replicates_main([r0], tmp_path / "out3")
    capsys.readouterr()
    assert cli_main(["replicates", r0, str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "per_seed.csv: missing" in err and len(err.splitlines()) == 1
