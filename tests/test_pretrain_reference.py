"""The faster inpainting step: the full-kernel convolutions as matrix products (same numbers and
parameters as nn.Conv2d / nn.ConvTranspose2d), the trainer's step with the discriminator frozen for
G's adversarial pass (the same update as computing D's throw-away gradients), and the side-by-side
comparison against a port-style model.py on a small architecture."""

from __future__ import annotations

import statistics
import textwrap

import pytest
import torch
from torch import nn

from cebench.benchmarks.cli import main as cli_main
from cebench.benchmarks.perf.reference import compare_reference, inpaint_config
from cebench.errors import CebenchError
from cebench.pretrain import engine
from cebench.pretrain.engine import make_adam, train_step
from cebench.pretrain.losses import gan_d_loss, gan_g_loss, joint
from cebench.pretrain.masks import center_mask
from cebench.pretrain.models import (
    Discriminator,
    FullKernelConv2d,
    FullKernelConvTranspose2d,
    InpaintingCE,
    InpaintNetConfig,
)
from cebench.pretrain.objectives import InpaintObjective
from cebench.runtime import Runtime

torch.set_num_threads(1)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_full_kernel_layers_equal_the_convolutions(channels_last, bias):
    torch.manual_seed(0)
    fk, ref = FullKernelConv2d(16, 8, 4, bias=bias), nn.Conv2d(16, 8, 4, bias=bias)
    fkt, reft = FullKernelConvTranspose2d(8, 16, 4, bias=bias), nn.ConvTranspose2d(8, 16, 4, bias=bias)
    ref.load_state_dict(fk.state_dict())
    reft.load_state_dict(fkt.state_dict())
    x, z = torch.randn(3, 16, 4, 4), torch.randn(3, 8, 1, 1)
    if channels_last:
        fk, fkt = fk.to(memory_format=torch.channels_last), fkt.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        assert fk.weight.is_contiguous() and fkt.weight.is_contiguous()  # kept dense for the GEMM and fused Adam
    for a, b, inp in ((fk, ref, x), (fkt, reft, z)):
        inp_a, inp_b = inp.clone().requires_grad_(), inp.clone().requires_grad_()
        ya, yb = a(inp_a), b(inp_b)
        torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-5)
        g = torch.randn_like(yb)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(a.weight.grad, b.weight.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(inp_a.grad, inp_b.grad, atol=1e-5, rtol=1e-5)
    y = fk(torch.randn(2, 16, 6, 6))  # any other input size: the convolution itself
    assert y.shape == (2, 8, 3, 3)


def test_inpainting_net_keeps_its_parameter_names():
    net = InpaintingCE(InpaintNetConfig.paper())
    keys = set(net.state_dict())
    assert "encoder.14.weight" in keys and "decoder.0.weight" in keys  # the 4000-d conv and up-conv
    assert isinstance(net.encoder[14], FullKernelConv2d) and isinstance(net.decoder[0], FullKernelConvTranspose2d)
    assert sum(p.numel() for p in net.parameters()) == 71_124_544  # the port's G: the same count


def _nets(seed=0):
    torch.manual_seed(seed)
    cfg = inpaint_config(8, 32)
    obj, disc = InpaintObjective(InpaintingCE(cfg)), Discriminator(cfg.disc_widths)
    return obj, disc, make_adam(obj.parameters(), 2e-4, 0.5), make_adam(disc.parameters(), 2e-5, 0.5)


def test_train_step_equals_the_step_with_d_gradients_computed():
    x = torch.rand(4, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    mask = center_mask(4, 128, "cpu")
    rt = Runtime(torch.device("cpu"))
    a = _nets()
    losses, _ = train_step(*a[:2], a[2], a[3], x, mask, None, rt)
    assert {"rec", "adv", "d", "loss"} <= set(losses)
    assert all(p.requires_grad for p in a[1].parameters())
    obj, disc, og, od = _nets()  # the same step written out without freezing D (what the port does)
    _, out = obj(x, mask, None)
    both = disc(torch.cat([out["real"].detach(), out["fake"].detach()]))
    d = gan_d_loss(both[:4], both[4:])
    od.zero_grad(set_to_none=True)
    d.backward()
    od.step()
    loss = joint(_["rec"], gan_g_loss(disc(out["fake"])))
    og.zero_grad(set_to_none=True)
    loss.backward()
    og.step()
    for (n1, p1), (_, p2) in zip([*a[0].named_parameters(), *a[1].named_parameters()],
                                 [*obj.named_parameters(), *disc.named_parameters()]):
        torch.testing.assert_close(p1, p2, atol=1e-6, rtol=1e-5, msg=n1)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.parameters())


PORT_STYLE = '''
import torch.nn as nn


def _down(cin, cout, bn=True):
    return [nn.Conv2d(cin, cout, 4, 2, 1, bias=False)] + ([nn.BatchNorm2d(cout)] if bn else []) + \\
        [nn.LeakyReLU(0.2, inplace=True)]


class _netG(nn.Module):  # the layer sequence of the port's generator, written for this test
    def __init__(self, opt):
        super().__init__()
        w, b = opt.nef, opt.nBottleneck
        enc = _down(opt.nc, w, bn=False) + _down(w, w) + _down(w, 2 * w) + _down(2 * w, 4 * w) + _down(4 * w, 8 * w)
        enc += [nn.Conv2d(8 * w, b, 4, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.2, inplace=True)]
        dec = []
        for cin, cout, s, p in ((b, 8 * w, 1, 0), (8 * w, 4 * w, 2, 1), (4 * w, 2 * w, 2, 1), (2 * w, w, 2, 1)):
            dec += [nn.ConvTranspose2d(cin, cout, 4, s, p, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        dec += [nn.ConvTranspose2d(w, opt.nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main_encode, self.main_decode = nn.Sequential(*enc), nn.Sequential(*dec)

    def forward(self, x):
        return self.main_decode(self.main_encode(x))


class _netlocalD(nn.Module):
    def __init__(self, opt):
        super().__init__()
        w = opt.ndf
        layers = _down(opt.nc, w, bn=False) + _down(w, 2 * w) + _down(2 * w, 4 * w) + _down(4 * w, 8 * w)
        self.main = nn.Sequential(*layers, nn.Conv2d(8 * w, 1, 4, 1, 0, bias=False), nn.Sigmoid())

    def forward(self, x):
        return self.main(x).view(-1, 1)
'''


def test_compare_reference_side_by_side_on_a_small_architecture(tmp_path, monkeypatch):
    model_py = tmp_path / "model.py"
    model_py.write_text(textwrap.dedent(PORT_STYLE))
    steps = []  # our side is the trainer's own step (the one engine.train_step), with its fused Adams
    real_step = engine.train_step
    monkeypatch.setattr(engine, "train_step", lambda obj, disc, og, od, x, *a, **k: (
        steps.append((og, od, x.shape[0])), real_step(obj, disc, og, od, x, *a, **k))[1])
    res = compare_reference(model_py, tmp_path / "ref.json", batch=2, threads=1, rounds=2, bf16="off",
                            width=4, bottleneck=16)
    assert len(steps) == 1 + 2 and all(b == 2 and og.defaults["fused"] and od.defaults["fused"] for og, od, b in steps)
    fp32 = res["modes"]["fp32"]
    assert list(res["modes"]) == ["fp32"] and fp32["rounds"] == 2
    # two alternating rounds of one step each; the ratio is the median of the per-round ratios ours / port's
    raw = fp32["raw"]["img_per_s"]
    assert len(raw["port"]) == len(raw["cebench"]) == 2 and all(v > 0 for v in raw["port"] + raw["cebench"])
    ratios = [c / p for c, p in zip(raw["cebench"], raw["port"])]
    assert fp32["ratio"] == round(statistics.median(ratios), 3)
    assert (fp32["ratio_min"], fp32["ratio_max"]) == (round(min(ratios), 3), round(max(ratios), 3))
    assert fp32["port_img_per_s"] == round(statistics.median(raw["port"]), 2)
    assert fp32["cebench_img_per_s"] == round(statistics.median(raw["cebench"]), 2)
    cpu = fp32["raw"]["cpu_ms_per_img"]
    assert fp32["cpu_ratio"] == round(statistics.median(cpu["port"]) / statistics.median(cpu["cebench"]), 3)
    assert res["g_params"] > 0 and (tmp_path / "ref.json").is_file()
    other = tmp_path / "other" / "model.py"  # one bias more than the port's bottleneck conv
    other.parent.mkdir()
    other.write_text(textwrap.dedent(PORT_STYLE).replace("nn.Conv2d(8 * w, b, 4, bias=False)",
                                                         "nn.Conv2d(8 * w, b, 4, bias=True)"))
    with pytest.raises(CebenchError, match="not the same architecture"):
        compare_reference(other, None, batch=2, threads=1, rounds=1, bf16="off", width=4, bottleneck=16)


def test_reference_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "model.py").write_text("x = 1\n")
    with pytest.raises(CebenchError, match="_netG"):
        compare_reference(tmp_path / "model.py", None, quick=True)
    with pytest.raises(CebenchError, match="not found"):
        compare_reference(tmp_path / "missing.py", None, quick=True)
    capsys.readouterr()
    assert cli_main(["bench", "reference", "--out", str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--compare-reference" in err[0]
