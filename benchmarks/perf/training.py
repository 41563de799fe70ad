"""`cebench bench training`: the pretraining speed that decides the paper protocol's GPU-hours.

Measured with the trainer's own code: its nets and optimisers (`methods.METHODS`,
`train.nets_and_optimizers`: fused Adam) stepped by its loop (`engine.train_one_epoch`: bf16 autocast on
CUDA, channels_last, masks drawn on the device, the per-step loss check), on the nets the configs train:
- ce_step: the paper-size AlexNet context encoder (227 px, batch 64, random-region masks), inputs
  already on the device: the training step alone;
- jpeg: from JPEG files of VOC size written to a temporary folder, through the loader `cebench
  pretrain` uses (PIL decode + resize + crop + flip in DataLoader workers, `data.PretrainImages`),
  measured for its parts (decode alone, decode + augmentation) and end to end feeding the training step;
- inpaint_step: the 128 px inpainting CE with its discriminator (L2 + adversarial, centre masks).
Goals on one H100/H200 (the issue's): 3000 img/s step, 2000 img/s end to end, 1500 img/s inpainting.
Where a number falls short, `limit` names the slowest part (decode, augmentation, step) of the
pipeline. On CPU the same code runs at small sizes (the tests), so only the GPU numbers mean anything.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cebench.data.loader import make_loader
from cebench.images import open_rgb
from cebench.io import atomic_write_json
from cebench.pretrain import engine
from cebench.pretrain.config import PretrainConfig
from cebench.pretrain.data import PretrainImages, step_batches
from cebench.pretrain.methods import METHODS
from cebench.pretrain.models import AlexNetConfig, InpaintNetConfig
from cebench.pretrain.train import nets_and_optimizers
from cebench.runtime import init_runtime

from .pretrain import optimizer_name
from .timing import Clock, rate, timed

GOALS = {"ce_step": 3000.0, "ce_end_to_end": 2000.0, "inpaint_step": 1500.0}  # img/s, one H100/H200
GOAL_GPUS = ("H100", "H200")


def paper_pretrain_config():
    """The paper's feature-learning CE (as `paper.yaml` trains it): AlexNet 227 px, region masks, batch 64."""
    return PretrainConfig(method="ce", encoder=AlexNetConfig.paper(), mask="region", decoder_widths=(64, 64, 32, 32),
                          decoder_layers=5, batch_size=64, load_size=256, amp="auto")


def paper_inpaint_config():
    return PretrainConfig(method="inpaint-adv", inpaint_net=InpaintNetConfig.paper(), mask="center", batch_size=64,
                          load_size=350, amp="auto")


def _silhouettes(k: int = 64, r: int = 64, seed: int = 0) -> torch.Tensor:
    """[K,R,R] random ellipses: region-mask shapes without reading VOC (only the masks' cost matters here)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, r), torch.linspace(-1, 1, r), indexing="ij")
    a, b = 0.4 + 0.6 * torch.rand(k, 1, 1, generator=g), 0.4 + 0.6 * torch.rand(k, 1, 1, generator=g)
    return ((xx / a) ** 2 + (yy / b) ** 2 <= 1).float()


class Trainer:
    """One method's nets, optimisers and masker as `cebench pretrain` builds them, stepped through the
    trainer's loop (`engine.train_one_epoch`)."""

    def __init__(self, cfg, device: str):
        self.rt = init_runtime(device, cfg.amp)
        built = METHODS[cfg.method](cfg, num_classes=20, silhouettes=_silhouettes(), device=self.rt.device)
        self.cfg, self.size, self.masker = cfg, built.input_size, built.mask
        self.obj, self.disc, self.opt_g, self.opt_d = nets_and_optimizers(cfg, built, self.rt)
        self.state = engine.TrainState(total_steps=10**9)

    def run(self, batches) -> int:
        """Train on an iterable of (uint8 x, labels, idx); returns the images seen."""
        n = [0]

        def count(st, losses, outs, x, mask):
            n[0] += x.shape[0]

        engine.train_one_epoch(self.obj, self.disc, self.opt_g, self.opt_d, batches, self.masker, self.state,
                               self.rt, seed=0, method=self.cfg.method, w_rec=self.cfg.w_rec, w_adv=self.cfg.w_adv,
                               on_step=count)
        return n[0]


def step_throughput(cfg, device: str, steps: int, warmup: int = 2) -> dict:
    """Training img/s with inputs already on the device (uint8, as a loader delivers them)."""
    tr = Trainer(cfg, device)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (cfg.batch_size, 20), generator=g).float().to(tr.rt.device)
    shape = (cfg.batch_size, 3, tr.size, tr.size)
    pool = [torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).to(tr.rt.device) for _ in range(2)]
    batch = lambda k: [(pool[i % 2], labels, None) for i in range(k)]  # noqa: E731
    tr.run(batch(warmup))
    n, secs = timed(lambda: tr.run(batch(steps)), tr.rt.device)
    out = {"img_per_s": rate(n, secs), "batch": cfg.batch_size, "input": tr.size, "steps": steps,
           "seconds": round(secs, 3), "amp": str(tr.rt.amp_dtype).replace("torch.", "") if tr.rt.amp_dtype else "fp32",
           "channels_last": tr.rt.channels_last, "masks": cfg.mask, "masks_on": str(tr.rt.device),
           "adversarial": tr.disc is not None, "optimizer": optimizer_name(tr.opt_g)}
    if tr.rt.device.type == "cuda":
        out["peak_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def write_jpegs(folder: Path, n: int, size=(500, 375), distinct: int = 16, quality: int = 90,
                seed: int = 0) -> list[Path]:
    """`n` JPEG files of VOC's typical size (`distinct` different images, repeated): smooth colour
    fields plus texture, so the files have a photograph's size (~50-100 KB), not a flat image's."""
    rng = np.random.default_rng(seed)
    w, h = size
    folder.mkdir(parents=True, exist_ok=True)
    blobs = []
    for _ in range(distinct):
        low = rng.random((h // 25 + 1, w // 25 + 1, 3)) * 255
        img = Image.fromarray(low.astype(np.uint8)).resize((w, h), Image.BICUBIC)
        arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 18, (h, w, 3))
        path = folder / "tmp.jpg"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=quality)
        blobs.append(path.read_bytes())
    paths = []
    for i in range(n):
        p = folder / f"{i:06d}.jpg"
        p.write_bytes(blobs[i % distinct])
        paths.append(p)
    (folder / "tmp.jpg").unlink()
    return paths


class _DecodeOnly(torch.utils.data.Dataset):
    """PIL decode of each file and nothing else (what the loader's decode alone costs)."""

    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return torch.from_numpy(np.asarray(open_rgb(self.paths[i]))[:1, :1, 0].copy()), i


def _batches(n: int, batch: int, epochs: int) -> list[list[int]]:
    return [bt for e in range(epochs) for bt in step_batches(n, batch, 0, e)]


def jpeg_throughput(cfg, device: str, paths, workers: int, epochs: int = 1) -> dict:
    """The pretraining loader from JPEG files: its parts alone and end to end into the training step
    (`epochs` passes over the files per measurement; rates from the first batch on)."""
    tr = Trainer(cfg, device)
    dev, b, crop, load = tr.rt.device, cfg.batch_size, tr.size, cfg.load_size or tr.size
    pin = dev.type == "cuda"
    res: dict = {"images": len(paths), "epochs": epochs, "workers": workers, "batch": b, "load_size": load,
                 "crop": crop, "jpeg_size": list(_image_size(paths[0]))}
    order = _batches(len(paths), b, epochs)

    def measure(iterable, consume=None) -> float:
        clock = Clock(iterable, dev)
        if consume is None:
            for _ in clock:
                pass
        else:
            consume(clock)
        return clock.rate()

    # DataLoader workers with PIL: decode alone, then decode + augmentation (the PretrainImages pipeline)
    res["loader_decode_img_per_s"] = measure(make_loader(_DecodeOnly(paths), order, workers))
    ds = PretrainImages(paths, crop, load, flip=True, cache=False)
    res["loader_decode_augment_img_per_s"] = measure(make_loader(ds, order, workers, pin=pin))
    tr.run([(torch.zeros(b, 3, crop, crop, dtype=torch.uint8, device=dev), torch.zeros(b, 20, device=dev), None)])
    to_dev = ((x.to(dev, non_blocking=True), y.to(dev), i) for x, y, i in make_loader(ds, order, workers, pin=pin))
    res["loader_end_to_end_img_per_s"] = measure(to_dev, tr.run)
    return res


def _image_size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def limit_of(step_rate: float, decode_rate: float, decode_augment_rate: float) -> str:
    """The slowest part of a pipeline (decode, augmentation, step), from the rates of its parts.

    Per image: decode takes 1/decode, augmentation the rest of 1/decode_augment; the step 1/step."""
    t_decode = 1 / max(decode_rate, 1e-9)
    t_aug = max(1 / max(decode_augment_rate, 1e-9) - t_decode, 0.0)
    t_step = 1 / max(step_rate, 1e-9)
    return max((("decode", t_decode), ("augmentation", t_aug), ("step", t_step)), key=lambda kv: kv[1])[0]


def verdicts(res: dict, gpu: str | None) -> dict:
    """Each goal: met or not (on an H100/H200 only; elsewhere `applies` is False) and the limit."""
    applies = bool(gpu) and any(name in gpu for name in GOAL_GPUS)
    step = res["ce_step"]["img_per_s"]
    j = res["jpeg"]
    e2e = j["loader_end_to_end_img_per_s"]
    out = {
        "applies": applies, "gpu": gpu,
        "ce_step": {"goal": GOALS["ce_step"], "value": step, "met": step >= GOALS["ce_step"], "limit": "step"},
        "ce_end_to_end": {"goal": GOALS["ce_end_to_end"], "value": e2e, "met": e2e >= GOALS["ce_end_to_end"],
                          "limit": limit_of(step, j["loader_decode_img_per_s"], j["loader_decode_augment_img_per_s"])},
        "inpaint_step": {"goal": GOALS["inpaint_step"], "value": res["inpaint_step"]["img_per_s"],
                         "met": res["inpaint_step"]["img_per_s"] >= GOALS["inpaint_step"], "limit": "step"},
    }
    # the paper's 100k steps x 64 images at the end-to-end rate
    out["paper_pretraining_hours"] = round(100_000 * 64 / max(e2e, 1e-9) / 3600, 2)
    return out


def bench_training(out_path, device: str = "auto", quick: bool = False, *, ce_cfg=None, inpaint_cfg=None,
                   n_images: int | None = None, workers: int | None = None, steps: int | None = None) -> dict:
    """Run the three measurements on `device` (auto: CUDA when present); write and return the dict.

    CUDA: batch 64, 30 timed steps, 1024 JPEGs read 4 times, all cores but one as workers (at most 16).
    CPU: batch 8, 2 steps, 32 JPEGs, no workers (a smoke run of the same code); `quick`: fewer still."""
    rt_dev = init_runtime(device, "none").device
    on_gpu = rt_dev.type == "cuda"
    ce_cfg = ce_cfg or paper_pretrain_config()
    inpaint_cfg = inpaint_cfg or paper_inpaint_config()
    if not on_gpu:
        small = 2 if quick else 8
        ce_cfg, inpaint_cfg = replace(ce_cfg, batch_size=min(ce_cfg.batch_size, small)), replace(
            inpaint_cfg, batch_size=min(inpaint_cfg.batch_size, small))
    steps = steps or (30 if on_gpu else (1 if quick else 2))
    n_images = n_images or (1024 if on_gpu else (3 * ce_cfg.batch_size if quick else 32))
    epochs = 4 if on_gpu else 1
    # all cores but one (the training process launches the GPU work): the best this machine's loader does
    workers = workers if workers is not None else (max(1, min(16, (os.cpu_count() or 2) - 1)) if on_gpu else 0)
    dev = str(rt_dev)
    res = {"device": dev, "gpu": torch.cuda.get_device_name(rt_dev) if on_gpu else None, "torch": torch.__version__}
    t0 = time.time()
    res["ce_step"] = step_throughput(ce_cfg, dev, steps)
    with tempfile.TemporaryDirectory(prefix="cebench-jpeg-") as tmp:
        paths = write_jpegs(Path(tmp), n_images)
        res["jpeg"] = jpeg_throughput(ce_cfg, dev, paths, workers, epochs)
    res["inpaint_step"] = step_throughput(inpaint_cfg, dev, steps)
    res["verdict"] = verdicts(res, res["gpu"])
    res["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(Path(out_path), res)
    return res
