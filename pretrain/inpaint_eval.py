"""`cebench inpaint-eval`: the paper's Table 1 protocol on held-out images, and a Fig. 6 style grid.

Methods: CE (L2) and CE (L2+adv) (the inpainting context encoders), nearest-neighbour inpainting with
HOG features and with raw pixels over the training set (FAISS, exact L2), OpenCV Telea, mean-colour fill.
The protocol (written to protocol.txt and printed) is `PROTOCOL` below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cebench.config import save_config
from cebench.data.folders import has_split, read_image_folder
from cebench.data.sources import DataConfig, pretrain_folder, record_sources, voc_root
from cebench.errors import CebenchError, ConfigError
from cebench.features.hog import hog
from cebench.features.index import FeatureIndex
from cebench.io import atomic_save_figure, atomic_write_csv, atomic_write_text
from cebench.logs import get_logger
from cebench.runtime import choose_device, resolve_amp, set_cpu_threads

from . import train
from .config import PretrainConfig
from .data import PretrainImages, folder_paths, voc_split_paths
from .inpaint import load_inpainter
from .masks import center_box

log = get_logger("cebench.pretrain.inpaint_eval")

PROTOCOL = """Inpainting evaluation protocol (cebench, after Pathak et al. 2016, Table 1)
- images: each held-out image resized so its short side is {size} px (bicubic) and centre-cropped to {size}x{size}
- hole: the central square of {side}x{side} px (1/4 of the area), the same for every image and method
- value range: RGB in [0, 1]; every fill is quantised to 8 bits (round(x*255)/255) before scoring
- pixels scored: only the {side}x{side} hole, all 3 channels; the context is the original image
- mean L1 % = 100 * mean over images of (mean |fill - truth| over the hole)
- mean L2 % = 100 * mean over images of (mean (fill - truth)^2 over the hole)
- PSNR dB = mean over images of 10*log10(1 / MSE_image) (per-image PSNR, then averaged);
  psnr_pooled_db = 10*log10(1 / mean MSE) is given as well
- NN baselines: the nearest training image (exact L2, FAISS flat) by HOG (9 orientations, 8x8 cells,
  2x2 blocks) or raw pixels of the image with its hole set to 0.5 grey; its hole is pasted
- sharpness = mean |horizontal + vertical pixel difference| inside the hole of the fills / of the truth
  (1 = as much edge energy as the real content, blurred fills score below 1)
- Telea: cv2.inpaint(INPAINT_TELEA, radius 5) on the 8-bit image; mean fill: the training set's mean colour
- held-out images: {n} from {source}; training set for NN/mean: {n_train} images
"""


@dataclass
class InpaintTrainConfig(PretrainConfig):
    """How the two inpainting nets are trained (when no checkpoint is given): the pretraining config with
    the inpainting defaults. `method` is set per net (inpaint for CE (L2), inpaint-adv for CE (L2+adv),
    whose joint loss is w_rec * L2 + w_adv * adversarial); the net is `inpaint_net`."""

    method: str = "inpaint"
    mask: str = "center"
    steps: int = 1500
    eval_images: int = 0               # no held-out loss curve


HELDOUT = ("test", "pretrain-val")  # the `heldout` options


@dataclass
class InpaintEvalConfig:
    train: InpaintTrainConfig = field(default_factory=InpaintTrainConfig)
    heldout: str = "test"         # held-out images: "test" (the VOC test split of data.root) or "pretrain-val"
    #                               (the val split of data.pretrain_images: Tiny ImageNet's val photos)
    n_test: int = 0               # held-out images scored (0 = all)
    nn_max_images: int = 0        # training images searched by the NN baselines (0 = all; else evenly spaced)
    figure_rows: int = 6
    telea_radius: int = 5


def _load_images(paths, size: int) -> torch.Tensor:
    ds = PretrainImages(paths, size, size, flip=False, random=False)
    return torch.stack([ds[i][0] for i in range(len(ds))]).float() / 255  # [N,3,S,S] in [0,1]


def _quant(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x.clamp(0, 1) * 255) / 255


def score(fill: torch.Tensor, truth: torch.Tensor, lo: int, side: int) -> dict:
    """Table 1 metrics over the hole (see PROTOCOL)."""
    f = _quant(fill[:, :, lo:lo + side, lo:lo + side]).double()
    t = truth[:, :, lo:lo + side, lo:lo + side].double()
    l1 = (f - t).abs().mean(dim=(1, 2, 3))
    l2 = ((f - t) ** 2).mean(dim=(1, 2, 3))
    psnr = 10 * torch.log10(1.0 / l2.clamp_min(1e-10))
    return {"l1_pct": 100 * l1.mean().item(), "l2_pct": 100 * l2.mean().item(), "psnr_db": psnr.mean().item(),
            "psnr_pooled_db": 10 * math.log10(1.0 / max(l2.mean().item(), 1e-10)), "n_images": int(f.shape[0]),
            "sharpness": sharpness(f, t)}


def sharpness(fill: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean |finite-difference gradient| of the fills over that of the truth, both [N,3,s,s] (hole only).

    1 means as much edge energy as the real content; an L2-blurred fill scores well below 1, which
    makes "sharper" in Fig. 6 a number. Noise could push it above 1, so it is read beside L1/L2/PSNR.
    """
    def grad(x):
        return (x[..., 1:, :-1] - x[..., :-1, :-1]).abs() + (x[..., :-1, 1:] - x[..., :-1, :-1]).abs()

    return float(grad(fill).mean() / grad(truth).mean().clamp_min(1e-12))


def _holed(x: torch.Tensor, lo: int, side: int) -> torch.Tensor:
    y = x.clone()
    y[:, :, lo:lo + side, lo:lo + side] = 0.5
    return y


def nn_fill(test, train, lo, side, features) -> torch.Tensor:
    db = features(_holed(train, lo, side))
    q = features(_holed(test, lo, side))
    index = FeatureIndex(db.shape[1], kind="flat", metric="l2", use_gpu=False).add(db.numpy())
    _, ids = index.search(q.numpy(), 1)
    out = test.clone()
    out[:, :, lo:lo + side, lo:lo + side] = train[torch.from_numpy(ids[:, 0])][:, :, lo:lo + side, lo:lo + side]
    return out


def hog_features(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([hog(x[i:i + 256], orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2))
                      for i in range(0, x.shape[0], 256)]).float()


def pixel_features(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).float()


def telea_fill(test, lo, side, radius: int = 5) -> torch.Tensor:
    import cv2

    mask = np.zeros(test.shape[-2:], np.uint8)
    mask[lo:lo + side, lo:lo + side] = 255
    imgs = (test.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    out = np.stack([cv2.inpaint(np.ascontiguousarray(im), mask, radius, cv2.INPAINT_TELEA) for im in imgs])
    return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255


def mean_fill(test, train, lo, side) -> torch.Tensor:
    out = test.clone()
    out[:, :, lo:lo + side, lo:lo + side] = train.mean(dim=(0, 2, 3)).view(1, 3, 1, 1)
    return out


@torch.no_grad()
def ce_fill(ckpt_path, test, lo, side, device="cpu", batch: int = 128) -> torch.Tensor:
    obj = load_inpainter(ckpt_path, device)
    if obj.net.cfg.input_size != test.shape[-1]:
        raise CebenchError(f"{ckpt_path}: net input {obj.net.cfg.input_size} px, eval images {test.shape[-1]} px")
    out = test.clone()
    for i in range(0, test.shape[0], batch):
        pred = obj.predict(test[i:i + batch].to(device)).float().cpu()
        out[i:i + batch, :, lo:lo + side, lo:lo + side] = pred
    return out


def _train_net(cfg: InpaintEvalConfig, data_cfg, out: Path, method: str, device, data_override) -> Path:
    return train.main(replace(cfg.train, method=method), data_cfg, out / f"train-{method}", device=device,
                      data_override=data_override)


def figure(path: Path, columns: dict, lo: int, side: int, rows: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(columns)
    rows = min(rows, next(iter(columns.values())).shape[0])
    fig, axes = plt.subplots(rows, len(names), figsize=(1.6 * len(names), 1.6 * rows), squeeze=False)
    for c, name in enumerate(names):
        for r in range(rows):
            ax = axes[r][c]
            ax.imshow(columns[name][r].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110, colors=256)  # a grid of photographs: a palette PNG
    plt.close(fig)


def main(cfg: InpaintEvalConfig, data_cfg: DataConfig | None = None, out_dir=".", device: str = "auto",
         data_override=None, images=None, ce=None, ce_adv=None):
    data_cfg = data_cfg or DataConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_cpu_threads(cfg.train.threads)
    dev = choose_device(device)
    # precision chosen once for both nets (amp=auto on CPU: the start-up probe) and saved as chosen
    cfg = replace(cfg, train=replace(cfg.train, amp=resolve_amp(cfg.train.amp, dev)))
    save_config(cfg, out)
    size = cfg.train.inpaint_net.input_size
    lo, side = center_box(size, 0.5)
    # held-out and training images
    root = None
    if cfg.heldout not in HELDOUT:
        raise ConfigError(f"inpaint.heldout must be one of {', '.join(HELDOUT)}, got {cfg.heldout!r}")
    folder = pretrain_folder(data_cfg)
    # source: the protocol's wording; heldout: what data.yaml records
    if images:
        test_paths, source = folder_paths(images), str(images)
        heldout = source
    elif cfg.heldout == "pretrain-val":
        if folder is None or not has_split(folder, "val"):
            raise ConfigError("inpaint.heldout=pretrain-val needs data.pretrain_images with a val split "
                              f"(the Tiny ImageNet layout); got {folder or 'no image folder'}")
        test_paths, source = read_image_folder(folder, "val").paths, f"the val split of {folder}"
        heldout = source
    else:
        root = voc_root(data_cfg, data_override)
        test_paths, _, _ = voc_split_paths(root, data_cfg.test_split)
        source, heldout = f"the {data_cfg.test_split} split of {root.name}", f"{root} split {data_cfg.test_split}"
    if cfg.n_test:
        test_paths = test_paths[: cfg.n_test]
    if folder is not None:
        train_paths = folder_paths(folder)
    else:
        root = root or voc_root(data_cfg, data_override)
        train_paths, _, _ = voc_split_paths(root, data_cfg.pretrain_split)
    if cfg.nn_max_images and len(train_paths) > cfg.nn_max_images:
        # evenly spaced, not the first N: a class-ordered folder (Tiny ImageNet) would give a few classes only
        pick = np.linspace(0, len(train_paths) - 1, cfg.nn_max_images).round().astype(int)
        train_paths = [train_paths[i] for i in pick]
    record_sources(out, data_cfg, heldout=heldout,
                   train_images=str(folder) if folder is not None else f"{root} split {data_cfg.pretrain_split}",
                   input_size=size, n_heldout=len(test_paths), n_train=len(train_paths))
    # the CE nets (trained here if not given)
    ce = ce or _train_net(cfg, data_cfg, out, "inpaint", dev, data_override)
    ce_adv = ce_adv or _train_net(cfg, data_cfg, out, "inpaint-adv", dev, data_override)
    test = _load_images(test_paths, size)
    train_imgs = _load_images(train_paths, size)
    fills = {
        "CE (L2)": ce_fill(ce, test, lo, side, dev),
        "CE (L2+adv)": ce_fill(ce_adv, test, lo, side, dev),
        "NN (HOG)": nn_fill(test, train_imgs, lo, side, hog_features),
        "NN (pixels)": nn_fill(test, train_imgs, lo, side, pixel_features),
        "Telea (OpenCV)": telea_fill(test, lo, side, cfg.telea_radius),
        "mean colour": mean_fill(test, train_imgs, lo, side),
    }
    rows = [{"method": name, **score(f, test, lo, side)} for name, f in fills.items()]
    table = pd.DataFrame(rows, columns=["method", "l1_pct", "l2_pct", "psnr_db", "n_images", "psnr_pooled_db",
                                        "sharpness"])
    atomic_write_csv(out / "table1.csv", table, float_format="%.4f")
    protocol = PROTOCOL.format(size=size, side=side, n=len(test), source=source, n_train=len(train_imgs))
    atomic_write_text(out / "protocol.txt", protocol + f"- CE checkpoints: {ce} ; {ce_adv}\n")
    masked = _holed(test, lo, side)
    figure(out / "fig_inpainting.png", {"input": masked, **{k: _quant(v) for k, v in fills.items()},
                                        "ground truth": test}, lo, side, cfg.figure_rows)
    print(protocol)
    return table
