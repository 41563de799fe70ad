import json
import math

import numpy as np
import pytest
import torch

from cebench.errors import CheckpointError, ConfigError
from cebench.pretrain.loading import save_encoder_checkpoint
from cebench.pretrain.models import AlexNetConfig, build_encoder
from cebench.transfer.inits import (
    INIT_NAMES,
    INIT_ORDER,
    InitUnavailable,
    build_init,
    canonical_name,
    init_rank,
    magic_init,
    parse_init,
    table_label,
)
from cebench.transfer.protocol import select_lr
from cebench.transfer.results import ResultsTable
from cebench.transfer.segmentation import FCN32, bilinear_kernel
from cebench.transfer.stats import summarize

torch.set_num_threads(1)


def test_magic_init_gives_unit_variance_preactivations():
    torch.manual_seed(0)
    cfg = AlexNetConfig(norm="none")
    enc = build_init("random", arch_cfg=cfg, seed=0)
    x = torch.randn(32, 3, 64, 64)
    magic_init(enc, x, mode="within")
    outs = {}
    hooks = [conv.register_forward_hook(lambda m, i, o, n=name: outs.__setitem__(n, o)) for name, conv in enc.convs()]
    with torch.no_grad():
        enc.eval()(x)
    for h in hooks:
        h.remove()
    for name, y in outs.items():
        y = y.transpose(0, 1).reshape(y.shape[1], -1)
        np.testing.assert_allclose(y.mean(1).numpy(), 0.0, atol=1e-3, err_msg=name)
        np.testing.assert_allclose(y.std(1).numpy(), 1.0, atol=1e-3, err_msg=name)


def test_magic_between_keeps_filter_proportions():
    enc = build_encoder(AlexNetConfig(norm="none"))
    w0 = enc.conv2.weight.detach().clone()
    magic_init(enc, torch.randn(16, 3, 64, 64), mode="between")
    ratio = enc.conv2.weight / w0
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-4)


def test_random_init_is_seeded():
    a = build_init("random", arch_cfg="demo", seed=3)
    b = build_init("random", arch_cfg="demo", seed=3)
    c = build_init("random", arch_cfg="demo", seed=4)
    assert torch.equal(a.conv1.weight, b.conv1.weight) and not torch.equal(a.conv1.weight, c.conv1.weight)


def test_checkpoint_inits_and_strict_loading(tmp_path):
    enc = build_encoder(AlexNetConfig())
    p = save_encoder_checkpoint(tmp_path / "ce.pt", enc, method="ce")
    got = build_init("context encoder", checkpoint=p)
    assert torch.equal(got.conv3.weight, enc.conv3.weight)
    got = build_init("my learner", checkpoint=p)  # custom row
    assert torch.equal(got.conv5.weight, enc.conv5.weight)
    with pytest.raises(CheckpointError, match="'ae' row"):
        build_init("ae", checkpoint=p)
    # a checkpoint with a missing and an unexpected key: the error names both
    sd = {f"encoder.{k}": v for k, v in enc.state_dict().items() if k != "conv2.bias"}
    sd["encoder.extra.weight"] = torch.zeros(1)
    torch.save({"model": sd, "arch": {"name": "ce", "encoder": enc.cfg.to_dict()}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        build_init("ce", checkpoint=tmp_path / "bad.pt")
    assert "conv2.bias" in str(err.value) and "extra.weight" in str(err.value)


def test_imagenet_unavailable_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.hub.set_dir(str(tmp_path / "hub"))
    with pytest.raises(InitUnavailable, match="alexnet-owt-7be5be79.pth"):
        build_init("imagenet")


def test_parse_init():
    assert parse_init("ce=a.pt").name == "context encoder"
    s = parse_init("SimCLR-ish=x.pt")
    assert (s.name, s.kind, s.checkpoint) == ("SimCLR-ish", "custom", "x.pt")
    with pytest.raises(ConfigError, match="needs a checkpoint"):
        parse_init("autoencoder")
    with pytest.raises(ConfigError, match="unknown"):
        parse_init("nonsense")


def test_one_table_of_init_names():
    # every alias parses to its row, every row has its table label, pretraining methods name their rows
    for name, (label, aliases) in INIT_NAMES.items():
        for alias in (name, *aliases):
            assert canonical_name(alias.upper()) == name and table_label(alias) == label
    assert [canonical_name(m) for m in ("ce", "ae", "supervised", "ce-adv")] == \
        ["context encoder", "autoencoder", "supervised", "ce-adv"]
    assert table_label("supervised") == "supervised (demo labels)" and table_label("SimCLR-ish") == "SimCLR-ish"
    assert parse_init("supervised (demo labels)=s.pt").name == "supervised"
    assert INIT_ORDER == ["random", "autoencoder", "context prediction", "jigsaw", "colorization", "rotation",
                          "context encoder", "supervised (demo labels)", "supervised (ImageNet labels)", "imagenet"]
    assert init_rank("imagenet") == 9 and init_rank("SimCLR-ish") == 10
    assert [canonical_name(m) for m in ("context-prediction", "jigsaw", "colorization", "rotation")] == \
        ["context prediction", "jigsaw", "colorization", "rotation"]  # the pretext methods' rows


def test_results_table_merges_and_summarises(tmp_path):
    t = ResultsTable(tmp_path)
    t.add("random", "cls", "mAP", {0: 0.5, 1: 0.7, 2: 0.6}, lr=1e-3)
    t.save()
    t2 = ResultsTable(tmp_path)  # another task (e.g. detection) adds its rows to the same file
    t2.add("random", "det", "mAP", {0: 0.3})
    t2.add_unavailable("imagenet", "det", "mAP", "no weights")
    df = t2.save()
    assert set(zip(df.task, df.init)) == {("cls", "random"), ("det", "random"), ("det", "imagenet")}
    row = df[(df.task == "cls")].iloc[0]
    assert row["mean"] == pytest.approx(0.6) and row["std"] == pytest.approx(0.1) and row["seeds"] == 3
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert {r["init"]: r for r in rows if r["task"] == "cls"}["random"]["per_seed"]["1"] == 0.7
    assert summarize([1.0, None, float("nan")]) == (1.0, 0.0, 1)


def test_select_lr_uses_val_scores_and_skips_failures():
    recs = [{"lr": 1e-3, "status": "ok", "metrics": {"mAP": 0.4}},
            {"lr": 3e-3, "status": "ok", "metrics": {"mAP": 0.6}},
            {"lr": 1e-2, "status": "non-finite", "metrics": {}}]
    lr, scores = select_lr(recs, [1e-3, 3e-3, 1e-2], "mAP")
    assert lr == 3e-3 and np.isnan(scores[1e-2])


def test_fcn32_shapes_and_bilinear_upsampling():
    enc = build_encoder(AlexNetConfig())
    net = FCN32(enc, 5).eval()
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 5, 64, 64)
    # the bilinear kernel up-samples a constant to a constant (away from the border)
    up = torch.nn.functional.conv_transpose2d(torch.ones(1, 2, 4, 4), bilinear_kernel(2, 32), stride=16, padding=8)
    assert up.shape[-1] == 64 and torch.allclose(up[0, :, 16:48, 16:48], torch.ones(2, 32, 32))


def test_fcn_on_conv5_halves_the_stride():
    """feature=conv5 drops pool5: an 8x8 score map at stride 8 on the 64 px demo input, same output size."""
    enc = build_encoder(AlexNetConfig())
    net = FCN32(enc, 5, feature="conv5").eval()
    assert net.stride == 8 and net.upscore.weight.shape == (5, 1, 16, 16)
    x = torch.randn(2, 3, 64, 64)
    assert enc.forward_intermediates(x, ("conv5",))["conv5"].shape[-1] == 8
    assert net(x).shape == (2, 5, 64, 64)
    with pytest.raises(ValueError, match="seg feature must be one of"):
        FCN32(enc, 5, feature="conv4")
    from cebench.errors import ConfigError
    from cebench.transfer.segmentation import SegConfig

    with pytest.raises(ConfigError, match="transfer.seg.feature must be one of pool5, conv5, got 'conv4'"):
        SegConfig(feature="conv4")


def test_fcn32_per_class_upscore_equals_dense_bilinear_at_init():
    """The per-class (grouped) up-convolution starts as FCN's dense diagonal bilinear one."""
    net = FCN32(build_encoder(AlexNetConfig()), 5)
    assert net.upscore.weight.shape == (5, 1, 2 * net.stride, 2 * net.stride)
    scores = torch.randn(3, 5, 4, 4)
    dense = torch.nn.functional.conv_transpose2d(scores, bilinear_kernel(5, 2 * net.stride), stride=net.stride,
                                                 padding=net.stride // 2)
    torch.testing.assert_close(net.upscore(scores), dense)


@pytest.mark.parametrize("stride,shape", [(8, (3, 5, 4, 4)), (8, (2, 5, 1, 1)), (5, (2, 5, 3, 6)), (16, (1, 5, 2, 3))])
def test_per_class_upscore_equals_grouped_conv_transpose(stride, shape):
    """PerClassUpscore (a batched matrix product) against torch's grouped ConvTranspose2d with the same
    weight: outputs and both gradients, channels_last weights too (place_model's layout)."""
    from cebench.transfer.segmentation import PerClassUpscore

    k = shape[1]
    ref = torch.nn.ConvTranspose2d(k, k, 2 * stride, stride=stride, padding=stride // 2, groups=k, bias=False)
    ours = PerClassUpscore(k, stride)
    with torch.no_grad():
        ours.weight.copy_(ref.weight)
    ours = ours.to(memory_format=torch.channels_last)
    x = torch.randn(shape)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = ref(xa), ours(xb)
    assert ya.shape == yb.shape
    torch.testing.assert_close(yb, ya)
    g = torch.randn_like(ya)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)


def test_trunk_lr_multiplier_scales_the_trunk_step_only():
    """backbone_lr_mult puts the trunk in its own group: with SGD (no momentum, no decay) one step moves each
    parameter by lr * grad, the trunk's by lr * mult * grad; under one-cycle the trunk's peak is mult x the head's."""
    from cebench.transfer.engine import OptimConfig, make_optimizer

    torch.manual_seed(0)
    net = FCN32(build_encoder(AlexNetConfig()), 3, feature="conv5")
    torch.nn.init.normal_(net.score.weight, std=0.01)  # zero-init score would leave the trunk without a gradient
    cfg = OptimConfig(optimizer="sgd", schedule="constant", momentum=0.0, weight_decay=0.0, backbone_lr_mult=0.1)
    opt, _ = make_optimizer(net, cfg, 0.5, 10, backbone=net.encoder)
    trunk_ids = {id(p) for p in net.encoder.parameters()}
    assert [len(g["params"]) for g in opt.param_groups] == [
        sum(id(p) not in trunk_ids for p in net.parameters()), len(trunk_ids)]
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    net(torch.randn(2, 3, 64, 64)).square().mean().backward()
    grads = {n: p.grad.detach().clone() for n, p in net.named_parameters() if p.grad is not None}
    opt.step()
    trunk = [n for n in grads if n.startswith("encoder.") and grads[n].abs().sum() > 0]
    assert trunk and "fc6.weight" in grads
    for n in grads:
        lr = 0.05 if n.startswith("encoder.") else 0.5
        torch.testing.assert_close(dict(net.named_parameters())[n].detach(), before[n] - lr * grads[n])
    _, sched = make_optimizer(net, OptimConfig(backbone_lr_mult=0.1), 1e-2, 100, backbone=net.encoder)
    groups = sched.optimizer.param_groups
    assert groups[0]["max_lr"] == 1e-2 and math.isclose(groups[1]["max_lr"], 1e-3)


def test_svm_cost_search_agrees_with_gridsearchcv():
    """svm_scores writes GridSearchCV out (speed): same chosen C per class and the same test scores."""
    import warnings

    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.svm import LinearSVC

    from cebench.transfer.svm import SvmConfig, svm_scores

    rng = np.random.default_rng(0)
    xtr = rng.standard_normal((120, 16)).astype(np.float32)
    xte = rng.standard_normal((50, 16)).astype(np.float32)
    ytr = rng.choice([-1, 1, 0], size=(120, 5), p=[0.7, 0.25, 0.05])
    ytr[:, 0] = np.where(xtr[:, 0] > 0.3, 1, -1)  # one learnable class (C matters), one constant class
    ytr[:, 4] = -1
    ytr[:, 3] = -1
    ytr[7, 3] = 1  # one positive: a training fold without it has one class (GridSearchCV scores it NaN)
    cfg = SvmConfig(costs=[0.01, 0.1, 1.0, 10.0], cv_folds=3)
    np.random.seed(5)  # liblinear seeds each fit from numpy's global generator
    scores, chosen = svm_scores(xtr, ytr, xte, cfg, seed=3)
    np.random.seed(5)
    ref_scores, ref_chosen = np.zeros_like(scores), []
    for c in range(ytr.shape[1]):
        keep = ytr[:, c] != 0
        y = (ytr[keep, c] > 0).astype(int)
        if y.min() == y.max():
            ref_chosen.append(None)
            continue
        folds = max(2, min(cfg.cv_folds, int(y.sum()), int((1 - y).sum())))
        search = GridSearchCV(LinearSVC(class_weight={1: 2, 0: 1}, max_iter=5000, dual="auto"), {"C": cfg.costs},
                              scoring="average_precision", cv=StratifiedKFold(folds, shuffle=True, random_state=3))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # GridSearchCV warns about the one-class fold
            search.fit(xtr[keep], y)
        ref_chosen.append(float(search.best_params_["C"]))
        ref_scores[:, c] = search.best_estimator_.decision_function(xte)
    assert chosen == ref_chosen and chosen[4] is None and len(set(c for c in chosen if c)) >= 1
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-6, atol=1e-8)
