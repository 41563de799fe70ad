"""`cebench bench reference --compare-reference PATH/model.py`: our inpainting training step against the
popular PyTorch port's (BoyuanJiang/context_encoder_pytorch), side by side in one process.

The port is not a dependency and none of its code is in this repository: the user points at the
port's own `model.py` (its `_netG` / `_netlocalD`), which is imported from that path, and the port's
`train.py` step is reproduced below in its order (D on the real centre, G forward, D on the detached
fake, D step, G step on 0.998 * overlap-weighted L2 + 0.002 * BCE(D(fake))). Both run the paper's
architecture: 128 px input, 4000-d bottleneck, DCGAN discriminator on the 64 px centre (71.1M G
parameters; the counts are checked equal), batch 64, the same thread count, synthetic inputs.

Rounds alternate (port, ours, port, ours, ...; one step each after a warm-up) so the two see the same
machine load; we report each side's median img/s, the median of the per-round ratios, and the CPU
time per image (process time over all threads: less sensitive to other jobs on a shared machine).
fp32 first; then both under bf16 autocast when the CPU has native bf16 (AVX512-BF16 / AMX).
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn

from cebench.errors import CebenchError
from cebench.io import atomic_write_json
from cebench.pretrain.config import PretrainConfig
from cebench.pretrain.models import InpaintNetConfig
from cebench.runtime import Runtime, cpu_bf16_native

from .pretrain import trainer_step
from .timing import timed


def load_port_module(model_py) -> object:
    """Import the port's model.py from the path the user gave (it must define _netG and _netlocalD)."""
    path = Path(model_py)
    if path.is_dir():
        path = path / "model.py"
    if not path.is_file():
        raise CebenchError(f"{path}: the reference port's model.py not found (clone "
                           "github.com/BoyuanJiang/context_encoder_pytorch and pass its model.py)")
    spec = importlib.util.spec_from_file_location("cebench_reference_port_model", path)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's file is one line
        raise CebenchError(f"{path}: could not import the reference model ({type(exc).__name__}: {exc})") from None
    if not hasattr(mod, "_netG") or not hasattr(mod, "_netlocalD"):
        raise CebenchError(f"{path}: no _netG / _netlocalD classes (is this the port's model.py?)")
    return mod


def _port_weights_init(m: nn.Module) -> None:
    # the port's weights_init: N(0, 0.02) convs, BatchNorm gamma N(1, 0.02), beta 0
    name = m.__class__.__name__
    if name.find("Conv") != -1:
        m.weight.data.normal_(0.0, 0.02)
    elif name.find("BatchNorm") != -1:
        m.weight.data.normal_(1.0, 0.02)
        m.bias.data.fill_(0)


def _autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def port_step_fn(mod, batch: int, size: int, bf16: bool, seed: int = 0, width: int = 64, bottleneck: int = 4000):
    """The port's train.py step (its defaults: nef=ngf=ndf=64, nBottleneck=4000, overlapPred=4,
    wtl2=0.998, lr 2e-4 for G and D, Adam beta1 0.5), NCHW as the port runs it."""
    opt = SimpleNamespace(ngpu=1, nc=3, nef=width, ngf=width, ndf=width, nBottleneck=bottleneck)
    torch.manual_seed(seed)
    net_g, net_d = mod._netG(opt), mod._netlocalD(opt)
    net_g.apply(_port_weights_init)
    net_d.apply(_port_weights_init)
    opt_d = torch.optim.Adam(net_d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(net_g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCELoss()
    real = torch.rand(batch, 3, size, size) * 2 - 1  # the port's input range [-1, 1]
    q, h, o, wtl2 = size // 4, size // 2, 4, 0.998

    def step():
        real_center = real[:, :, q:q + h, q:q + h].clone()
        cropped = real.clone()
        for c, v in enumerate((117.0, 104.0, 123.0)):  # the hole (inside the overlap band) -> the mean
            cropped[:, c, q + o:q + h - o, q + o:q + h - o] = 2 * v / 255.0 - 1.0
        net_d.zero_grad()
        with _autocast(bf16):
            out = net_d(real_center).float()
        err_real = bce(out, torch.ones_like(out))
        err_real.backward()
        with _autocast(bf16):
            fake = net_g(cropped)
            out = net_d(fake.detach()).float()
        err_fake = bce(out, torch.zeros_like(out))
        err_fake.backward()
        opt_d.step()
        net_g.zero_grad()
        with _autocast(bf16):
            out = net_d(fake).float()
        err_g_d = bce(out, torch.ones_like(out))
        w = torch.full_like(real_center, wtl2 * 10)
        w[:, :, o:h - o, o:h - o] = wtl2
        err_l2 = ((fake.float() - real_center) ** 2 * w).mean()
        err_g = (1 - wtl2) * err_g_d + wtl2 * err_l2
        err_g.backward()
        opt_g.step()

    return step, sum(p.numel() for p in net_g.parameters()), sum(p.numel() for p in net_d.parameters())


def inpaint_config(width: int = 64, bottleneck: int = 4000, size: int = 128) -> InpaintNetConfig:
    """InpaintNetConfig.paper() at width 64 / bottleneck 4000 / 128 px; other values scale it as the
    port's nef/ngf/ndf and nBottleneck options do (the tests use a small one)."""
    n = size.bit_length() - 3  # 128 px: 5 stride-2 convs to 4x4
    return InpaintNetConfig(input_size=size, widths=tuple(width * min(2 ** max(i - 1, 0), 8) for i in range(n)),
                            bottleneck=bottleneck, disc_widths=tuple(width * 2 ** i for i in range(n - 1)))


def ours_step_fn(batch: int, size: int, bf16: bool, seed: int = 0, width: int = 64, bottleneck: int = 4000):
    """Our trainer's step (`engine.train_step`) on the same architecture, built as `cebench pretrain
    --method inpaint-adv` builds it (channels_last, fused Adam, G lr 2e-4, D 2e-5 as the official code)."""
    cfg = PretrainConfig(method="inpaint-adv", inpaint_net=inpaint_config(width, bottleneck, size))
    rt = Runtime(torch.device("cpu"), amp_dtype=torch.bfloat16 if bf16 else None, channels_last=True)
    step = trainer_step(cfg, rt, batch, seed)
    return (step.run, sum(p.numel() for p in step.objective.parameters()),
            sum(p.numel() for p in step.disc.parameters()))


def alternate(fns: dict, rounds: int, batch: int, warmup: int = 1) -> dict:
    """Run the step functions in turn, `rounds` times one step each -> per-name lists of img/s and CPU
    ms/img (process time: all threads)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            c = time.process_time()
            _, seconds = timed(fn)
            wall[k].append(batch / seconds)
            cpu[k].append((time.process_time() - c) / batch * 1e3)
    return {"img_per_s": wall, "cpu_ms_per_img": cpu}


def _summary(raw: dict, ref: str, other: str) -> dict:
    w, c = raw["img_per_s"], raw["cpu_ms_per_img"]
    ratios = [a / b for a, b in zip(w[other], w[ref])]
    return {f"{ref}_img_per_s": round(statistics.median(w[ref]), 2),
            f"{other}_img_per_s": round(statistics.median(w[other]), 2),
            "ratio": round(statistics.median(ratios), 3),
            "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
            f"{ref}_cpu_ms_per_img": round(statistics.median(c[ref]), 1),
            f"{other}_cpu_ms_per_img": round(statistics.median(c[other]), 1),
            "cpu_ratio": round(statistics.median(c[ref]) / statistics.median(c[other]), 3),
            "rounds": len(ratios)}


def compare_reference(model_py, out_path=None, *, batch: int = 64, threads: int = 2, rounds: int = 7,
                      size: int = 128, bf16: str = "auto", quick: bool = False, width: int = 64,
                      bottleneck: int = 4000) -> dict:
    """Measure the port's step and ours alternately (fp32, then bf16 when native); write JSON."""
    mod = load_port_module(model_py)
    if quick:
        batch, rounds = min(batch, 4), 2
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        modes = [("fp32", False)]
        native = cpu_bf16_native()
        if bf16 == "on" or (bf16 == "auto" and native and not quick):
            modes.append(("bf16", True))
        res = {"reference": "BoyuanJiang/context_encoder_pytorch (model.py; train.py step)", "batch": batch,
               "threads": threads, "input": size, "cpu_native_bf16": native, "modes": {}}
        for name, amp in modes:
            port, pg, pd = port_step_fn(mod, batch, size, amp, width=width, bottleneck=bottleneck)
            ours, og, od = ours_step_fn(batch, size, amp, width=width, bottleneck=bottleneck)
            if (pg, pd) != (og, od):
                raise CebenchError(f"{model_py}: the port's nets have {pg:,} / {pd:,} parameters, "
                                   f"ours {og:,} / {od:,}: not the same architecture")
            res["g_params"], res["d_params"] = og, od
            print(f"[reference] {name}: alternating {rounds} rounds of port / cebench steps (batch {batch}, "
                  f"{threads} threads) ...", file=sys.stderr, flush=True)
            raw = alternate({"port": port, "cebench": ours}, rounds, batch)
            res["modes"][name] = {**_summary(raw, "port", "cebench"), "raw": raw}
            del port, ours
    finally:
        torch.set_num_threads(old_threads)
    if out_path is not None:
        atomic_write_json(Path(out_path), res)
    return res
