"""One cache key: `cebench.cache.cache_key` keys every reused result (a pipeline job's `.done.json`, a
transfer job's JSON, a fine-tuning job's and a pretraining's `last` checkpoint), and the tiny config's
pipeline keys are the ones finished runs were stored under (a changed key would recompute them)."""

import dataclasses
import types
from pathlib import Path

import pytest
import torch

from cebench import cache
from cebench.benchmarks import pipeline
from cebench.benchmarks.cli import resolve_config
from cebench.benchmarks.jobs import LocalLauncher
from cebench.checkpoint import load_state_strict
from cebench.data.sources import DataConfig
from cebench.errors import CheckpointError
from cebench.pretrain import train as T
from cebench.runtime import init_runtime
from cebench.transfer import common, tasks
from cebench.transfer.config import TransferConfig
from cebench.transfer.inits import InitSpec
from cebench.transfer.protocol import TransferJob

# `cebench run --config tiny --out /fixed/out/tiny` planned before the keys had one function (commit 4830c36):
# every job's key. A change here recomputes every cached run of the suite: only on purpose.
TINY_KEYS = {
    "pretrain/ce": "52fdcb3255c5", "pretrain/ae": "de6b6fbfc165", "inpaint": "8a65e55d1fc0",
    "retrieval": "f78a552fa081", "det-proposals": "b865a4475140",
    "cls/random": "c0ffff02ab77", "cls/context-encoder": "c1de06a55b1c", "cls/autoencoder": "7615c804da11",
    "seg/random": "7084631f854a", "seg/context-encoder": "fef6113163a4", "seg/autoencoder": "9e323486f8f5",
    "det/random": "08d21cd06ee9", "det/context-encoder": "9cb3209e9281", "det/autoencoder": "3c35669d560a",
    "svm/random": "2623ba5eae28", "svm/context-encoder": "6caf903ac10e", "svm/autoencoder": "8c714b56f5c2",
}


def replace_runtime(cfg: TransferConfig, **kw) -> TransferConfig:
    return dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, **kw))


def _tiny_plan(monkeypatch, *overrides):
    monkeypatch.setattr(pipeline, "imagenet_weights_state", lambda: [False, 0])  # this machine's file stays out
    out = Path("/fixed/out/tiny")
    cfg = pipeline.resolve(resolve_config("tiny"), list(overrides))
    cfg["data"]["demo_dir"] = str(out / "data")  # as `cebench run` sets it
    pipeline.resolve_precision(cfg, out, pipeline.Placement(LocalLauncher(), None, 1, "cpu"))  # tiny: explicit
    return pipeline.plan(cfg, out, out / "config.yaml", "auto")


def test_cache_key_is_a_stable_hash_of_the_inputs():
    @dataclasses.dataclass
    class Cfg:
        lr: float = 0.1
        path: Path = Path("a/b")

    assert cache.cache_key({"a": 1, "b": [1, 2]}) == cache.cache_key({"b": (1, 2), "a": 1})  # order, tuples
    assert cache.cache_key(Cfg()) == cache.cache_key({"lr": 0.1, "path": "a/b"})  # a dataclass is its fields
    assert cache.cache_key(Cfg()) != cache.cache_key(Cfg(lr=0.2))
    key = cache.cache_key([{"x": 1}, "y"])
    assert len(key) == 12 and int(key, 16) >= 0
    assert key == "0aac67cda0ce"  # the same on every machine and in every process


def test_the_tiny_config_keeps_its_pipeline_keys(monkeypatch):
    assert {j.name: j.key for j in _tiny_plan(monkeypatch)} == TINY_KEYS


def test_every_key_is_computed_by_the_one_function(monkeypatch, tmp_path):
    """A stand-in for `cache_key` is what the pipeline, a transfer task, a fine-tuning job's checkpoint and a
    pretraining's resume check use: none of them computes a key of its own."""
    for module in (pipeline, tasks, common, T):
        assert module.cache_key is cache.cache_key

    def fake(inputs):
        seen.append(inputs)
        return f"k{len(seen)}"

    # the pipeline: every job's key, and the keys it depends on inside the next ones
    seen = []
    monkeypatch.setattr(pipeline, "cache_key", fake)
    jobs = _tiny_plan(monkeypatch)
    assert all(j.key.startswith("k") for j in jobs) and len({j.key for j in jobs}) == len(jobs)
    cls_random = next(j for j in jobs if j.name == "cls/random")
    assert seen[int(cls_random.key[1:]) - 1][-1] == []  # cls/random needs no job's key
    det_ce = seen[int(next(j for j in jobs if j.name == "det/context-encoder").key[1:]) - 1]
    deps = {j.name: j.key for j in jobs}
    assert det_ce[-1] == [deps["pretrain/ce"], deps["det-proposals"]]

    # a transfer task: the key of its job JSONs
    seen = []
    monkeypatch.setattr(tasks, "cache_key", fake)
    keys = {}

    class Stop(Exception):
        pass

    def run_seeds(fn, task, specs, plan, ctx, out_dir, **kw):
        keys[task] = kw["key"]
        raise Stop

    monkeypatch.setattr(tasks, "run_seeds", run_seeds)
    data = DataConfig(demo="tiny", demo_dir=str(tmp_path / "data"))
    with pytest.raises(Stop):
        tasks.main("cls", replace_runtime(TransferConfig(), amp="none"), data, ["random"], tmp_path / "cls")
    assert keys == {"cls": "k1"} and seen[0]["task"] == "cls" and seen[0]["amp"] == "none"

    # a fine-tuning job's last checkpoint
    seen = []
    monkeypatch.setattr(common, "cache_key", fake)
    job = TransferJob("cls", InitSpec("random", "random"), 0, 1e-3, "final", "trainval", "test", key="jobkey")
    ctx = common.TaskContext(cfg=types.SimpleNamespace(iterations=4), root="", cache_dir="", out_dir=str(tmp_path),
                             runtime=dataclasses.replace(TransferConfig().runtime, ckpt_every=2))
    with common.job_training(job, ctx, init_runtime("cpu", "none"), model=torch.nn.Linear(2, 2), optimizer=None,
                             scheduler=None, stream=None) as (saver, _, _):
        assert saver.key == "k1" and seen[0]["key"] == "jobkey" and seen[0]["seed"] == 0 and saver.every == 2

    # a pretraining's resume check: the config without the settings a resumed run may change
    seen = []
    monkeypatch.setattr(T, "cache_key", fake)
    assert T.resume_key({"lr": 0.1, "max_minutes": 3, "workers": 2}) == "k1" and seen == [{"lr": 0.1}]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from cebench.data.sources import voc_root

    d = DataConfig(demo="tiny", demo_dir=str(tmp_path_factory.mktemp("cedata")))
    voc_root(d)
    return d


def test_pretraining_resumes_only_for_the_same_key(tmp_path, tiny_data, monkeypatch):
    """A `last` checkpoint resumes a run whose key matches (another wall-clock budget or thread count is the
    same run) and is refused, naming what differs, for another config."""
    cfg = T.PretrainConfig(method="ae", steps=4, batch_size=8, ckpt_every=2, sample_every=0, eval_images=0,
                           amp="none")
    with pytest.raises(T.Interrupted):
        T.main(dataclasses.replace(cfg, stop_after=2), tiny_data, tmp_path, device="cpu")
    with pytest.raises(CheckpointError, match=r"different config \(lr\)"):
        T.main(dataclasses.replace(cfg, lr=cfg.lr * 2), tiny_data, tmp_path, device="cpu")
    loaded = []
    monkeypatch.setattr(T, "load_state_strict", lambda *a: loaded.append(a[2]) or load_state_strict(*a))
    final = T.main(dataclasses.replace(cfg, max_minutes=60.0, threads=1), tiny_data, tmp_path, device="cpu")
    assert loaded == [tmp_path / "checkpoints" / "last.pt"]  # resumed from step 2, not started afresh
    assert torch.load(final, weights_only=True)["step"] == 4
