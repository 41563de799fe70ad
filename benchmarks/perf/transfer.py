"""`cebench bench transfer`: training and inference images/s of each transfer task, and detection's proposals.

Each task trains as `cebench transfer` trains it: the task's net and head on a demo (or paper) AlexNet,
the fine-tuning optimiser and schedule (`engine.make_optimizer` with the task's `optim` defaults), the
task's loss (detection: its own `make_loss_fn`, RoI sampling included) under the runtime's autocast, and
the fine-tuning loop itself (`engine.train_one_epoch`: zero_grad, backward, clipping, step, schedule,
the finite-loss check), on synthetic in-memory batches after two untimed steps. Inference is the net's
forward (detection: `FastRCNN.detect`, NMS included) in eval mode without gradients.

`BENCHES` is the list of (name, function) measured; each function takes (device, quick) and returns
{"train_images_per_s", "infer_images_per_s", ...}. Detection also times selective search (fast mode,
one process and a process pool), the proposals every detection job needs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cebench.io import atomic_write_json
from cebench.pretrain.models import AlexNetConfig, build_encoder
from cebench.runtime import autocast_context, choose_device, init_runtime, place_model
from cebench.transfer import engine
from cebench.transfer.classification import ClsConfig, ClsNet, bce_ignore_difficult
from cebench.transfer.det.model import FastRCNN
from cebench.transfer.det.proposals import ProposalConfig, compute_missing
from cebench.transfer.det.train import DetConfig, make_loss_fn
from cebench.transfer.segmentation import FCN32, SegConfig

from .timing import timed

WARMUP = 2


def train_and_infer(model, batch, loss_fn, optim: engine.OptimConfig, rt, steps: int, infer,
                    infer_images: int) -> dict:
    """img/s of `steps` fine-tuning iterations of `model` on `batch` (the tuple a task's stream yields:
    images first) and of `steps` calls of `infer()`, each on `infer_images` images; the optimiser as the
    task builds it (lr 1e-4)."""
    opt, sched = engine.make_optimizer(model, optim, 1e-4, WARMUP + steps, backbone=model.encoder)

    def fit(k: int) -> dict:  # k iterations of the fine-tuning loop (the loss under the runtime's autocast)
        return engine.train_one_epoch(model, [batch] * k, loss_fn, opt, sched, rt, grad_clip=optim.grad_clip)

    fit(WARMUP)
    stats, seconds = timed(lambda: fit(steps), rt.device)
    model.eval()
    with torch.no_grad(), autocast_context(rt):
        _, infer_s = timed(infer, rt.device, repeat=steps, warmup=WARMUP)
    return {"train_images_per_s": stats["images"] / seconds, "infer_images_per_s": steps * infer_images / infer_s,
            "train_seconds": round(seconds, 4), "train_iterations": stats["iterations"],
            "optimizer": type(opt).__name__, "amp": "bf16" if rt.amp_dtype is not None else "fp32"}


def _runtime(device):
    return init_runtime(str(device), "auto")  # the precision fine-tuning resolves (bf16 on CUDA)


def bench_cls(device, quick=False, arch=None) -> dict:
    arch, rt = arch or AlexNetConfig.demo(), _runtime(device)
    cfg = ClsConfig()
    model = place_model(ClsNet(build_encoder(arch), 20, head=cfg.head, fc_dim=cfg.fc_dim, fc_layers=cfg.fc_layers,
                               dropout=cfg.dropout), rt.device, channels_last=rt.channels_last)
    s, b = arch.input_size, 32
    x = torch.randn(b, 3, s, s, device=rt.device)                        # [B,3,S,S]
    y = torch.randint(-1, 2, (b, 20), device=rt.device).float()          # [B,20] VOC labels -1/0/1

    def loss_fn(m, batch):  # cls_task's loss
        return {"loss": bce_ignore_difficult(m(batch[0]), batch[1])}

    out = train_and_infer(model, (x, y), loss_fn, cfg.optim, rt, 3 if quick else 20, lambda: model(x), b)
    return {**out, "input": s, "batch": b}


def bench_seg(device, quick=False, arch=None, feature: str = "pool5") -> dict:
    arch, rt = arch or AlexNetConfig.demo(), _runtime(device)
    cfg = SegConfig(feature=feature)
    model = place_model(FCN32(build_encoder(arch), 21, fc_dim=cfg.fc_dim, fc6_kernel=cfg.fc6_kernel,
                              dropout=cfg.dropout, feature=cfg.feature), rt.device, channels_last=rt.channels_last)
    s, b = arch.input_size, 32
    x = torch.randn(b, 3, s, s, device=rt.device)                        # [B,3,S,S]
    y = torch.randint(0, 21, (b, s, s), device=rt.device)                # [B,S,S] class per pixel

    def loss_fn(m, batch):  # seg_task's loss
        return {"loss": F.cross_entropy(m(batch[0]).float(), batch[1], ignore_index=cfg.ignore_index)}

    out = train_and_infer(model, (x, y), loss_fn, cfg.optim, rt, 3 if quick else 20, lambda: model(x), b)
    return {**out, "input": s, "batch": b, "feature": feature}


def bench_seg_conv5(device, quick=False, arch=None) -> dict:
    """The demo's segmentation head: on conv5 (stride 8), pool5 dropped."""
    return bench_seg(device, quick, arch, feature="conv5")


def _random_boxes(n: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
    """[n, 4] boxes (x1, y1, x2, y2) inside an h x w image."""
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
    wh = (0.1 + torch.rand(n, 2, generator=g) * 0.5) * torch.tensor([w, h])
    return torch.cat([xy, torch.minimum(xy + wh, torch.tensor([w, h]).float())], 1)


def det_throughput(device, arch: AlexNetConfig, size: tuple[int, int], *, num_classes: int = 20, fc_dim: int = 512,
                   proposals: int = 300, steps: int = 10, images_per_batch: int = 2, rois_per_image: int = 64,
                   eval_batch: int = 8) -> dict:
    """Fast R-CNN fine-tuning (the detection job's loss and RoI sampling) and detection img/s on
    synthetic images of `size` with random ground truth and proposals."""
    rt = _runtime(device)
    cfg = DetConfig(fc_dim=fc_dim, images_per_batch=images_per_batch, rois_per_image=rois_per_image,
                    eval_batch=eval_batch)
    g = torch.Generator().manual_seed(0)
    h, w = size
    model = place_model(FastRCNN(build_encoder(arch), num_classes, fc_dim=cfg.fc_dim, roi_size=cfg.roi_size,
                                 dropout=cfg.dropout), rt.device, channels_last=rt.channels_last)
    props = [_random_boxes(proposals, h, w, g) for _ in range(max(images_per_batch, eval_batch))]
    samples = [{"proposals": props[k], "boxes": _random_boxes(3, h, w, g),
                "labels": torch.randint(0, num_classes, (3,), generator=g)} for k in range(images_per_batch)]
    x = torch.randn(images_per_batch, 3, h, w, device=rt.device)  # [B,3,H,W]
    xe = torch.randn(eval_batch, 3, h, w, device=rt.device)
    out = train_and_infer(model, (x, samples), make_loss_fn(cfg, g, rt.device), cfg.optim, rt, steps,
                          lambda: model.detect(xe, props[:eval_batch], [(h, w)] * eval_batch), eval_batch)
    return {**out, "image": [h, w], "proposals": proposals, "images_per_batch": images_per_batch,
            "rois_per_image": rois_per_image}


def proposal_throughput(n: int, size: tuple[int, int], workers: int) -> float:
    """Selective search (fast) images/s over `n` synthetic scenes (coloured shapes on a noisy photo-like
    background) of `size`, computed in `workers` processes (the cache path of `load_proposals`)."""
    rng = np.random.default_rng(0)
    h, w = size
    with tempfile.TemporaryDirectory() as tmp:
        todo = []
        for i in range(n):
            img = (rng.random((h // 8 + 1, w // 8 + 1, 3)) * 120 + 60).astype(np.uint8)
            img = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR)).copy()
            for _ in range(3):
                y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
                img[y:y + h // 3, x:x + w // 3] = rng.integers(0, 255, 3)
            p = Path(tmp) / f"{i}.jpg"
            Image.fromarray(img).save(p)
            todo.append((str(p), str(Path(tmp) / f"{i}.npz")))
        return compute_missing(todo, ProposalConfig(workers=workers), progress=False)


def bench_det(device, quick: bool = False, arch=None) -> dict:
    device = torch.device(device)
    arch = arch or AlexNetConfig.demo()
    steps = 3 if quick else 20
    out = {"demo_128px": det_throughput(device, arch, (128, 128), num_classes=8, proposals=70, steps=steps)}
    out["train_images_per_s"] = out["demo_128px"]["train_images_per_s"]
    out["infer_images_per_s"] = out["demo_128px"]["infer_images_per_s"]
    n = 16 if quick else 96
    out["proposals_images_per_s"] = {"64px_1proc": proposal_throughput(n, (64, 64), 1)}
    if not quick:
        out["proposals_images_per_s"]["64px_2proc"] = proposal_throughput(n, (64, 64), 2)
        out["proposals_images_per_s"]["375x500_1proc"] = proposal_throughput(8, (375, 500), 1)
        if device.type == "cuda":
            out["paper_600x1000"] = det_throughput(device, AlexNetConfig.paper(), (600, 1000), fc_dim=4096,
                                                   proposals=2000, steps=steps)
    return out


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
