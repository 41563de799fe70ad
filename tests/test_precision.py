"""Precision: amp=auto's start-up probe on CPU, its one resolution per pipeline run (kept for resume), and
every training stage run end to end under bf16 autocast on CPU (the tiny config itself pins fp32)."""

import json
import math
from dataclasses import replace

import pytest
import torch

from cebench import runtime
from cebench.benchmarks import pipeline, report
from cebench.benchmarks.cli import build_parser, resolve_config
from cebench.benchmarks.jobs import LocalLauncher
from cebench.config import load_config, save_config
from cebench.data.sources import DataConfig
from cebench.errors import ConfigError
from cebench.pretrain import train as T
from cebench.pretrain.inpaint_eval import InpaintEvalConfig
from cebench.pretrain.train import PretrainConfig
from cebench.retrieval.evaluate import RetrievalConfig
from cebench.transfer import tasks
from cebench.transfer.config import TransferConfig


@pytest.fixture(autouse=True)
def _probe_not_pinned(monkeypatch):
    monkeypatch.delenv(runtime.CPU_AMP_ENV, raising=False)  # conftest pins fp32 for every other test


def test_probe_reports_timings_and_a_consistent_choice():
    out = runtime.probe_cpu_bf16(rounds=2)
    assert set(out) == {"choice", "native_bf16", "fp32_ms", "bf16_ms", "speedup"}
    assert out["choice"] in ("bf16", "none")
    if out["native_bf16"]:
        assert out["fp32_ms"] > 0 and out["bf16_ms"] > 0
        assert math.isclose(out["speedup"], out["fp32_ms"] / out["bf16_ms"], rel_tol=0.05)
        assert (out["choice"] == "bf16") == (out["speedup"] >= 1.3)
    else:
        assert out["choice"] == "none" and out["speedup"] is None


def test_probe_without_native_bf16_keeps_fp32_and_times_nothing(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_bf16_native", lambda: False)
    assert runtime.probe_cpu_bf16() == {"choice": "none", "native_bf16": False, "fp32_ms": None, "bf16_ms": None,
                                        "speedup": None}
    assert runtime.resolve_amp("auto", "cpu") == "none"
    assert runtime.init_runtime("cpu", "auto").amp_dtype is None


def test_resolve_amp(monkeypatch):
    monkeypatch.setattr(runtime, "probe_cpu_bf16", lambda: {"choice": "bf16"})
    assert runtime.resolve_amp("auto", "cpu") == "bf16"
    monkeypatch.setenv(runtime.CPU_AMP_ENV, "none")  # the pin wins over the probe
    assert runtime.resolve_amp("auto", "cpu") == "none" and runtime.cpu_amp()["pinned_by"] == "CEBENCH_CPU_AMP"
    monkeypatch.setenv(runtime.CPU_AMP_ENV, "fp16")
    with pytest.raises(ConfigError, match="CEBENCH_CPU_AMP must be bf16 or none"):
        runtime.resolve_amp("auto", "cpu")
    monkeypatch.delenv(runtime.CPU_AMP_ENV)
    assert runtime.init_runtime("cpu", "auto").amp_dtype == torch.bfloat16
    assert runtime.resolve_amp("auto", torch.device("cuda", 0)) == "bf16"  # no probe on CUDA
    assert runtime.resolve_amp("auto", "meta") == "none"
    assert [runtime.resolve_amp(a, "cpu") for a in ("bf16", "none", "fp32", "off")] == ["bf16", "none", "none", "none"]
    with pytest.raises(ConfigError, match="amp must be auto, bf16 or none"):
        runtime.resolve_amp("half", "cpu")


def _cfg(*overrides):
    return pipeline.resolve(resolve_config("tiny"), list(overrides))


AUTO = ["pretrain.amp=auto", "inpaint.train.amp=auto", "transfer.runtime.amp=auto", "retrieval.amp=auto"]


def test_pipeline_probes_once_and_a_resumed_run_keeps_the_choice(tmp_path, monkeypatch):
    calls = []

    def fake_probe():
        calls.append(1)
        return {"choice": "bf16", "native_bf16": True, "fp32_ms": 20.0, "bf16_ms": 10.0, "speedup": 2.0}

    monkeypatch.setattr(pipeline, "cpu_amp", fake_probe)
    cpu = pipeline.Placement(LocalLauncher(), None, 2, "cpu")
    cfg = _cfg(*AUTO, "retrieval.amp=none")  # an explicit choice is kept
    prec = pipeline.resolve_precision(cfg, tmp_path, cpu)
    assert calls == [1]
    assert prec["stages"] == {"pretrain": "bf16", "inpaint.train": "bf16", "transfer.runtime": "bf16",
                              "retrieval": "none"}
    assert cfg["pretrain"]["amp"] == "bf16" and cfg["inpaint"]["train"]["amp"] == "bf16"
    assert cfg["transfer"]["runtime"]["amp"] == "bf16" and cfg["retrieval"]["amp"] == "none"
    assert json.loads((tmp_path / "precision.json").read_text())["choice"] == "bf16"
    # the rerun of an interrupted run: no new probe, the same precision (so the same cache keys)
    cfg2 = _cfg(*AUTO)
    assert pipeline.resolve_precision(cfg2, tmp_path, cpu)["stages"]["pretrain"] == "bf16" and calls == [1]
    jobs = pipeline.plan(cfg, tmp_path, tmp_path / "config.yaml", "cpu")
    jobs2 = pipeline.plan(cfg2, tmp_path, tmp_path / "config.yaml", "cpu")
    assert [j.key for j in jobs if j.stage == "transfer"] == [j.key for j in jobs2 if j.stage == "transfer"]
    # another precision is another job: its key changes
    cfg3 = _cfg()  # tiny pins fp32
    jobs3 = pipeline.plan(cfg3, tmp_path, tmp_path / "config.yaml", "cpu")
    assert {j.name: j.key for j in jobs}["pretrain/ce"] != {j.name: j.key for j in jobs3}["pretrain/ce"]
    line = report.precision_line(prec)
    assert line.startswith("Precision: bf16 autocast (pretrain, inpaint.train, transfer.runtime), fp32 (retrieval)")
    assert "20.0 ms in fp32 and 10.0 ms in bf16 (2.0x)" in line
    # GPUs: auto stays auto (each job takes bf16 on its CUDA device) and nothing is probed
    gpu = pipeline.Placement(LocalLauncher(), ["0", "1"], 2, "cuda")
    cfg4 = _cfg(*AUTO)
    assert set(pipeline.resolve_precision(cfg4, tmp_path / "gpu", gpu)["stages"].values()) == {"auto"}
    assert calls == [1] and not (tmp_path / "gpu" / "precision.json").exists()


def test_a_runs_jobs_are_handed_the_recorded_precision(tmp_path, monkeypatch):
    """amp=auto is resolved once per run and written into the config file every job's command names: each
    stage loads the run's precision from it, and a transfer task neither probes again nor keys another."""
    monkeypatch.setattr(pipeline, "cpu_amp", lambda: {"choice": "bf16", "pinned_by": "test"})
    cfg = _cfg(*AUTO)
    cfg["data"]["demo_dir"] = str(tmp_path / "data")
    pipeline.resolve_precision(cfg, tmp_path, pipeline.Placement(LocalLauncher(), None, 2, "cpu"))
    path = save_config(cfg, tmp_path)
    jobs = pipeline.plan(cfg, tmp_path, path, "cpu")
    assert {j.args[j.args.index("--config") + 1] for j in jobs} == {str(path)}
    assert load_config(PretrainConfig, path, section="pretrain").amp == "bf16"
    assert load_config(InpaintEvalConfig, path, section="inpaint").train.amp == "bf16"
    assert load_config(RetrievalConfig, path, section="retrieval").amp == "bf16"
    tr = load_config(TransferConfig, path, section="transfer")
    assert tr.runtime.amp == "bf16"

    def probe():
        probes.append(1)
        return {"choice": "bf16", "native_bf16": True, "fp32_ms": 2.0, "bf16_ms": 1.0, "speedup": 2.0}

    probes, seen = [], {}

    class Stop(Exception):
        pass

    def run_seeds(fn, task, specs, plan, ctx, out_dir, **kw):
        seen.update(amp=ctx.runtime.amp, key=kw["key"])
        raise Stop

    monkeypatch.setattr(runtime, "probe_cpu_bf16", probe)
    monkeypatch.setattr(tasks, "run_seeds", run_seeds)
    data = load_config(DataConfig, path, section="data")
    with pytest.raises(Stop):
        tasks.main("cls", tr, data, ["random"], tmp_path / "cls", "cpu")
    assert probes == [] and seen["amp"] == "bf16"  # the job of a run: the run's precision, no probe
    handed = seen["key"]
    # the same command run by hand with amp=auto resolves once, through the runtime's resolver
    with pytest.raises(Stop):
        tasks.main("cls", replace(tr, runtime=replace(tr.runtime, amp="auto")), data, ["random"], tmp_path / "cls",
                   "cpu")
    assert probes == [1] and seen["amp"] == "bf16" and seen["key"] == handed
    # `cebench transfer cls` by hand with amp=auto: one probe for the command (its runtime and its jobs)
    args = build_parser().parse_args(["transfer", "cls", "--config", str(path), "--device", "cpu", "--out",
                                      str(tmp_path / "cli"), "runtime.amp=auto"])
    with pytest.raises(Stop):
        args.func(args)
    assert probes == [1, 1] and seen["amp"] == "bf16" and seen["key"] == handed
    ck = T.main(PretrainConfig(method="ae", steps=1, batch_size=8, eval_images=0, sample_every=0, amp="auto"), data,
                tmp_path / "ae", device="cpu")
    assert probes == [1, 1, 1] and torch.load(ck, weights_only=True)["config"]["amp"] == "bf16"


def test_every_stage_trains_under_bf16_on_cpu(tmp_path):
    """cls, seg, det, pretraining (ce) and the inpainting nets under bf16 autocast: finite metrics, and the saved
    configs say bf16 (RoI pooling runs in fp32 inside: torchvision's CPU kernel takes one dtype)."""
    data = f"data.demo_dir={tmp_path / 'data'}"
    p = build_parser()

    def run(command, out, *overrides):
        args = p.parse_args([*command, "--config", "tiny", "--device", "cpu", "--out", str(out), *overrides, data])
        assert args.func(args) == 0

    run(["pretrain", "--method", "ce"], tmp_path / "ce", "steps=2", "batch_size=8", "eval_images=0", "amp=bf16")
    ck = torch.load(tmp_path / "ce" / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 2 and ck["config"]["amp"] == "bf16"
    out = tmp_path / "tr"
    fast = ["seeds=[0]", "runtime.amp=bf16", "cls.iterations=3", "cls.batch_size=8", "cls.test_crops=2",
            "seg.iterations=3", "seg.batch_size=8", "det.iterations=3", "det.magic_images=4", "det.fc_dim=32",
            "det.eval_batch=8", "det.figure_images=0", "det.proposals.workers=1"]
    for task in ("cls", "seg", "det", "svm"):
        run(["transfer", task, "--init", f"ce={tmp_path / 'ce' / 'checkpoint.pt'}"], out, *fast)
    rows = json.loads((out / "results.json").read_text())["rows"]
    got = {(r["task"], r["metric"]): r for r in rows}
    for key in (("cls", "mAP"), ("seg", "mean IU"), ("det", "mAP"), ("svm", "svm conv5 mAP")):
        assert got[key]["status"] == "ok" and 0.0 <= got[key]["mean"] <= 1.0, got[key]
    assert "amp: bf16" in (out / "config.yaml").read_text()
    run(["inpaint-eval"], tmp_path / "inp", "train.steps=2", "train.amp=bf16", "n_test=4")
    assert "amp: bf16" in (tmp_path / "inp" / "config.yaml").read_text()
    run(["retrieval-bench", "--checkpoint", f"ce={tmp_path / 'ce' / 'checkpoint.pt'}"], tmp_path / "ret", "amp=bf16",
        "methods=[random]", "layers=[pool5]", "masked=[false]", "max_queries=20", "max_images=6")
    table = (tmp_path / "ret" / "retrieval.csv").read_text()
    assert "ce" in table and "random" in table


def test_retrieve_cnn_features_under_bf16_have_their_own_cache_entry(tmp_path):
    """`cebench retrieve --features random --amp bf16`: a grid is written, and the bf16 features are cached
    apart from the fp32 ones (another precision, other features); HOG ignores the precision."""
    import numpy as np
    from PIL import Image

    from cebench.benchmarks.cli import main as cli_main

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray((rng.random((70, 90, 3)) * 255).astype(np.uint8)).save(photos / f"p{i}.png")
    base = ["retrieve", "--images", str(photos), "--query", f"{photos / 'p0.png'}:2,2,30,30", "--patch-size", "32",
            "--k", "3", "--features", "random,hog", "--cache", str(tmp_path / "cache")]
    assert cli_main([*base, "--out", str(tmp_path / "a.png"), "--amp", "bf16"]) == 0
    assert cli_main([*base, "--out", str(tmp_path / "b.png"), "--amp", "none"]) == 0
    assert (tmp_path / "a.png").stat().st_size > 1000 and (tmp_path / "b.png").stat().st_size > 1000
    entries = {p.parent for p in (tmp_path / "cache").rglob("chunk_*.npz")}
    assert len(entries) == 3, sorted(map(str, entries))  # random in bf16, random in fp32, one HOG
