"""The ImageNet AlexNet row: opt-in download (never in tests), fast failure without network, and the
row computed when a correctly shaped state dict sits in the torch cache."""

import json
import socket
import time

import pandas as pd
import pytest
import torch
import torchvision

from cebench.benchmarks.cli import main as cli_main
from cebench.pretrain.loading import IMAGENET_ALEXNET_FILE, imagenet_alexnet_encoder, imagenet_weights_path


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("[Errno 101] Network is unreachable")

    def never(*args, **kwargs):
        raise AssertionError("no download may start")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torchvision.models.AlexNet_Weights.IMAGENET1K_V1.__class__, "get_state_dict", never)


def _place_weights(torch_home) -> dict:
    """torchvision's AlexNet state dict (random weights, the exact keys and shapes of IMAGENET1K_V1)."""
    torch.manual_seed(0)
    sd = torchvision.models.alexnet(weights=None).state_dict()
    path = torch_home / "hub" / "checkpoints" / IMAGENET_ALEXNET_FILE
    path.parent.mkdir(parents=True)
    torch.save(sd, path)
    return sd


def test_download_without_network_fails_fast_in_one_line(torch_home, no_network, tmp_path, capsys):
    assert imagenet_weights_path() == torch_home / "hub" / "checkpoints" / IMAGENET_ALEXNET_FILE
    t0 = time.perf_counter()
    assert cli_main(["imagenet-weights", "--download", "--timeout", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: cannot download")
    assert IMAGENET_ALEXNET_FILE in err and str(torch_home / "hub" / "checkpoints") in err
    # the pipeline's opt-in fails the same way, before generating data or starting a job
    assert cli_main(["run", "--config", "tiny", "--out", str(tmp_path / "run"), "run.imagenet=true",
                     "imagenet.download=true"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and IMAGENET_ALEXNET_FILE in err
    assert not (tmp_path / "run" / "data").exists() and not (tmp_path / "run" / "pretrain").exists()
    assert time.perf_counter() - t0 < 10  # the brief's bound on failing without network (not a speed test)
    # without --download nothing is fetched: the status line says where to put the file
    assert cli_main(["imagenet-weights"]) == 1
    assert "not found: place alexnet-owt-7be5be79.pth" in capsys.readouterr().out


def test_placed_state_dict_feeds_every_imagenet_row(torch_home, no_network, tmp_path, capsys):
    from cebench.data.demo import DemoDataConfig, generate_demo

    sd = _place_weights(torch_home)
    enc = imagenet_alexnet_encoder()
    assert torch.equal(enc.conv1.weight, sd["features.0.weight"])
    assert torch.equal(enc.conv5.bias, sd["features.10.bias"])
    assert cli_main(["imagenet-weights", "--download"]) == 0  # present: nothing to fetch, no network used
    assert str(imagenet_weights_path()) in capsys.readouterr().out

    voc = generate_demo(tmp_path / "demo", DemoDataConfig(n_pretrain=0, n_trainval=24, n_test=12, workers=1))
    out = tmp_path / "transfer"
    fast = ["cls.iterations=2", "cls.batch_size=4", "cls.test_crops=1", "cls.fc_dim=16", "cls.lrs=[1e-3]",
            "svm.layers=[conv5]", "svm.costs=[1.0]", "svm.knn_ks=[3]", "magic_images=4"]
    for task in ("cls", "svm"):
        assert cli_main(["transfer", task, "--config", "tiny", "--data", str(voc), "--out", str(out),
                         "--init", "imagenet", "--seeds", "0", *fast]) == 0
    rows = {(r["task"], r["metric"]): r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert rows[("cls", "mAP")]["status"] == "ok" and 0 <= rows[("cls", "mAP")]["mean"] <= 1
    assert rows[("svm", "svm conv5 mAP")]["status"] == "ok"
    ret = tmp_path / "retrieval"
    assert cli_main(["retrieval-bench", "--config", "tiny", "--data", str(voc), "--out", str(ret),
                     "methods=[hog,imagenet]", "layers=[conv5]", "masked=[false]", "max_queries=20",
                     "max_images=6"]) == 0
    table = pd.read_csv(ret / "retrieval.csv")
    assert set(table["method"]) == {"hog", "imagenet"}
    assert not (ret / "retrieval_notes.txt").exists()  # no "unavailable" note


def test_imagenet_rows_rerun_once_the_weights_appear(torch_home, tmp_path):
    """A run without the file caches 'unavailable'; placing the file changes those jobs' keys only."""
    from cebench.benchmarks.cli import resolve_config
    from cebench.benchmarks.pipeline import plan, resolve

    cfg = resolve(resolve_config("tiny"), ["run.imagenet=true"])
    before = {j.name: j.key for j in plan(cfg, tmp_path, resolve_config("tiny"))}
    _place_weights(torch_home)
    after = {j.name: j.key for j in plan(cfg, tmp_path, resolve_config("tiny"))}
    changed = {n for n in before if before[n] != after[n]}
    assert changed == {n for n in before if n.endswith("/imagenet")} | {"retrieval"}
