"""Detection, the `det` task of `cebench transfer`: Fast R-CNN fine-tuning, VOC07 detection mAP.

The task side by side, as torchvision's detection reference: the data (`DetBatches`, the seeded image
batches over `det.data.DetDataset`), the model (`build_model`: the init's encoder under the `FastRCNN`
head of `det.model`), the loss (`make_loss_fn`, RoI sampling included), `evaluate` and `fit`, one job,
which steps `engine.train_one_epoch` between the checkpoints of its `CheckpointSaver`.

The protocol is the shared one (`transfer.protocol.run_seeds`, settings in the `transfer:` section):
proposals are computed once and cached (`det.task.prepare`); for each init the learning rate is chosen
on `val` after fitting on `train`; then every seed fits on `trainval` with that lr and is scored once
on `test`. Each (init, seed, lr, phase) is one job (`fit`) writing its own JSON. Rows go to the
shared results file with task "det": metric `mAP` (the VOC2007 11-point AP by default,
`use_07_metric`), `mAP_11pt` and `mAP_allpoint`. `DetConfig` is the `transfer.det` sub-section.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torchvision.ops import box_iou

from cebench.data.loader import make_loader
from cebench.data.voc import read_split
from cebench.errors import ConfigError
from cebench.runtime import Runtime, autocast_context, gather, place_model, shard, unwrap_model

from ..common import TaskContext, job_runtime, job_training
from ..engine import OptimConfig, make_optimizer, train_one_epoch
from ..inits import build_init
from .data import DetDataset, check_voc_tree, collate, hflip
from .metrics import evaluate_detections
from .model import FastRCNN, _rois_with_index, encode_boxes, sample_rois
from .proposals import ProposalConfig, load_proposals

METRICS = ["mAP", "mAP_11pt", "mAP_allpoint"]


@dataclass
class DetConfig:
    lrs: list[float] = field(default_factory=lambda: [3e-4, 1e-3])  # demo: 3e-3 diverged for every init
    iterations: int = 400                       # SGD/Adam steps of `images_per_batch` images
    images_per_batch: int = 2                   # Fast R-CNN: 2 images x 64 RoIs
    rois_per_image: int = 64
    fg_fraction: float = 0.25
    fg_thresh: float = 0.5
    bg_lo: float = 0.1
    bg_hi: float = 0.5
    scale: int = 128                            # short side after resizing (paper: 600)
    max_size: int = 1000
    fc_dim: int = 512                           # fc6/fc7 width (paper: 4096)
    roi_size: int = 6
    dropout: float = 0.5
    flip: bool = True
    bbox_weight: float = 1.0
    use_difficult: bool = False                 # train on difficult objects too (py-faster-rcnn: no)
    magic_images: int = 32                      # det's own (its images are larger than cls/seg/svm's)
    optim: OptimConfig = field(default_factory=OptimConfig)
    score_thresh: float = 0.05
    nms_thresh: float = 0.3
    max_per_image: int = 100
    use_07_metric: bool = True                  # mAP = VOC2007 11-point (False: all-point)
    eval_batch: int = 16
    cache_images: bool = True                   # keep resized images in memory (demo sizes)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    figure_images: int = 6                      # test images whose detections each final job keeps

    def __post_init__(self):
        if self.iterations < 1 or self.images_per_batch < 1 or self.rois_per_image < 1:
            raise ConfigError("transfer.det: iterations, images_per_batch and rois_per_image must be >= 1")
        if not (0 <= self.bg_lo < self.bg_hi <= self.fg_thresh <= 1) or not 0 < self.fg_fraction <= 1:
            raise ConfigError("transfer.det: need 0 <= bg_lo < bg_hi <= fg_thresh <= 1 and 0 < fg_fraction <= 1 "
                              f"(bg_lo {self.bg_lo}, bg_hi {self.bg_hi}, fg_thresh {self.fg_thresh}, "
                              f"fg_fraction {self.fg_fraction})")


# --------------------------------------------------------------------------------------------- pieces
def target_stats(ds: DetDataset, fg_thresh: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the regression targets of all foreground candidates of a split."""
    chunks = []
    for i in range(len(ds)):  # one pass over images; boxes vectorised within each
        s = ds.boxes(i)  # boxes and proposals as scaled for training, without decoding the image
        if len(s["boxes"]) == 0:
            continue
        cand = torch.cat([s["proposals"], s["boxes"]])
        iou, arg = box_iou(cand, s["boxes"]).max(1)
        fg = iou >= fg_thresh
        chunks.append(encode_boxes(cand[fg], s["boxes"][arg[fg]]))
    t = torch.cat(chunks) if chunks else torch.zeros(0, 4)
    if len(t) < 2:
        return torch.zeros(4), torch.ones(4)
    return t.mean(0), t.std(0).clamp(min=1e-3)


def batch_plan(n: int, cfg: DetConfig, iterations: int, seed: int) -> list[list[tuple[int, bool]]]:
    """The (image, flip) pairs of every iteration, from one seeded generator: sampling without replacement
    per pass, random horizontal flips. A pure function of the seed, so the images of any iteration are
    known ahead (DataLoader workers prefetch them) and a resumed job continues the same sequence."""
    g = torch.Generator().manual_seed(seed)
    k = min(cfg.images_per_batch, n)
    perm, pos, plan = torch.randperm(n, generator=g), 0, []
    for _ in range(iterations):
        if pos + k > n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos:pos + k].tolist()
        pos += k
        flips = (torch.rand(k, generator=g) < 0.5).tolist() if cfg.flip else [False] * k
        plan.append(list(zip(idx, flips)))
    return plan


class _Flipped(torch.utils.data.Dataset):
    """Item (i, flip) of a DetDataset, flipped when asked (what a DataLoader worker computes)."""

    def __init__(self, ds: DetDataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, item):
        i, f = item
        return hflip(self.ds[i]) if f else self.ds[i]


class DetBatches:
    """The training minibatches (images, samples) of `batch_plan`, from step `step` on; under DDP each
    rank takes its images [rank::world] of every iteration's images. State: the step."""

    def __init__(self, ds: DetDataset, cfg: DetConfig, iterations: int, seed: int, *, rank: int = 0,
                 world: int = 1, workers: int = 0):
        k = min(cfg.images_per_batch, len(ds))
        if world > 1 and k % world:
            raise ConfigError(f"det.images_per_batch {k} is not divisible by the {world} processes")
        self.ds, self.plan = ds, [b[rank::world] for b in batch_plan(len(ds), cfg, iterations, seed)]
        self.workers, self.step = int(workers), 0

    def take(self, k: int):
        todo = self.plan[self.step:self.step + int(k)]
        if self.workers > 0 and self.ds.cache is None:
            loader = make_loader(_Flipped(self.ds), todo, self.workers, collate_fn=collate)
        else:
            loader = (collate([_Flipped(self.ds)[item] for item in items]) for items in todo)
        for batch in loader:
            self.step += 1
            yield batch

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def make_loss_fn(cfg: DetConfig, generator: torch.Generator, device):
    def loss_fn(model, batch) -> dict:  # model: the FastRCNN, or its DDP wrapper
        images, samples = batch
        picks = [sample_rois(s["proposals"], s["boxes"], s["labels"], num=cfg.rois_per_image,
                             fg_fraction=cfg.fg_fraction, fg_thresh=cfg.fg_thresh,
                             bg_range=(cfg.bg_lo, cfg.bg_hi), generator=generator) for s in samples]
        rois = _rois_with_index([p[0] for p in picks], device)
        labels = torch.cat([p[1] for p in picks]).to(device)
        gt = torch.cat([p[2] for p in picks]).to(device)
        logits, deltas = model(images.to(device), rois)
        losses = unwrap_model(model).loss(logits.float(), deltas.float(), labels, rois[:, 1:], gt,
                                          bbox_weight=cfg.bbox_weight)
        return {"loss": losses["total"], "cls": losses["cls"], "box": losses["box"]}
    return loss_fn


@torch.no_grad()
def evaluate(model: FastRCNN, ds: DetDataset, cfg: DetConfig, device, keep_first: int = 0, rt: Runtime | None = None,
             workers: int = 0) -> dict:
    """Detections on a whole split, mapped back to original pixels; VOC AP (11-point and all-point).
    Under DDP each rank detects on its share of the chunks and the detections are gathered, so every
    test image is scored exactly once (and the AP is that of one process)."""
    model.eval()
    rt = rt or Runtime(torch.device(device))
    t0 = time.perf_counter()
    chunks = shard([list(range(s, min(len(ds), s + cfg.eval_batch))) for s in range(0, len(ds), cfg.eval_batch)], rt)
    if workers > 0 and ds.cache is None:
        loader = make_loader(ds, chunks, workers, collate_fn=collate)
    else:
        loader = (collate([ds[i] for i in chunk]) for chunk in chunks)
    mine = []
    for images, samples in loader:
        with autocast_context(rt):
            out = model.detect(images.to(device), [s["proposals"] for s in samples], [s["size"] for s in samples],
                               score_thresh=cfg.score_thresh, nms_thresh=cfg.nms_thresh,
                               max_per_image=cfg.max_per_image)
        for s, d in zip(samples, out):
            mine.append((s["index"], {k: v.float().cpu() / s["scale"] if k == "boxes" else v.cpu()
                                      for k, v in d.items()}))
    found = sorted(gather(mine, rt), key=lambda t: t[0])
    if [i for i, _ in found] != list(range(len(ds))):
        raise RuntimeError(f"evaluation scored {len(found)} images for a split of {len(ds)}")
    dets, gts = [d for _, d in found], []
    for i in range(len(ds)):
        ann = ds.index.annotation(i)
        gts.append(dict(boxes=ann["boxes"], labels=ann["labels"], difficult=ann["difficult"]))
    seconds = time.perf_counter() - t0
    C = len(ds.classes)
    ap07 = evaluate_detections(dets, gts, C, use_07_metric=True, classes=ds.classes)
    apall = evaluate_detections(dets, gts, C, use_07_metric=False, classes=ds.classes)
    main = ap07 if cfg.use_07_metric else apall
    examples = [{"id": ds.index.ids[i], "boxes": dets[i]["boxes"].tolist(), "scores": dets[i]["scores"].tolist(),
                 "labels": dets[i]["labels"].tolist()} for i in range(min(keep_first, len(dets)))]
    return {"metrics": {"mAP": main.map, "mAP_11pt": ap07.map, "mAP_allpoint": apall.map},
            "details": {"ap": main.as_dict()["ap"], "npos": main.as_dict()["npos"]},
            "infer_images_per_s": len(ds) / max(seconds, 1e-9), "examples": examples, "test_images": len(found)}


def build_model(cfg: DetConfig, init_name: str, checkpoint, seed: int, ds: DetDataset, *, arch="demo",
                magic: str = "random") -> FastRCNN:
    """The init's encoder (seeded; data-dependent init on the first `magic_images` training images) under
    a Fast R-CNN head."""
    torch.manual_seed(seed)
    batch = None
    if magic != "none" and cfg.magic_images > 0:
        batch, _ = collate([ds[i] for i in range(min(cfg.magic_images, len(ds)))])
    encoder = build_init(init_name, arch_cfg=arch, checkpoint=checkpoint, data_for_magic_init=batch, seed=seed,
                         magic=magic)
    return FastRCNN(encoder, len(ds.classes), fc_dim=cfg.fc_dim, roi_size=cfg.roi_size, dropout=cfg.dropout)


def fit(job, ctx: TaskContext) -> dict:
    """One detection job: build the init under the Fast R-CNN head, fine-tune on job.fit_split with job.lr
    (resuming from the job's `last` checkpoint), score on job.eval_split; a final job keeps the detections
    of its first `figure_images` test images (the figure of `det.task.finish`)."""
    cfg: DetConfig = ctx.cfg
    rt = job_runtime(ctx.runtime, ctx.device)
    props = load_proposals(ctx.root, _split_ids(ctx.root, job.fit_split) + _split_ids(ctx.root, job.eval_split),
                           cfg.proposals, progress=False)
    train = DetDataset(ctx.root, job.fit_split, props, scale=cfg.scale, max_size=cfg.max_size, train=True,
                       use_difficult=cfg.use_difficult, cache_images=cfg.cache_images, classes=ctx.classes)
    test = DetDataset(ctx.root, job.eval_split, props, scale=cfg.scale, max_size=cfg.max_size, train=False,
                      cache_images=cfg.cache_images, classes=ctx.classes)
    model = build_model(cfg, job.init.kind, job.init.checkpoint, job.seed, train, arch=ctx.arch, magic=ctx.magic)
    model.set_target_stats(*target_stats(train, cfg.fg_thresh))
    model = place_model(model, rt.device, channels_last=rt.channels_last)
    optimizer, scheduler = make_optimizer(model, cfg.optim, job.lr, cfg.iterations, backbone=model.encoder)
    # RoI sampling: its own generator (per rank under DDP), part of the job's resumable state
    gen = torch.Generator().manual_seed(job.seed + 7919 + (1000 * rt.rank if rt.distributed else 0))
    stream = DetBatches(train, cfg, cfg.iterations, job.seed, rank=rt.rank, world=rt.world_size,
                        workers=ctx.runtime.loader_workers)
    loss_fn = make_loss_fn(cfg, gen, rt.device)
    with job_training(job, ctx, rt, model, optimizer, scheduler, stream, {"roi": gen}) as (saver, ddp, log):
        while saver.step < cfg.iterations:  # an epoch: the iterations up to the next checkpoint
            saver.end_epoch(train_one_epoch(ddp, saver.batches(), loss_fn, optimizer, scheduler, rt, step0=saver.step,
                                            grad_clip=cfg.optim.grad_clip, log=log, log_every=ctx.log_every))
    stats = saver.totals()
    keep = cfg.figure_images if job.phase == "final" else 0
    out = evaluate(model, test, cfg, rt.device, keep_first=keep, rt=rt, workers=ctx.runtime.loader_workers)
    out["train"] = {k: v for k, v in stats.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    out["inputs"] = {**stats["inputs"], "test_images": out.pop("test_images"), "processes": rt.world_size,
                     "scale": cfg.scale, "max_size": cfg.max_size}
    out["train_images_per_s"] = stats["images_per_s"]
    return out


def _split_ids(root, split: str) -> list[str]:
    check_voc_tree(root, [split])
    return read_split(root, split)


__all__ = ["DetConfig", "METRICS", "DetBatches", "batch_plan", "target_stats", "build_model", "make_loss_fn",
           "evaluate", "fit"]
