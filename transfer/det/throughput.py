"""Detection numbers for `cebench bench transfer`: Fast R-CNN training / inference images/s and proposal
images/s (selective search, fast mode, one process and a process pool).

`bench_det(device, quick)` follows the convention of `cebench.transfer.throughput` (returns a dict with
`train_images_per_s` and `infer_images_per_s`); `BENCHES` there lists it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cebench.pretrain.models import AlexNetConfig, build_encoder
from cebench.runtime import place_model, timed_steps

from .model import FastRCNN, _rois_with_index, sample_rois
from .proposals import ProposalConfig, compute_missing


def _random_boxes(n: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
    wh = (0.1 + torch.rand(n, 2, generator=g) * 0.5) * torch.tensor([w, h])
    return torch.cat([xy, torch.minimum(xy + wh, torch.tensor([w, h]).float())], 1)


def det_throughput(device, arch: AlexNetConfig, size: tuple[int, int], *, num_classes: int = 20, fc_dim: int = 512,
                   proposals: int = 300, steps: int = 10, images_per_batch: int = 2, rois_per_image: int = 64,
                   eval_batch: int = 8) -> dict:
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    h, w = size
    model = place_model(FastRCNN(build_encoder(arch), num_classes, fc_dim=fc_dim), device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    gts = [_random_boxes(3, h, w, g) for _ in range(images_per_batch)]
    props = [_random_boxes(proposals, h, w, g) for _ in range(max(images_per_batch, eval_batch))]
    x = torch.randn(images_per_batch, 3, h, w, device=device)

    def train_step():
        picks = [sample_rois(props[k], gts[k], torch.randint(0, num_classes, (3,), generator=g), num=rois_per_image,
                             generator=g) for k in range(images_per_batch)]
        rois = _rois_with_index([p[0] for p in picks], device)
        logits, deltas = model(x, rois)
        loss = model.loss(logits, deltas, torch.cat([p[1] for p in picks]).to(device), rois[:, 1:],
                          torch.cat([p[2] for p in picks]).to(device))["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    model.train()
    train = steps * images_per_batch / timed_steps(train_step, steps, 2, device)
    model.eval()
    xe = torch.randn(eval_batch, 3, h, w, device=device)
    infer = steps * eval_batch / timed_steps(lambda: model.detect(xe, props[:eval_batch], [(h, w)] * eval_batch),
                                             steps, 2, device)
    return {"train_images_per_s": train, "infer_images_per_s": infer, "image": [h, w], "proposals": proposals,
            "images_per_batch": images_per_batch, "rois_per_image": rois_per_image}


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


__all__ = ["bench_det", "det_throughput", "proposal_throughput"]
