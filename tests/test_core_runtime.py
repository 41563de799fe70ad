import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from cebench.logs import JsonlLogger, read_jsonl
from cebench.runtime import autocast_context, init_runtime, place_model, seed_everything, to_channels_last, unwrap_model


def test_single_process_runtime():
    rt = init_runtime("cpu", amp="none")  # amp=auto on CPU is the start-up probe's choice: tests/test_precision.py
    assert rt.device.type == "cpu" and rt.world_size == 1 and rt.is_main and not rt.distributed
    assert rt.amp_dtype is None and rt.channels_last
    x = torch.randn(2, 3, 4, 4)
    assert to_channels_last(x, rt).is_contiguous(memory_format=torch.channels_last)
    assert to_channels_last(x, init_runtime("cpu", amp="none", channels_last=False)) is x
    conv = place_model(torch.nn.Conv2d(3, 5, 3), "cpu")
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(conv(x), torch.nn.functional.conv2d(x, conv.weight.contiguous(), conv.bias))
    with autocast_context(rt):
        assert (x @ torch.ones(4, 4)).dtype == torch.float32
    rt16 = init_runtime("cpu", amp="bf16")
    with autocast_context(rt16):
        assert torch.nn.functional.linear(x, torch.ones(4, 4)).dtype == torch.bfloat16


def test_seed_and_unwrap():
    seed_everything(3)
    a = torch.rand(3)
    seed_everything(3)
    assert torch.equal(a, torch.rand(3))
    m = torch.nn.Linear(2, 2)

    class Wrap(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert unwrap_model(Wrap(m)) is m


def test_jsonl_logger_survives_cut_line(tmp_path):
    log = JsonlLogger(tmp_path / "m.jsonl")
    log.log(step=1, loss=torch.tensor(0.5))
    log.log(step=2, loss=float("nan"))
    with open(tmp_path / "m.jsonl", "a") as fh:
        fh.write('{"step": 3, "lo')  # killed mid-write
    rows = read_jsonl(tmp_path / "m.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["loss"] == 0.5 and rows[1]["loss"] == "nan"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_ddp(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(r"""
        import sys, torch
        from cebench.runtime import init_runtime, wrap_ddp, all_reduce_sum, cleanup, seed_everything
        def run(rt):  # the DDP wrapper is dropped with this frame; cleanup's collection frees it (see its docstring)
            seed_everything(0)
            model = wrap_ddp(torch.nn.Linear(4, 1), rt)
            x = torch.full((2, 4), float(rt.rank + 1))
            model(x).sum().backward()
            g = model.module.weight.grad.clone()
            total = all_reduce_sum(torch.tensor([float(rt.rank + 1)]), rt)
            return f"rank={rt.rank} world={rt.world_size} total={total.item()} grad={g[0,0].item():.3f}"
        rt = init_runtime("cpu", amp="none")
        print("\n" + run(rt), flush=True)
        cleanup(rt)
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
           str(script)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    lines = sorted(l for l in out.stdout.splitlines() if l.startswith("rank="))
    assert len(lines) == 2
    # DDP averages gradients: d/dw sum(w.x) = 2*x per rank -> mean of 2*1 and 2*2 = 3
    assert all("world=2" in l and "total=3.0" in l and "grad=3.000" in l for l in lines)
