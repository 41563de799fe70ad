"""The pretraining methods: `METHODS` maps each `--method` name to its constructor.

A constructor `(cfg, num_classes, silhouettes, device, probe) -> Built` builds the objective (the net
with its loss), the discriminator of adversarial methods, the mask sampler and the architecture dict
saved in the checkpoint. With `probe=True` it returns only what the data loading needs (input size,
labels or not, mask kind) and checks the config, before any image is read.

The self-supervised pretext methods (context prediction, rotation, jigsaw, colorization) are one module
each (see docs/methods.md); `pretext(module, section)` makes a constructor of one, reading its settings
from `pretrain.<section>`, and `method_config` applies the pretrain keys a method's section replaces.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from cebench.config import config_to_dict
from cebench.errors import ConfigError

from . import colorization, context_prediction, jigsaw, rotation
from .config import PretrainConfig
from .masks import Masker
from .models import ContextEncoder, Discriminator, InpaintingCE, SupervisedNet
from .objectives import InpaintObjective, ReconstructionObjective, SupervisedObjective
from .pretext import lr_steps, make_optimizer, schedule_overrides


@dataclass
class Built:
    """What a method constructor returns. The last three are for methods that train otherwise than the
    context encoder (None: the trainer's Adam on pretrain.lr, its lr_schedule, no data statistics)."""

    objective: torch.nn.Module
    disc: torch.nn.Module | None
    mask: str
    input_size: int
    arch: dict
    needs_labels: bool = False
    optimizer: Callable | None = None   # (params, lr) -> torch optimizer
    lr_scale: Callable | None = None    # total steps -> (step -> lr factor) or None
    prepare: Callable | None = None     # called once with the training images before the first step


def _alexnet_arch(cfg: PretrainConfig, name: str) -> dict:
    return {"name": name, "encoder": cfg.encoder.to_dict(), "dropout": cfg.dropout,
            "decoder_widths": list(cfg.decoder_widths), "decoder_layers": cfg.decoder_layers}


def build_ce(cfg: PretrainConfig, num_classes=1, silhouettes=None, device="cpu", probe=False, adversarial=False,
             autoencoder=False) -> Built:
    mask = "none" if autoencoder else cfg.mask
    try:  # before the probe returns, so a bad value stops the run before any data is read
        ReconstructionObjective.check_target_patch(cfg.target_patch, cfg.encoder.input_size)
    except ValueError as exc:
        raise ConfigError(f"pretrain.{exc}") from None
    if probe:
        return Built(torch.nn.Identity(), None, mask, cfg.encoder.input_size, {})
    net = ContextEncoder(cfg.encoder, dropout=cfg.dropout, decoder_widths=cfg.decoder_widths,
                         decoder_layers=cfg.decoder_layers)
    obj = ReconstructionObjective(net, cfg.loss_region if not autoencoder else "all", cfg.overlap, cfg.overlap_weight,
                                  target_patch=cfg.target_patch)
    # the discriminator of the inpainting net (inpaint_net.disc_widths); it resizes the image to its size
    disc = Discriminator(widths=cfg.inpaint_net.disc_widths) if adversarial else None
    name = "ae" if autoencoder else ("ce-adv" if adversarial else "ce")
    built = Built(obj, disc, mask, cfg.encoder.input_size, _alexnet_arch(cfg, name))
    built.mask = Masker(mask, cfg.encoder.input_size, device, seed=cfg.seed, silhouettes=silhouettes,
                        mask_file=cfg.mask_file)
    return built


def build_ce_adv(cfg, **kw) -> Built:
    return build_ce(cfg, adversarial=True, **kw)


def build_ae(cfg, **kw) -> Built:
    return build_ce(cfg, autoencoder=True, **kw)


def build_supervised(cfg, num_classes=1, silhouettes=None, device="cpu", probe=False) -> Built:
    if probe:
        return Built(torch.nn.Identity(), None, "none", cfg.encoder.input_size, {}, needs_labels=True)
    net = SupervisedNet(cfg.encoder, num_classes=num_classes, dropout=cfg.dropout)
    arch = {**_alexnet_arch(cfg, "supervised"), "num_classes": num_classes}
    b = Built(SupervisedObjective(net), None, "none", cfg.encoder.input_size, arch, needs_labels=True)
    b.mask = Masker("none", cfg.encoder.input_size, device)
    return b


def build_inpaint(cfg, num_classes=1, silhouettes=None, device="cpu", probe=False, adversarial=False) -> Built:
    size = cfg.inpaint_net.input_size
    if probe:
        return Built(torch.nn.Identity(), None, "center", size, {})
    net = InpaintingCE(cfg.inpaint_net)
    disc = Discriminator(widths=cfg.inpaint_net.disc_widths) if adversarial else None
    arch = {"name": "inpaint-adv" if adversarial else "inpaint", "inpaint_net": cfg.inpaint_net.to_dict(),
            "overlap": cfg.overlap, "overlap_weight": cfg.overlap_weight}
    b = Built(InpaintObjective(net, cfg.overlap, cfg.overlap_weight), disc, "center", size, arch)
    b.mask = Masker("center", size, device)
    return b


def build_inpaint_adv(cfg, **kw) -> Built:
    return build_inpaint(cfg, adversarial=True, **kw)


def pretext(module) -> Callable:
    """The constructor of a pretext method module (rotation, jigsaw, ...; docs/methods.md says what one
    provides), reading its settings from `pretrain.<module.SECTION>` (the module's defaults while
    PretrainConfig has no such section)."""
    section = module.SECTION
    name = section.replace("_", "-")

    def build(cfg: PretrainConfig, num_classes=1, silhouettes=None, device="cpu", probe=False) -> Built:
        settings = getattr(cfg, section, None) or module.CONFIG()
        try:  # before the probe returns: a bad value stops the run before any data is read
            module.check(cfg.encoder, settings, f"pretrain.{section}")
            size = module.input_size(cfg.encoder, settings)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if probe:
            return Built(torch.nn.Identity(), None, "none", size, {})
        try:
            obj = module.build(cfg.encoder, settings, seed=cfg.seed)
        except ValueError as exc:  # e.g. an input too small for the encoder
            raise ConfigError(f"pretrain.{section}: {exc}") from None
        arch = {"name": name, "encoder": cfg.encoder.to_dict(), section: config_to_dict(settings),
                **obj.arch_extra()}
        b = Built(obj, None, "none", size, arch, optimizer=make_optimizer(settings),
                  lr_scale=lambda total: lr_steps(settings, total), prepare=getattr(obj, "prepare", None))
        b.mask = Masker("none", size, device)
        return b
    build.section = section
    return build


METHODS = {
    "ce": build_ce,                  # context encoder, L2 (feature learning)
    "ce-adv": build_ce_adv,          # context encoder, L2 + adversarial
    "ae": build_ae,                  # autoencoder baseline: same net, no mask
    "supervised": build_supervised,  # supervised upper bound (labels of the pretrain split)
    "inpaint": build_inpaint,        # inpainting CE (DCGAN-style, centre), L2
    "inpaint-adv": build_inpaint_adv,  # inpainting CE, L2 + adversarial
    "context-prediction": pretext(context_prediction),  # Doersch, Gupta and Efros 2015
    "jigsaw": pretext(jigsaw),                          # Noroozi and Favaro 2016
    "colorization": pretext(colorization),              # Zhang, Isola and Efros 2016
    "rotation": pretext(rotation),                      # Gidaris, Singh and Komodakis 2018
}
# pretrain sections owned by one method each (the pretext methods' settings)
METHOD_SECTIONS = {name: build.section for name, build in METHODS.items() if hasattr(build, "section")}


def method_config(cfg: PretrainConfig) -> PretrainConfig:
    """`cfg` with the pretrain keys that `cfg.method`'s own section replaces (its batch, steps, colour,
    load size and optimiser, where set; see `pretext.PretextSchedule`): what the trainer runs and saves."""
    section = METHOD_SECTIONS.get(cfg.method)
    if section is None or not hasattr(cfg, section):
        return cfg
    return replace(cfg, **schedule_overrides(getattr(cfg, section)))


def reads_silhouettes(cfg: PretrainConfig) -> bool:
    """Whether pretraining `cfg.method` samples the paper's random regions: object shapes from a segmentation
    tree (VOC2012 in the paper), which it then reads besides its images."""
    return METHODS[cfg.method](method_config(cfg), probe=True).mask == "region"


def cache_view(pretrain: dict, method: str) -> dict:
    """The pretrain section (a config dict) as a pretraining job of `method` depends on it: without the
    sections other methods own, so changing the jigsaw settings does not rerun the context encoder (whose
    view is the section as it was before these methods existed)."""
    own = METHOD_SECTIONS.get(method)
    return {k: v for k, v in pretrain.items() if k not in METHOD_SECTIONS.values() or k == own}


__all__ = ["METHODS", "METHOD_SECTIONS", "Built", "build_ce", "build_ce_adv", "build_ae", "build_supervised",
           "build_inpaint", "build_inpaint_adv", "pretext", "method_config", "reads_silhouettes", "cache_view"]
