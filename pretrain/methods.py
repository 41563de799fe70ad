"""The pretraining methods: `METHODS` maps each `--method` name to its constructor.

A constructor `(cfg, num_classes, silhouettes, device, probe) -> Built` builds the objective (the net
with its loss), the discriminator of adversarial methods, the mask sampler and the architecture dict
saved in the checkpoint. With `probe=True` it returns only what the data loading needs (input size,
labels or not, mask kind) and checks the config, before any image is read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cebench.errors import ConfigError

from .config import PretrainConfig
from .masks import Masker
from .models import ContextEncoder, Discriminator, InpaintingCE, SupervisedNet
from .objectives import InpaintObjective, ReconstructionObjective, SupervisedObjective


@dataclass
class Built:
    """What a method constructor returns."""

    objective: torch.nn.Module
    disc: torch.nn.Module | None
    mask: str
    input_size: int
    arch: dict
    needs_labels: bool = False


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


METHODS = {
    "ce": build_ce,                  # context encoder, L2 (feature learning)
    "ce-adv": build_ce_adv,          # context encoder, L2 + adversarial
    "ae": build_ae,                  # autoencoder baseline: same net, no mask
    "supervised": build_supervised,  # supervised upper bound (labels of the pretrain split)
    "inpaint": build_inpaint,        # inpainting CE (DCGAN-style, centre), L2
    "inpaint-adv": build_inpaint_adv,  # inpainting CE, L2 + adversarial
}

__all__ = ["METHODS", "Built", "build_ce", "build_ce_adv", "build_ae", "build_supervised", "build_inpaint",
           "build_inpaint_adv"]
