"""The pretraining benchmarks (`cebench bench pretrain`, `cebench bench training`) and the GPU check, run on
the CPU at tiny sizes: they time the trainer's own step, optimiser and loop (the function objects
`cebench pretrain` calls), their rates are the images over the seconds they timed, the limit analysis by
hand, and the GPU check's files (with the rehearsal config missing, and with a tiny rehearsal run)."""

import json

import pytest
import torch
from PIL import Image

from cebench.benchmarks.perf import bench, training
from cebench.benchmarks.perf import pretrain as pretrain_bench
from cebench.benchmarks.perf.gpu_check import main as gpu_check
from cebench.benchmarks.perf.training import bench_training, limit_of, verdicts, write_jpegs
from cebench.pretrain import engine
from cebench.pretrain import train as trainer
from cebench.pretrain.config import PretrainConfig
from cebench.pretrain.models import AlexNetConfig
from cebench.runtime import machine_info


def test_jpeg_files_look_like_photographs(tmp_path):
    jpegs = write_jpegs(tmp_path, 5, distinct=5)  # 500 x 375, like VOC
    sizes = [p.stat().st_size for p in jpegs]
    assert all(30_000 < s < 200_000 for s in sizes)  # not a flat image's few KB
    assert Image.open(jpegs[0]).size == (500, 375)


def test_limit_is_the_slowest_part_per_image():
    # per image: decode 1 ms, augmentation 1/800 - 1/1000 = 0.25 ms, step 1/3000 = 0.33 ms
    assert limit_of(3000, 1000, 800) == "decode"
    # decode 0.1 ms, augmentation 0.5 - 0.1 = 0.4 ms, step 0.33 ms
    assert limit_of(3000, 10_000, 2000) == "augmentation"
    assert limit_of(1000, 10_000, 5000) == "step"


def _res(step, inpaint, loader):
    return {"ce_step": {"img_per_s": step}, "inpaint_step": {"img_per_s": inpaint},
            "jpeg": {"loader_end_to_end_img_per_s": loader[0], "loader_decode_img_per_s": loader[1],
                     "loader_decode_augment_img_per_s": loader[2]}}


def test_verdicts_name_the_goal_and_the_limit():
    v = verdicts(_res(3500, 1200, (2100, 2600, 2400)), "NVIDIA H100 80GB HBM3")
    assert v["applies"] and v["ce_step"]["met"] and not v["inpaint_step"]["met"]
    e2e = v["ce_end_to_end"]
    # per image: decode 1/2600, augmentation 1/2400 - 1/2600, step 1/3500: decode is the slowest part
    assert e2e["met"] and e2e["value"] == 2100 and e2e["limit"] == "decode"
    assert v["paper_pretraining_hours"] == round(6_400_000 / 2100 / 3600, 2)  # 0.85 h
    assert not verdicts(_res(3500, 1200, (1400, 1600, 1450)), "NVIDIA H100")["ce_end_to_end"]["met"]
    assert not verdicts(_res(3500, 1200, (1, 1, 1)), "NVIDIA A100-SXM4-40GB")["applies"]
    assert not verdicts(_res(3500, 1200, (1, 1, 1)), None)["applies"]


@pytest.fixture
def trainer_calls(monkeypatch):
    """Every call of the trainer's step function (`pretrain.engine.train_step`, the one object the
    trainer's loop calls) while a benchmark runs: (objective, opt_g, opt_d, batch size)."""
    calls = []
    real = engine.train_step

    def spy(objective, disc, opt_g, opt_d, x, *args, **kw):
        calls.append((objective, opt_g, opt_d, x.shape[0]))
        return real(objective, disc, opt_g, opt_d, x, *args, **kw)

    monkeypatch.setattr(engine, "train_step", spy)
    return calls


def _fused_adam(opt) -> bool:
    return type(opt) is torch.optim.Adam and opt.defaults["fused"] is True


def test_the_benchmarks_build_with_the_trainers_own_functions():
    # one object each: the builder `cebench pretrain` calls, and the step and loop modules the benchmarks step
    assert training.nets_and_optimizers is trainer.nets_and_optimizers is pretrain_bench.nets_and_optimizers
    assert training.engine is engine is pretrain_bench.engine and trainer.train_one_epoch is engine.train_one_epoch


def test_bench_training_runs_the_real_loop_on_cpu(tmp_path, monkeypatch, trainer_calls):
    timed = []  # (images, seconds) of every timed step run, as the benchmark measured them

    def record(fn, device=None, **kw):
        n, secs = real_timed(fn, device, **kw)
        timed.append((n, secs))
        return n, secs

    real_timed = training.timed
    monkeypatch.setattr(training, "timed", record)
    ce = PretrainConfig(method="ce", encoder=AlexNetConfig.demo(), mask="region", batch_size=4, load_size=72)
    inp = PretrainConfig(method="inpaint-adv", mask="center", batch_size=4, load_size=72)
    res = bench_training(tmp_path / "t.json", device="cpu", quick=True, ce_cfg=ce, inpaint_cfg=inp, n_images=12)
    assert json.loads((tmp_path / "t.json").read_text()) == res
    ce_step, inp_step = res["ce_step"], res["inpaint_step"]
    assert ce_step["masks"] == "region" and ce_step["input"] == 64 and inp_step["adversarial"]
    # the trainer's step, with the trainer's optimisers (fused Adam for G and for D), on every batch:
    # ce_step 2 warm-up + 1 timed; jpeg: 1 warm-up + the 12 files in batches of 2; inpaint_step 2 + 1
    assert all(_fused_adam(opt_g) for _, opt_g, _, _ in trainer_calls)
    assert all(_fused_adam(opt_d) for obj, _, opt_d, _ in trainer_calls if opt_d is not None)
    assert sum(opt_d is not None for _, _, opt_d, _ in trainer_calls) == 3  # inpaint-adv: 2 warm-up + 1 timed
    assert len(trainer_calls) == 3 + (1 + 6) + 3 and {b for *_, b in trainer_calls} == {2}
    assert ce_step["optimizer"] == inp_step["optimizer"] == "Adam (fused)"
    # quick on a CPU: one timed step of batch 2 each; the rate is the images the loop saw over its seconds
    assert [n for n, _ in timed] == [2, 2] and ce_step["steps"] == inp_step["steps"] == 1
    assert ce_step["batch"] == inp_step["batch"] == 2
    for step, (n, secs) in zip((ce_step, inp_step), timed):
        assert step["img_per_s"] == round(n / secs, 1) and step["seconds"] == round(secs, 3)
    j = res["jpeg"]
    assert j["crop"] == 64 and j["images"] == 12 and j["jpeg_size"] == [500, 375] and j["batch"] == 2
    rates = {k for k in j if k.endswith("img_per_s")}
    assert rates == {"loader_decode_img_per_s", "loader_decode_augment_img_per_s", "loader_end_to_end_img_per_s"}
    assert all(j[k] > 0 for k in j if k.endswith("img_per_s"))
    # the verdict is computed from these numbers: the loader end to end, the limit of its parts
    v = res["verdict"]
    assert v["ce_step"]["value"] == ce_step["img_per_s"] and v["inpaint_step"]["value"] == inp_step["img_per_s"]
    assert v["ce_end_to_end"]["value"] == j["loader_end_to_end_img_per_s"]
    assert v["ce_end_to_end"]["limit"] == limit_of(ce_step["img_per_s"], j["loader_decode_img_per_s"],
                                                   j["loader_decode_augment_img_per_s"])
    assert v["paper_pretraining_hours"] == round(6_400_000 / v["ce_end_to_end"]["value"] / 3600, 2)
    assert not v["applies"]


def test_bench_pretrain_times_the_trainers_step(monkeypatch, trainer_calls):
    timed = []

    def record(fn, device=None, **kw):
        out, secs = real_timed(fn, device, **kw)
        timed.append((kw, secs))
        return out, secs

    real_timed = pretrain_bench.timed
    monkeypatch.setattr(pretrain_bench, "timed", record)
    cfg = pretrain_bench.configs()["inpaint-ce-demo-64"]
    r = pretrain_bench.bench_one(cfg, "cpu", batch=2, steps=3, warmup=1)
    # 1 warm-up + 3 timed calls of the trainer's step, on the nets and fused Adams the trainer builds
    assert len(trainer_calls) == 4 and all(b == 2 for *_, b in trainer_calls)
    assert all(_fused_adam(g) and _fused_adam(d) for _, g, d, _ in trainer_calls)
    assert len({id(obj) for obj, *_ in trainer_calls}) == 1  # one net, stepped 4 times
    ((kw, secs),) = timed
    assert kw == {"repeat": 3, "warmup": 1}
    assert r["img_per_s"] == round(2 * 3 / secs, 2) and r["seconds"] == round(secs, 3)
    assert r["optimizer"] == "Adam (fused)" and r["params"] == sum(p.numel() for p in trainer_calls[0][0].parameters())


@pytest.fixture
def small_bench(monkeypatch, tmp_path):
    """`cebench bench` as the GPU check calls it, with the training benchmark at demo size (the paper
    sizes take half a minute on a CPU; test_bench_training_runs_the_real_loop_on_cpu covers the rest)."""

    def run_bench(which, out_dir, opts):
        assert which == "training" and opts.device == "cpu" and opts.quick
        ce = PretrainConfig(method="ce", encoder=AlexNetConfig.demo(), mask="region", batch_size=2, load_size=72)
        inp = PretrainConfig(method="inpaint", mask="center", batch_size=2, load_size=72)
        res = bench_training(out_dir / "bench_training.json", device=opts.device, quick=True, ce_cfg=ce,
                             inpaint_cfg=inp, n_images=6)
        return {"training": res, "machine": machine_info(), "date": "now"}

    monkeypatch.setattr(bench, "run_bench", run_bench)


def test_gpu_check_fails_clearly_without_the_rehearsal_config(tmp_path, capsys, small_bench):

    rc = gpu_check(["--device", "cpu", "--quick", "--bench", "training", "--out", str(tmp_path / "res"),
               "--work", str(tmp_path / "work"), "--rehearsal", str(tmp_path / "nope.yaml")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "rehearsal config" in err and "not found" in err
    data = json.loads((tmp_path / "res" / "bench_gpu.json").read_text())
    assert data["rehearsal"]["status"] == "missing" and "training" in data["bench"]
    md = (tmp_path / "res" / "bench_gpu.md").read_text()
    assert "Pretraining throughput on cpu" in md and "Not run" in md and "| 3000 |" in md


def test_gpu_check_refuses_cuda_without_a_gpu(tmp_path, capsys, monkeypatch):

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check(["--out", str(tmp_path), "--no-rehearsal"]) == 2
    assert "no CUDA device" in capsys.readouterr().err and not (tmp_path / "bench_gpu.json").exists()


def test_gpu_check_runs_a_rehearsal_and_reports_its_jobs(tmp_path, small_bench):
    """The same path as on a GPU, on the CPU, with the tiny config cut to one fine-tuning."""

    rc = gpu_check(["--device", "cpu", "--quick", "--bench", "training", "--out", str(tmp_path / "res"),
               "--work", str(tmp_path / "work"), "--rehearsal", "tiny", f"data.demo_dir={tmp_path / 'data'}",
               "run.methods=[]", "run.tasks=[cls]", "run.inpaint=false", "run.svm=false", "run.retrieval=false",
               "transfer.seeds=[0]", "transfer.cls.iterations=2"])
    data = json.loads((tmp_path / "res" / "bench_gpu.json").read_text())
    assert rc == 0, data["rehearsal"]
    reh = data["rehearsal"]
    assert reh["status"] == "ok" and reh["jobs"] == {"cls/random": "done"}
    assert (tmp_path / "work" / "rehearsal" / "report" / "table2.csv").is_file()
    assert "## Rehearsal" in (tmp_path / "res" / "bench_gpu.md").read_text()
