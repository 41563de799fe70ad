"""`cebench pretrain`: one training loop for every method (ce, ce-adv, ae, supervised, inpaint, inpaint-adv).

`main(cfg, data_cfg, out_dir)` only wires: data, model (from a constructor of `methods.METHODS`), optimisers,
resume, the step loop (`engine.train_one_epoch`), checkpoints, metrics and sample grids. Outputs:
  out/config.yaml, out/metrics.jsonl, out/checkpoints/last.pt (resume; removed once out/checkpoint.pt, the
  final checkpoint, is written),
  out/samples/step_XXXXXX.png.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import torch
from torchvision.utils import save_image

from cebench.cache import cache_key
from cebench.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from cebench.config import config_to_dict, save_config
from cebench.data.folders import has_split, read_image_folder
from cebench.data.loader import make_loader
from cebench.data.sources import DataConfig, pretrain_folder, record_sources, voc_root
from cebench.errors import CheckpointError, ConfigError
from cebench.io import atomic_target
from cebench.logs import JsonlLogger, get_logger, progress
from cebench.runtime import (
    barrier,
    choose_device,
    cleanup,
    init_runtime,
    resolve_amp,
    seed_everything,
    set_cpu_threads,
    to_channels_last,
    unwrap_model,
    wrap_ddp,
)

from .config import PretrainConfig
from .data import (
    COLOURS,
    PretrainImages,
    step_batches,
    voc_split_paths,
)
from .engine import TrainState, evaluate, make_adam, train_one_epoch
from .masks import voc_silhouettes
from .methods import METHODS, Built, method_config

log = get_logger("cebench.pretrain")

# keys that may differ between an interrupted run and its resumption
_RESUME_FREE = ("max_minutes", "workers", "threads", "stop_after", "log", "log_every", "sample_every", "ckpt_every")


def resume_key(config: dict) -> str:
    """The cache key a `last` checkpoint's config must share with this run's config to be resumed: every
    setting but those an interrupted run may change."""
    return cache_key({k: v for k, v in config.items() if k not in _RESUME_FREE})


class Interrupted(Exception):
    """Raised by `stop_after` (tests) to leave like a killed run: no final checkpoint."""


def _num_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def _iter_epochs(ds, cfg, rt, state, steps_per_epoch, total):
    """(epoch, loader) from the resume point on; the first loader skips the batches already done."""
    while state.step < total:
        epoch = state.step // steps_per_epoch
        state.epoch = epoch
        ds.set_epoch(epoch)
        batches = step_batches(len(ds), cfg.batch_size, cfg.seed, epoch, rt.rank, rt.world_size)
        offset = state.step - epoch * steps_per_epoch
        yield epoch, make_loader(ds, batches[offset:], cfg.workers, pin=rt.device.type == "cuda")


def _dataset(cfg: PretrainConfig, data_cfg: DataConfig, data_override, input_size: int, needs_labels: bool):
    """(train images, held-out images or None, the VOC root read or None, number of classes).

    Images come from data.pretrain_images (any layout of `cebench.data.folders`) or the VOC pretrain split.
    A method that needs labels takes them from the folder where its layout has them (one class per image:
    Tiny ImageNet, one folder per class), else from the VOC split's annotations. The held-out images are
    the folder's val split where it has one (Tiny ImageNet), else the VOC val split."""
    crop = cfg.crop_size or input_size
    if crop != input_size:
        raise ConfigError(f"crop_size {crop} must equal the network input size {input_size}")
    folder = pretrain_folder(data_cfg)  # data.pretrain_images (or the demo's folder)
    split = read_image_folder(folder, "train") if folder is not None else None
    if split is not None and (split.labels is not None or not needs_labels):
        paths, labels, classes, root = split.paths, split.labels if needs_labels else None, split.classes, None
    else:  # no folder, or a plain folder for a method that needs labels: the VOC pretrain split
        root = voc_root(data_cfg, data_override)
        paths, labels, classes = voc_split_paths(root, data_cfg.pretrain_split, with_labels=needs_labels,
                                                 classes=data_cfg.classes or None)
    ds = PretrainImages(paths, crop, cfg.load_size, cfg.flip, labels, cfg.seed, cache=cfg.cache_images,
                        colour=cfg.colour)
    val = None
    if cfg.eval_images and root is None and has_split(folder, "val"):
        held = read_image_folder(folder, "val")
        n = min(cfg.eval_images, len(held.paths))
        val = PretrainImages(held.paths[:n], crop, cfg.load_size, False, held.labels[:n] if needs_labels else None,
                             cache=cfg.cache_images, random=False, colour=cfg.colour)
    elif cfg.eval_images and root is not None:
        try:
            vpaths, vlabels, _ = voc_split_paths(root, data_cfg.val_split, with_labels=needs_labels,
                                                 classes=data_cfg.classes or None)
            n = min(cfg.eval_images, len(vpaths))
            val = PretrainImages(vpaths[:n], crop, cfg.load_size, False, None if vlabels is None else vlabels[:n],
                                 cache=cfg.cache_images, random=False, colour=cfg.colour)
        except Exception as exc:  # noqa: BLE001 - monitoring only
            log.warning("no held-out evaluation: %s", exc)
    return ds, val, root, len(classes)


def _save_samples(path: Path, x, out, mask, n: int = 8) -> None:
    x = x[:n].float().cpu()
    shown = x if mask is None else x * (1 - mask[:n].cpu()) + 0.5 * mask[:n].cpu()
    grid = torch.cat([shown, out["pred"][:n].float().cpu(), x])
    with atomic_target(path) as tmp:
        save_image(grid, tmp, nrow=min(n, x.shape[0]), format="png")


def main(cfg: PretrainConfig, data_cfg: DataConfig | None = None, out_dir=".", device: str = "auto",
         data_override: str | None = None) -> Path:
    """Train `cfg.method`; returns the final checkpoint path (immediately if it already exists)."""
    if cfg.method not in METHODS:
        raise ConfigError(f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    cfg = method_config(cfg)  # a pretext method's own batch, steps, colour, load size, lr (pretrain.<method>)
    if cfg.lr_schedule not in SCHEDULES:
        raise ConfigError(f"lr_schedule must be one of {', '.join(SCHEDULES)}, got {cfg.lr_schedule!r}")
    if cfg.colour not in COLOURS:
        raise ConfigError(f"colour must be one of {', '.join(COLOURS)}, got {cfg.colour!r}")
    data_cfg = data_cfg or DataConfig()
    out = Path(out_dir)
    final = out / "checkpoint.pt"
    if final.is_file():
        log.info("%s exists: %s already trained", final, cfg.method)
        return final
    # the precision, resolved once (`cebench run` hands it resolved): the saved config and checkpoints name it
    cfg = replace(cfg, amp=resolve_amp(cfg.amp, choose_device(device)))
    rt = init_runtime(device, cfg.amp)
    set_cpu_threads(cfg.threads)
    seed_everything(cfg.seed, rt.rank)
    try:
        built_probe = METHODS[cfg.method](cfg, num_classes=1, silhouettes=None, device=rt.device, probe=True)
        ds, val, root, n_cls = _dataset(cfg, data_cfg, data_override, built_probe.input_size, built_probe.needs_labels)
        sil, sil_root = None, None
        if built_probe.mask == "region":  # object shapes from the segmentation tree (VOC2012 in the paper)
            sil_root = voc_root(data_cfg, data_override, segmentation=True)
            sil = voc_silhouettes(sil_root, cfg.region_split)
        if rt.is_main:
            record_sources(out, data_cfg, images=str(pretrain_folder(data_cfg)) if root is None else
                           f"{root} split {data_cfg.pretrain_split}", n_images=len(ds),
                           input_size=built_probe.input_size, region_masks=None if sil_root is None else
                           f"{sil_root} split {cfg.region_split}")
        torch.manual_seed(cfg.seed)
        built = METHODS[cfg.method](cfg, num_classes=max(n_cls, 1), silhouettes=sil, device=rt.device)
        return _train(cfg, data_cfg, built, ds, val, out, rt)
    finally:
        cleanup(rt)


def nets_and_optimizers(cfg: PretrainConfig, built: Built, rt) -> tuple:
    """The method's nets on the runtime's device and memory format, and their optimisers:
    (objective, disc or None, opt_g, opt_d or None). The trainer and `cebench bench pretrain|training`
    build with this, so a benchmark times the optimiser that trains (fused Adam, `engine.make_adam`)."""
    obj = to_channels_last(built.objective.to(rt.device), rt)
    disc = to_channels_last(built.disc.to(rt.device), rt) if built.disc is not None else None
    opt_g = (built.optimizer(obj.parameters(), cfg.lr) if built.optimizer is not None
             else make_adam(obj.parameters(), cfg.lr, cfg.beta1, cfg.weight_decay))
    opt_d = make_adam(disc.parameters(), cfg.lr * cfg.lr_d_factor, cfg.beta1) if disc is not None else None
    return obj, disc, opt_g, opt_d


def _train(cfg, data_cfg, built: Built, ds, val, out: Path, rt) -> Path:
    obj, disc, opt_g, opt_d = nets_and_optimizers(cfg, built, rt)
    if built.prepare is not None:  # data statistics the objective needs (colorization: the ab prior)
        built.prepare(ds)
    masker = built.mask  # a Masker (constructors replace the kind name by the sampler)
    steps_per_epoch = len(ds) // (cfg.batch_size * rt.world_size)
    if steps_per_epoch < 1:
        raise ConfigError(f"{len(ds)} images are fewer than one batch of {cfg.batch_size * rt.world_size}")
    total = cfg.steps if cfg.steps > 0 else cfg.epochs * steps_per_epoch
    if total < 1:
        raise ConfigError("set steps > 0 or epochs > 0")
    state = TrainState(total_steps=total)
    cfg_dict = config_to_dict(cfg)
    last = out / "checkpoints" / "last.pt"
    if last.is_file():
        ck = load_checkpoint(last)
        old = ck.get("config") or {}
        if resume_key(old) != resume_key(cfg_dict):
            diff = sorted(k for k in (set(old) | set(cfg_dict)) - set(_RESUME_FREE) if old.get(k) != cfg_dict.get(k))
            raise CheckpointError(f"{last}: was written with a different config ({', '.join(diff)}); "
                                  "use another --out or delete it")
        load_state_strict(obj.net, ck["model"], last)
        opt_g.load_state_dict(ck["optimizer"])
        if disc is not None:
            load_state_strict(disc, ck["disc"], last)
            opt_d.load_state_dict(ck["optimizer_d"])
        state.step = int(ck["step"])
        log.info("resumed %s from %s at step %d", cfg.method, last, state.step)
    if rt.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out)
        log.info("%s: %d parameters, %d images, %d steps (%d per epoch) on %s", cfg.method, _num_params(obj),
                 len(ds), total, steps_per_epoch, rt.device)
    obj_ddp = wrap_ddp(obj, rt)
    disc_ddp = wrap_ddp(disc, rt) if disc is not None else None
    logger = JsonlLogger(out / "metrics.jsonl", enabled=rt.is_main,
                         tensorboard_dir=out / "tensorboard" if cfg.log.tensorboard else None)
    val_loader = make_loader(val, [list(range(i, min(i + cfg.batch_size, len(val))))
                                   for i in range(0, len(val), cfg.batch_size)]) if val is not None else None
    t0, bar = time.time(), progress(total=total, desc=f"pretrain {cfg.method}", initial=state.step)
    stop_at = total if not cfg.stop_after else min(total, cfg.stop_after)

    def snapshot(step: int) -> dict:
        return {"model": unwrap_model(obj).net.state_dict(), "optimizer": opt_g.state_dict(),
                "disc": disc.state_dict() if disc is not None else None,
                "optimizer_d": opt_d.state_dict() if opt_d is not None else None, "scaler": None,
                "step": step, "epoch": step // steps_per_epoch, "config": cfg_dict, "arch": built.arch}

    def on_step(st, losses, outs, x, mask):
        bar.update(1)
        if st.step % cfg.log.every == 0 or st.step == stop_at:
            rate = (st.step - start_step) * cfg.batch_size * rt.world_size / max(time.time() - t0, 1e-9)
            logger.log(step=st.step, epoch=st.epoch, **{k: float(v.detach()) for k, v in losses.items()},
                       img_per_s=round(rate, 1), minutes=round((time.time() - t0) / 60, 3))
            bar.set_postfix(loss=f"{float(losses['loss'].detach()):.4f}")
        if rt.is_main and cfg.sample_every and (st.step % cfg.sample_every == 0 or st.step == total):
            _save_samples(out / "samples" / f"step_{st.step:06d}.png", x, outs, mask)
        if st.step % cfg.ckpt_every == 0 and st.step < total:
            if rt.is_main:
                save_checkpoint(last, snapshot(st.step))
            barrier(rt)

    start_step = state.step
    for epoch, loader in _iter_epochs(ds, cfg, rt, state, steps_per_epoch, stop_at):
        means = train_one_epoch(obj_ddp, disc_ddp, opt_g, opt_d, loader, masker, state, rt, seed=cfg.seed,
                                method=cfg.method, w_rec=cfg.w_rec, w_adv=cfg.w_adv, on_step=on_step,
                                stop_at=stop_at, lr_scale=(built.lr_scale and built.lr_scale(total))
                                or lr_scale(cfg.lr_schedule, total))
        if val_loader is not None and (state.step % steps_per_epoch == 0 or state.step >= total):
            means.update(evaluate(unwrap_model(obj), val_loader, masker, rt, seed=cfg.seed))
        logger.log(epoch=epoch, step=state.step, **{f"epoch_{k}": v for k, v in means.items()})
        if cfg.max_minutes and (time.time() - t0) / 60 > cfg.max_minutes and state.step < stop_at:
            log.warning("%s: wall-clock budget of %.1f min reached at step %d of %d; saving what was learned",
                        cfg.method, cfg.max_minutes, state.step, total)
            break
    bar.close()
    logger.close()
    if cfg.stop_after and state.step < total:
        if rt.is_main:
            save_checkpoint(last, snapshot(state.step))
        raise Interrupted(f"stopped after {state.step} steps (stop_after)")
    final = out / "checkpoint.pt"
    if rt.is_main:
        save_checkpoint(final, snapshot(state.step))
        # the final checkpoint supersedes the resume point (a rerun returns at once): not a second copy,
        # which for the paper's 71M-parameter inpainting net with its Adam state is another 850 MB
        last.unlink(missing_ok=True)
    barrier(rt)
    return final


SCHEDULES = ("constant", "cosine")


def lr_scale(schedule: str, total: int):
    """step -> factor on the base lr (None for constant). A pure function of the step, so a resumed run
    sets the same rates as an uninterrupted one without any scheduler state."""
    if schedule == "constant":
        return None
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))
