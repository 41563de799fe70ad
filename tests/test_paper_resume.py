"""Fine-tuning jobs killed midway resume from their `last` checkpoint and end with the uninterrupted
run's metric to the digit: classification after SIGKILL, detection after SIGTERM (a preemption), and
classification on a split streamed from disk."""

import json
import os
import subprocess
import sys

import pytest
import torch

from cebench.benchmarks.cli import main as cli_main
from cebench.checkpoint import TEST_SIGNAL_ENV
from cebench.data.demo import DemoDataConfig, generate_demo

CLS = ["--init", "random", "--seeds", "0", "cls.iterations=6", "cls.batch_size=8", "cls.fc_dim=16", "cls.test_crops=2",
       "cls.lrs=[3e-3]", "magic_images=8", "runtime.ckpt_every=2"]
DET = ["--init", "random", "--seeds", "0", "det.iterations=6", "det.fc_dim=16", "det.lrs=[0.001]", "workers=1",
       "det.magic_images=4", "det.eval_batch=8", "det.figure_images=0", "det.cache_images=false",
       "det.proposals.method=grid", "runtime.ckpt_every=2"]


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return generate_demo(tmp_path_factory.mktemp("resume"), DemoDataConfig(n_pretrain=0, n_trainval=24, n_test=12,
                                                                           workers=1))


def _killed(args, signal_at: str) -> int:
    """Run `cebench ARGS` so that it signals itself before iteration k: KILL:k in a child process (a hard
    kill), TERM:k in this process (the handler saves and stops, as on a preemption). Returns the exit code."""
    if signal_at.startswith("TERM"):
        os.environ[TEST_SIGNAL_ENV] = signal_at
        try:
            return cli_main(args)
        finally:
            del os.environ[TEST_SIGNAL_ENV]
    env = {**os.environ, TEST_SIGNAL_ENV: signal_at, "OMP_NUM_THREADS": "1", "CEBENCH_NO_PROGRESS": "1"}
    res = subprocess.run([sys.executable, "-m", "cebench.benchmarks.cli", *args], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == -9, res.stderr[-2000:]
    return res.returncode


def _final(out, task, init="random"):
    [path] = (out / "jobs" / task / init).glob("final_*.json")
    return json.loads(path.read_text())


def _last(out, task):
    found = list((out / "jobs" / task).rglob("*.last.pt"))
    return torch.load(found[0], weights_only=True) if found else None


def _resume_matches(common, out_ref, out_cut, task, signal_at, expect_rc, expect_step):
    assert cli_main([*common, "--out", str(out_ref)]) == 0  # the uninterrupted job
    assert _killed([*common, "--out", str(out_cut)], signal_at) == expect_rc
    ck = _last(out_cut, task)
    assert ck is not None and ck["step"] == expect_step and not (out_cut / "results.json").exists()
    assert ck["per_rank"][0]["stream"] and ck["world_size"] == 1
    assert isinstance(ck["config"], str) and len(ck["config"]) == 12  # the job's cache key (cebench.cache.cache_key)
    assert cli_main([*common, "--out", str(out_cut)]) == 0  # the same command again: resumes
    ref, cut = _final(out_ref, task), _final(out_cut, task)
    assert cut["metrics"] == ref["metrics"]  # to the last digit
    detail = "train_loss" if task != "det" else "ap"
    assert cut["details"][detail] == ref["details"][detail]
    assert _last(out_cut, task) is None  # removed once the job's result is written
    return ref


def test_cls_resumes_after_sigkill(voc, tmp_path):
    common = ["transfer", "cls", "--config", "tiny", "--data", str(voc), *CLS]
    ref = _resume_matches(common, tmp_path / "ref", tmp_path / "cut", "cls", "KILL:5", -9, 4)
    assert ref["inputs"]["train"] == [8, 3, 64, 64] and ref["inputs"]["test_images"] == 12


def test_det_resumes_after_sigterm(voc, tmp_path):
    common = ["transfer", "det", "--config", "tiny", "--data", str(voc), *DET]
    ref = _resume_matches(common, tmp_path / "ref", tmp_path / "cut", "det", "TERM:3", 130, 3)
    assert ref["inputs"]["test_images"] == 12 and ref["inputs"]["scale"] == 128


def test_streamed_split_resumes_and_matches(voc, tmp_path):
    """A split over the memory budget is read from disk by DataLoader workers, and resumes the same way."""
    common = ["transfer", "cls", "--config", "tiny", "--data", str(voc), *CLS, "runtime.memory_mb=0.01",
              "runtime.loader_workers=1"]
    ref = _resume_matches(common, tmp_path / "ref", tmp_path / "cut", "cls", "TERM:3", 130, 3)
    assert not list((tmp_path / "ref").rglob("cls-*.pt"))  # no split decoded into the in-memory cache
    assert ref["inputs"]["test_images"] == 12


def test_checkpoint_of_another_job_config_is_not_resumed(voc, tmp_path):
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    common = ["transfer", "cls", "--config", "tiny", "--data", str(voc)]
    assert _killed([*common, "--out", str(out), *CLS], "TERM:3") == 130
    assert _last(out, "cls")["step"] == 3
    # another crop count is the same job file with another config key: it starts afresh
    assert cli_main([*common, "--out", str(out), *CLS, "cls.test_crops=1"]) == 0
    assert cli_main([*common, "--out", str(fresh), *CLS, "cls.test_crops=1"]) == 0
    assert _final(out, "cls")["metrics"] == _final(fresh, "cls")["metrics"]
