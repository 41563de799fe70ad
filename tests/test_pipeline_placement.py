"""Placement on a (fake) GPU pool: one job per GPU side by side, each seeing only its own
CUDA_VISIBLE_DEVICES; a k-process job started by torchrun on k GPUs while the others wait; and a real
2-process (Gloo) pretraining launched by the scheduler through torchrun."""

import json
import os
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cebench.benchmarks.cli import resolve_config
from cebench.benchmarks.jobs import Job, Scheduler, command, is_done, visible_gpus
from cebench.benchmarks.pipeline import RunSection, placement, plan, resolve
from cebench.data.sources import DataConfig, voc_root
from cebench.errors import ConfigError

# A job that records what it saw: its CUDA_VISIBLE_DEVICES and torchrun rank, and which jobs were
# running when it started; `partner` makes it wait (10 s at most) until that job has started too, so
# two jobs that run side by side both see the other.
SCRIPT = textwrap.dedent(r"""
    import json, os, sys, time
    from pathlib import Path
    box, name, partner = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    rank = os.environ.get("RANK", "0")
    others = sorted(p.stem for p in box.glob("*.start") if not (box / (p.stem + ".end")).exists() and p.stem != name)
    if rank == "0":
        (box / f"{name}.start").write_text("")
    deadline = time.time() + 10
    while partner != "-" and not (box / f"{partner}.start").exists() and time.time() < deadline:
        time.sleep(0.05)
    info = {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "world": os.environ.get("WORLD_SIZE", "1"),
            "others_at_start": others, "partner_seen": partner == "-" or (box / f"{partner}.start").exists()}
    (box / f"{name}.{rank}.json").write_text(json.dumps(info))
    if rank == "0":
        time.sleep(0.3)
        (box / f"{name}.end").write_text("")
""")


def _job(tmp_path, name, partner="-", procs=1, gpu=True, deps=()):
    box = tmp_path / "box"
    box.mkdir(exist_ok=True)
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    return Job(name, "test", [str(box), name, partner], tmp_path / "jobs" / name, key=f"k-{name}", deps=deps,
               procs=procs, gpu=gpu, entry=(str(script),))


def _seen(tmp_path, name, rank=0):
    return json.loads((tmp_path / "box" / f"{name}.{rank}.json").read_text())


def test_two_gpus_two_jobs_side_by_side_then_a_two_gpu_job_alone(tmp_path):
    jobs = [_job(tmp_path, "a", partner="b"), _job(tmp_path, "b", partner="a"), _job(tmp_path, "c"),
            _job(tmp_path, "d", procs=2), _job(tmp_path, "cpu", gpu=False, deps=("d",))]
    res = Scheduler(jobs, max_parallel=8, gpus=["0", "1"], status_every=1e9).run()
    assert {n: r.status for n, r in res.items()} == dict.fromkeys("abcd", "done") | {"cpu": "done"}
    a, b, c = _seen(tmp_path, "a"), _seen(tmp_path, "b"), _seen(tmp_path, "c")
    # a and b ran at once, on different GPUs, each seeing only its own
    assert a["partner_seen"] and b["partner_seen"]
    assert {a["cuda"], b["cuda"]} == {"0", "1"}
    # c needed a GPU: it started once a or b had freed one, never beside both
    assert c["cuda"] in ("0", "1") and len(c["others_at_start"]) <= 1
    # d: torchrun with 2 processes, both seeing both GPUs, started when nothing else ran
    d0, d1 = _seen(tmp_path, "d", 0), _seen(tmp_path, "d", 1)
    assert d0["world"] == d1["world"] == "2" and d0["cuda"] == d1["cuda"] == "0,1"
    assert d0["others_at_start"] == []
    # a CPU-only job takes no GPU: CUDA_VISIBLE_DEVICES is left as the caller had it
    assert _seen(tmp_path, "cpu")["cuda"] == os.environ.get("CUDA_VISIBLE_DEVICES")
    assert all(is_done(j) for j in jobs)
    assert "# CUDA_VISIBLE_DEVICES=0,1" in (tmp_path / "jobs" / "d" / "log.txt").read_text()


def test_one_gpu_listed_twice_runs_two_jobs_on_it(tmp_path):
    """run.jobs_per_gpu=2: the pool lists a GPU twice, two jobs share it."""
    jobs = [_job(tmp_path, "a", partner="b"), _job(tmp_path, "b", partner="a")]
    Scheduler(jobs, max_parallel=8, gpus=["7", "7"], status_every=1e9).run()
    assert _seen(tmp_path, "a")["partner_seen"] and _seen(tmp_path, "b")["partner_seen"]
    assert _seen(tmp_path, "a")["cuda"] == _seen(tmp_path, "b")["cuda"] == "7"


def test_torchrun_command_is_a_list_with_standalone_rendezvous():
    job = Job("pretrain/ce", "pretrain", ["pretrain", "--method", "ce"], Path("x"), "k", procs=3)
    assert command(job) == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3",
                            "-m", "cebench.benchmarks.cli", "pretrain", "--method", "ce"]
    one = Job("cls/random", "transfer", ["transfer", "cls"], Path("x"), "k")
    assert command(one) == [sys.executable, "-m", "cebench.benchmarks.cli", "transfer", "cls"]


def test_visible_gpus_follow_the_device_and_the_parent_mask(monkeypatch):
    monkeypatch.delenv("CEBENCH_FAKE_GPUS", raising=False)
    assert visible_gpus("cpu") == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")  # e.g. SLURM gave this job GPUs 4 and 6
    assert visible_gpus("cuda") == ["4", "6"] and visible_gpus("auto") == ["4", "6"]
    assert visible_gpus("cuda:1") == ["6"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus("cuda") == ["0", "1"]
    monkeypatch.setenv("CEBENCH_FAKE_GPUS", "3")
    assert visible_gpus("cpu") == ["0", "1", "2"]


def test_placement_resolves_pool_parallel_and_job_device(monkeypatch):

    run = RunSection(executor="local", parallel=0, pretrain_gpus=1, jobs_per_gpu=2)
    monkeypatch.setenv("CEBENCH_FAKE_GPUS", "2")
    p = placement(run, "cpu")
    assert p.gpus == ["0", "0", "1", "1"] and p.parallel == 4 and p.job_device == "cpu"
    assert placement(replace(run, parallel=3), "cpu").parallel == 3
    with pytest.raises(ConfigError, match="pretrain_gpus=4 but only 2 GPU"):
        placement(replace(run, pretrain_gpus=4), "cpu")
    with pytest.raises(ConfigError, match="run.jobs_per_gpu must be at least 1"):
        placement(replace(run, jobs_per_gpu=0), "cpu")
    with pytest.raises(ConfigError, match="--no-wait needs a cluster executor"):
        placement(run, "cpu", wait=False)
    monkeypatch.delenv("CEBENCH_FAKE_GPUS")
    p = placement(run, "cpu")
    assert p.gpus is None and p.parallel == (os.cpu_count() or 1)


def test_plan_gives_the_pretraining_k_processes_and_a_new_key():

    def jobs(*ov):
        cfg = resolve(resolve_config("tiny"), list(ov))
        return {j.name: j for j in plan(cfg, Path("out"), resolve_config("tiny"), "cuda")}

    one, two = jobs(), jobs("run.pretrain_gpus=2")
    assert one["pretrain/ce"].procs == 1 and two["pretrain/ce"].procs == 2
    assert one["pretrain/ce"].key != two["pretrain/ce"].key  # a 2 x batch run is another run
    assert one["cls/random"].key == two["cls/random"].key and two["cls/random"].procs == 1
    assert two["cls/context-encoder"].key != one["cls/context-encoder"].key  # its init changed
    assert not one["det-proposals"].gpu  # selective search runs on the CPU, beside the GPU jobs


@pytest.mark.slow
def test_two_gpu_pretraining_runs_two_gloo_processes_through_torchrun(tmp_path, monkeypatch):
    """run.pretrain_gpus=2 on 2 (fake) GPUs: the scheduler starts `cebench pretrain` with torchrun, whose
    2 processes train together with Gloo on the CPU (each step 2 x batch_size images)."""
    data = tmp_path / "data"
    voc = voc_root(DataConfig(demo="tiny", demo_dir=str(data)))
    out = tmp_path / "pre"
    args = ["pretrain", "--method", "ce", "--config", str(resolve_config("tiny")), "--data", str(voc),
            "--device", "cpu", "--out", str(out), "steps=3", "batch_size=4", "eval_images=0", "sample_every=0",
            "ckpt_every=2"]
    job = Job("pretrain/ce", "pretrain", args, out, "k2", procs=2)
    res = Scheduler([job], max_parallel=2, gpus=["0", "1"], status_every=1e9).run()
    log = (out / "log.txt").read_text()
    assert res["pretrain/ce"].status == "done", log[-3000:]
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 3 and not any(k.startswith("module.") for k in ck["model"])
    assert "# CUDA_VISIBLE_DEVICES=0,1" in log
    # the images of one epoch are shared by 2 processes of 4: steps per epoch = images // 8
    line = next(ln for ln in log.splitlines() if " parameters, " in ln and " per epoch)" in ln)
    images = int(line.split(" parameters, ")[1].split(" images")[0])
    assert f"({images // 8} per epoch)" in line, line
