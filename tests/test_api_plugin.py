"""The Python API: plug an AlexNet-compatible nn.Module into the benchmark (cebench.evaluate & co).

The README's plug-in example is found by its marker line and run as written, from a temporary
folder, on the tiny config.
"""

import json
import re
import runpy
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import cebench
from cebench.benchmarks import pipeline
from cebench.benchmarks.api import run_overrides
from cebench.benchmarks.cli import resolve_config
from cebench.errors import CebenchError, ConfigError
from cebench.pretrain.compat import LAYER_NAMES, AlexNetLike, SequentialAlexNet, state_digest, to_alexnet_encoder
from cebench.pretrain.models import AlexNetConfig, AlexNetEncoder

REPO = Path(__file__).resolve().parents[1]
MARKER = "# cebench plug-in example"


def plugin_example() -> str:
    """The fenced python block that starts with MARKER: README.md's if it has one, else docs/plugin.md's."""
    found = {}
    for doc in ("README.md", "docs/plugin.md"):
        path = REPO / doc
        if path.is_file():
            blocks = [b for b in re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
                      if b.lstrip().startswith(MARKER)]
            assert len(blocks) <= 1, f"{doc}: {len(blocks)} blocks start with {MARKER!r}"
            if blocks:
                found[doc] = blocks[0]
    assert found, f"no ```python block starting with {MARKER!r} in README.md or docs/plugin.md"
    assert len(set(found.values())) == 1, "README.md and docs/plugin.md show different plug-in examples"
    return next(iter(found.values()))


def test_readme_plugin_example_runs_as_written(tmp_path, monkeypatch, capsys):
    code = plugin_example()
    assert len(code.strip().splitlines()) <= 12, "the README promises about ten lines"
    (tmp_path / "example.py").write_text(code)
    # `python example.py` from the temporary folder, in this process (the run's jobs are subprocesses all the
    # same): a second interpreter would spend seconds importing torch
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("CEBENCH_DATA", raising=False)
    runpy.run_path(str(tmp_path / "example.py"), run_name="__main__")
    printed = capsys.readouterr().out

    rep = tmp_path / "runs" / "plugin-tiny" / "report"
    t2 = pd.read_csv(rep / "table2.csv")
    assert set(t2["init"]) == {"random", "my learner"} and set(t2["task"]) == {"cls"}
    assert t2["mean"].between(0, 100).all() and (t2["seeds"] == 2).all()
    assert "my learner" in printed  # the printed DataFrame
    assert "my learner" in (rep / "results.md").read_text()
    machine = json.loads((rep / "run.json").read_text())["machine"]
    assert machine["cebench"] == cebench.__version__ and machine["cpu"] and machine["torch"] == torch.__version__

    # save_encoder's file and the one evaluate benchmarked hold the same weights, and load back
    saved = cebench.load_encoder(tmp_path / "my-learner.pt")
    plugins = sorted((tmp_path / "runs" / "plugin-tiny" / "plugins").glob("*.pt"))
    assert len(plugins) == 1 and plugins[0].name.startswith("my-learner-")
    used = cebench.load_encoder(plugins[0])
    assert saved.cfg == used.cfg == replace(AlexNetConfig.paper(), input_size=64)
    for key, value in saved.state_dict().items():
        assert torch.equal(value, used.state_dict()[key]), key


def _outputs(module, x):
    with torch.no_grad():
        return module.forward_intermediates(x, LAYER_NAMES)


def test_torchvision_trunk_round_trips_through_the_checkpoint(tmp_path):
    trunk = SequentialAlexNet(torchvision.models.alexnet().features, input_size=64)
    assert isinstance(trunk, AlexNetLike)
    path = cebench.save_encoder(trunk, tmp_path / "tv.pt")
    enc = cebench.load_encoder(path)
    assert isinstance(enc, AlexNetEncoder) and not enc.training
    assert enc.cfg == replace(AlexNetConfig.paper(), input_size=64)
    x = torch.randn(3, 3, 64, 64)
    theirs, ours = _outputs(trunk, x), _outputs(enc, x)
    for name in LAYER_NAMES:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-5)
        assert trunk.feature_stride(name) == enc.feature_stride(name), name
    assert (trunk.out_channels, trunk.out_size) == (enc.out_channels, enc.out_size) == (256, 1)
    # the paper's 227 px: pool5 256 x 6 x 6, the shape the paper states
    assert SequentialAlexNet(torchvision.models.alexnet().features).out_size == 6


def test_batchnorm_trunk_keeps_running_statistics_and_training_mode():
    torch.manual_seed(1)
    c = (16, 24, 32, 32, 16)
    layers, cin = [], 3
    for i, cout in enumerate(c, 1):
        k, s, p = ((5, 2, 2) if i == 1 else (5, 1, 2) if i == 2 else (3, 1, 1))
        layers += [nn.Conv2d(cin, cout, k, s, p), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        if i in (1, 2, 5):
            layers.append(nn.MaxPool2d(3, 2, 1))
        cin = cout
    trunk = SequentialAlexNet(nn.Sequential(*layers), input_size=32)
    trunk.train()
    with torch.no_grad():
        for _ in range(3):  # running statistics away from their 0 / 1 start
            trunk(torch.randn(8, 3, 32, 32) * 2 + 1)
    enc = to_alexnet_encoder(trunk)
    assert trunk.training, "the conversion must leave the caller's module in its own mode"
    assert enc.cfg.norm == "batch" and (enc.cfg.pool_kernel, enc.cfg.pool_padding) == (3, 1)
    assert not torch.allclose(enc.bn1.running_mean, torch.zeros(16))
    trunk.eval()
    x = torch.randn(2, 3, 32, 32)
    for name, t in _outputs(trunk, x).items():
        torch.testing.assert_close(_outputs(enc, x)[name], t, rtol=1e-5, atol=1e-5)


def test_the_suites_own_encoder_has_the_interface():
    enc = AlexNetEncoder(AlexNetConfig.demo())
    assert isinstance(enc, AlexNetLike) and enc.input_size == 64
    assert to_alexnet_encoder(enc) is enc


class FunctionalAlexNet(nn.Module):
    """A hand-written AlexNetLike module (not a Sequential): pools in forward, optionally average ones."""

    layer_names = LAYER_NAMES
    input_size = 32

    def __init__(self, pool=F.max_pool2d):
        super().__init__()
        self.c = nn.ModuleList([nn.Conv2d(3, 8, 5, 2, 2), nn.Conv2d(8, 12, 3, 1, 1), nn.Conv2d(12, 16, 3, 1, 1),
                                nn.Conv2d(16, 16, 3, 1, 1), nn.Conv2d(16, 8, 3, 1, 1)])
        self.pool, self.out_channels, self.out_size = pool, 8, 2

    def convs(self):
        return [(f"conv{i}", conv) for i, conv in enumerate(self.c, 1)]

    def feature_stride(self, layer):
        return {"conv1": 2, "pool1": 4, "conv2": 4, "pool2": 8}.get(layer, 8 if layer != "pool5" else 16)

    def forward_intermediates(self, x, layers=("pool5",)):
        out = {}
        for i, conv in enumerate(self.c, 1):
            x = out[f"conv{i}"] = F.relu(conv(x))
            if i in (1, 2, 5):
                x = out[f"pool{i}"] = self.pool(x, 3, 2, 1)
        return {k: v for k, v in out.items() if k in layers}

    def forward_features(self, x):
        return self.forward_intermediates(x)["pool5"]


def test_hand_written_module_is_converted_and_its_pool_found():
    mod = FunctionalAlexNet()
    assert isinstance(mod, AlexNetLike)
    enc = to_alexnet_encoder(mod)
    assert (enc.cfg.pool_kernel, enc.cfg.pool_padding, enc.cfg.conv1_kernel, enc.cfg.conv2_kernel) == (3, 1, 5, 3)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(enc.forward_features(x), mod.forward_features(x), rtol=1e-5, atol=1e-5)


def test_a_module_computing_something_else_is_refused_naming_the_layer():
    with pytest.raises(CebenchError, match=r"not AlexNet-compatible.*pool1 differs"):
        to_alexnet_encoder(FunctionalAlexNet(pool=F.avg_pool2d))


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.insert(3, nn.LocalResponseNorm(5)), r"expected Conv2d \(conv2\) at index 3, found LocalResponseNorm"),
    (lambda f: f.__setitem__(6, nn.Conv2d(192, 384, 5, 1, 2)), r"conv3 needs kernel 3, stride 1, padding 1"),
    (lambda f: f.__setitem__(1, nn.Tanh()), r"expected ReLU after conv1"),
])
def test_incompatible_trunks_get_one_clear_line(edit, message):
    feats = torchvision.models.alexnet().features
    edit(feats)
    with pytest.raises(CebenchError, match=message) as info:
        to_alexnet_encoder(SequentialAlexNet(feats, input_size=64))
    assert "\n" not in str(info.value)


def test_a_module_without_the_interface_says_what_it_lacks(tmp_path):
    with pytest.raises(CebenchError, match=r"Sequential is not AlexNet-compatible: it lacks .*convs"):
        cebench.save_encoder(torchvision.models.alexnet().features, tmp_path / "unused.pt")
    assert not (tmp_path / "unused.pt").exists()


def test_state_digest_follows_the_weights():
    a = AlexNetEncoder(AlexNetConfig.demo())
    b = AlexNetEncoder(AlexNetConfig.demo())
    b.load_state_dict(a.state_dict())
    assert state_digest(a) == state_digest(b)
    with torch.no_grad():
        b.conv3.weight[0, 0, 0, 0] += 1e-3
    assert state_digest(a) != state_digest(b)


def _plan(tmp_path, **kw):
    ckpt = tmp_path / "plugins" / "my-learner-abc.pt"
    cfg = pipeline.resolve(resolve_config("tiny"), run_overrides(checkpoint=ckpt, name="my learner", **kw))
    jobs = pipeline.plan(cfg, tmp_path, tmp_path / "config.yaml", "cpu")
    return {j.name: j for j in jobs}, ckpt


def test_every_task_gets_the_plugged_in_row(tmp_path):
    jobs, ckpt = _plan(tmp_path, tasks=("cls", "det", "seg", "svm", "retrieval"), baselines=None)
    for task in ("cls", "det", "seg", "svm"):
        args = jobs[f"{task}/my-learner"].args
        assert args[args.index("--init") + 1] == f"my learner={ckpt}"
        assert f"{task}/random" in jobs and f"{task}/context-encoder" in jobs  # tiny's baselines
    assert f"my learner={ckpt}" in jobs["retrieval"].args
    assert "inpaint" not in jobs  # Table 1 does not involve the plugged-in encoder

    only_cls, _ = _plan(tmp_path, tasks=("cls",), baselines=())
    assert set(only_cls) == {"cls/random", "cls/my-learner"}
    with_ce, _ = _plan(tmp_path, tasks=("seg",), baselines=("ce",))
    assert set(with_ce) == {"pretrain/ce", "seg/random", "seg/context-encoder", "seg/my-learner"}


@pytest.mark.parametrize("kw, message", [
    ({"name": "random"}, r"built-in row"),
    ({"name": "ce"}, r"built-in row"),
    ({"name": "a=b"}, r"must be 1-64 letters"),
    ({"name": "ok", "tasks": ("cls", "inpaint")}, r"tasks \['inpaint'\] unknown"),
    ({"name": "ok", "baselines": ("simclr",)}, r"baselines \['simclr'\] unknown"),
    ({"name": "ok", "config": "nonexistent"}, r"neither one of tiny, demo, paper"),
])
def test_evaluate_refuses_bad_arguments_before_any_work(tmp_path, kw, message):
    enc = AlexNetEncoder(AlexNetConfig.demo())
    with pytest.raises(ConfigError, match=message):
        cebench.evaluate(enc, **{"config": "tiny", "out": tmp_path / "out", **kw})
    assert not (tmp_path / "out").exists()
