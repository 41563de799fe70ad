"""`cebench bench transfer`: training and inference images/s of each transfer task.

`BENCHES` is the list of (name, function) measured (classification, segmentation, detection; more
can be passed as `extra=`) — each function takes
(device, quick) and returns {"train_images_per_s", "infer_images_per_s", ...}.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cebench.io import atomic_write_json
from cebench.pretrain.models import AlexNetConfig, build_encoder
from cebench.runtime import choose_device, place_model, timed_steps

from .classification import ClsNet, bce_ignore_difficult
from .det.throughput import bench_det
from .segmentation import FCN32


def _throughput(model, make_batch, loss_of, device, steps: int, batch: int) -> tuple[float, float]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    x, y = make_batch(batch)
    x, y = x.to(device), y.to(device)

    def train_step():
        loss = loss_of(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    model.train()
    train = steps * batch / timed_steps(train_step, steps, 2, device)
    model.eval()
    with torch.no_grad():
        infer = steps * batch / timed_steps(lambda: model(x), steps, 2, device)
    return train, infer


def bench_cls(device, quick=False, arch=None) -> dict:
    arch = arch or AlexNetConfig.demo()
    model = place_model(ClsNet(build_encoder(arch), 20), device)
    s = arch.input_size
    mk = lambda b: (torch.randn(b, 3, s, s), torch.randint(-1, 2, (b, 20)).float())  # noqa: E731
    tr, inf = _throughput(model, mk, bce_ignore_difficult, device, 3 if quick else 20, 32)
    return {"train_images_per_s": tr, "infer_images_per_s": inf, "input": s, "batch": 32}


def bench_seg(device, quick=False, arch=None, feature: str = "pool5") -> dict:
    arch = arch or AlexNetConfig.demo()
    model = place_model(FCN32(build_encoder(arch), 21, feature=feature), device)
    s = arch.input_size
    mk = lambda b: (torch.randn(b, 3, s, s), torch.randint(0, 21, (b, s, s)))  # noqa: E731
    loss = lambda out, y: F.cross_entropy(out, y, ignore_index=255)  # noqa: E731
    tr, inf = _throughput(model, mk, loss, device, 3 if quick else 20, 32)
    return {"train_images_per_s": tr, "infer_images_per_s": inf, "input": s, "batch": 32, "feature": feature}


def bench_seg_conv5(device, quick=False, arch=None) -> dict:
    """The demo's segmentation head: on conv5 (stride 8), pool5 dropped."""
    return bench_seg(device, quick, arch, feature="conv5")


BENCHES = [("cls", bench_cls), ("seg", bench_seg), ("seg_conv5", bench_seg_conv5), ("det", bench_det)]


def bench_transfer(out_path=None, device="auto", quick: bool = False, extra=()) -> dict:
    dev = choose_device(device)
    out = {"device": str(dev), "threads": torch.get_num_threads()}
    for name, fn in [*BENCHES, *extra]:
        out[name] = fn(dev, quick)
        if dev.type == "cuda" and not quick and name in ("cls", "seg"):
            out[f"{name}_paper_arch"] = fn(dev, quick, AlexNetConfig.paper())
    if out_path is not None:
        atomic_write_json(out_path, out)
    return out


__all__ = ["bench_transfer", "bench_cls", "bench_seg", "BENCHES"]
