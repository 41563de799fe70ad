"""Initialisations of one AlexNet encoder for transfer, and the data-dependent ("magic") init.

Rows of the transfer tables: `random` (Gaussian, then optionally the data-dependent rescaling of
Krähenbühl et al. 2015), `context encoder`, `autoencoder`, `context prediction`, `jigsaw`, `colorization`,
`rotation` (the pretext methods of cebench.pretrain; a colorization checkpoint loads as a Lab-input encoder,
see `cebench.pretrain.loading.load_encoder`), `supervised` (the demo-label upper bound),
`imagenet` (torchvision's AlexNet weights from the local torch cache, else `InitUnavailable`), and
`custom` (any checkpoint whose encoder is AlexNet-compatible, shown under the name it was given).
Loading is strict: `cebench.pretrain.loading.load_encoder` lists missing / unexpected keys.

`INITS` is the one mapping name -> constructor; aliases (`ce`, `ae`) map to canonical names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from cebench.checkpoint import load_checkpoint
from cebench.errors import CebenchError, CheckpointError, ConfigError
from cebench.pretrain.loading import encoder_from_checkpoint, imagenet_alexnet_encoder
from cebench.pretrain.models import AlexNetConfig, AlexNetEncoder, build_encoder


class InitUnavailable(CebenchError):
    """An initialisation whose weights are not on this machine (reported as unavailable, not an error)."""


# The one table of init names: canonical name -> (the label the report's tables give the row, other names
# it answers to). The paper's row order. A pretraining method's row is `canonical_name(method)` (ce ->
# context encoder); any other name is a custom row shown as given.
INIT_NAMES: dict[str, tuple[str, tuple[str, ...]]] = {
    "random": ("random", ("rand", "gaussian")),
    "autoencoder": ("autoencoder", ("ae", "auto-encoder")),
    # the other self-supervised learners of the paper's Table 2 and of Gidaris et al.'s Table 7 (pretrain methods
    # context-prediction, jigsaw, colorization, rotation), in the order they were published
    "context prediction": ("context prediction", ("context-prediction", "context_prediction", "doersch")),
    "jigsaw": ("jigsaw", ("noroozi", "jigsaw puzzles")),
    "colorization": ("colorization", ("colourization", "zhang")),
    "rotation": ("rotation", ("rotnet", "gidaris")),
    "context encoder": ("context encoder", ("ce", "context_encoder", "context-encoder")),
    "supervised": ("supervised (demo labels)", ("sup", "supervised (demo labels)")),
    # the supervised row trained on the pretraining photos' ImageNet classes (Tiny ImageNet, the real-photo
    # track): the paper's "ImageNet" row at this scale (run.supervised_row picks it)
    "supervised-imagenet": ("supervised (ImageNet labels)", ("supervised (imagenet labels)",)),
    "imagenet": ("imagenet", ("imagenet-supervised",)),
}
ALIASES = {alias: name for name, (_, aliases) in INIT_NAMES.items() for alias in aliases}
INIT_ORDER = [label for label, _ in INIT_NAMES.values()]  # table labels in the paper's row order

ARCH_PRESETS = {"demo": AlexNetConfig.demo, "paper": AlexNetConfig.paper, "caffenet": AlexNetConfig.caffenet}


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    return ALIASES.get(key, key)


def table_label(name: str) -> str:
    """The label of an init row in the report's tables (a custom row keeps its own name)."""
    canonical = canonical_name(name)
    return INIT_NAMES[canonical][0] if canonical in INIT_NAMES else name


def init_rank(label: str) -> int:
    """Table position of a row (by its label): the paper's order, any other learner after them."""
    return INIT_ORDER.index(label) if label in INIT_ORDER else len(INIT_ORDER)


@dataclass
class InitSpec:
    """One row: `name` (display), `kind` (a key of INITS), `checkpoint` (path or None)."""

    name: str
    kind: str
    checkpoint: str | None = None


def parse_init(text: str) -> InitSpec:
    """`NAME` or `NAME=CHECKPOINT`. Unknown names with a checkpoint become `custom` rows named NAME."""
    name, _, ckpt = text.partition("=")
    name, ckpt = name.strip(), ckpt.strip() or None
    if not name:
        raise ConfigError(f"--init {text!r}: empty name (use NAME or NAME=CHECKPOINT)")
    kind = canonical_name(name)
    if kind not in INITS:
        if ckpt is None:
            raise ConfigError(f"--init {text!r}: unknown initialisation {name!r}; known: {', '.join(INITS)} "
                              f"(any other NAME=CHECKPOINT is loaded as a custom AlexNet-compatible row)")
        kind = "custom"
    if kind not in ("random", "imagenet") and ckpt is None:
        raise ConfigError(f"--init {name!r} needs a checkpoint: --init '{name}=PATH/checkpoint.pt'")
    display = kind if kind != "custom" else name
    return InitSpec(display, kind, ckpt)


def arch_from(arch_cfg) -> AlexNetConfig:
    if isinstance(arch_cfg, AlexNetConfig):
        return arch_cfg
    if isinstance(arch_cfg, dict):
        return AlexNetConfig.from_dict(arch_cfg)
    if isinstance(arch_cfg, str) and arch_cfg in ARCH_PRESETS:
        return ARCH_PRESETS[arch_cfg]()
    raise ConfigError(f"unknown encoder architecture {arch_cfg!r}; presets: {', '.join(ARCH_PRESETS)}")


# ---------------------------------------------------------------------------------------------------
# constructors: (arch_cfg, checkpoint, seed) -> encoder
# ---------------------------------------------------------------------------------------------------


def _random(arch_cfg, checkpoint, seed) -> AlexNetEncoder:
    g = torch.Generator().manual_seed(int(seed))
    enc = build_encoder(arch_from(arch_cfg))
    for _, conv in enc.convs():  # Gaussian N(0, 0.01), bias 0 (the paper's "random" row before rescaling)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.01)
            conv.bias.zero_()
    return enc


def _from_checkpoint(expect: str | None) -> Callable:
    def make(arch_cfg, checkpoint, seed) -> AlexNetEncoder:
        ckpt = load_checkpoint(checkpoint)
        enc = encoder_from_checkpoint(ckpt, checkpoint)
        method = str((ckpt.get("arch") or {}).get("name") or "")
        if expect is not None and expect not in method:
            raise CheckpointError(f"{checkpoint}: given as the {expect!r} row but trained with method {method!r}")
        return enc
    return make


def _imagenet(arch_cfg, checkpoint, seed) -> AlexNetEncoder:
    try:
        return imagenet_alexnet_encoder(checkpoint)
    except CheckpointError as exc:
        raise InitUnavailable(f"imagenet row unavailable: {exc}") from None


INITS: dict[str, Callable] = {
    "random": _random,
    "context encoder": _from_checkpoint("ce"),
    "autoencoder": _from_checkpoint("ae"),
    "supervised": _from_checkpoint("sup"),
    "supervised-imagenet": _from_checkpoint("sup"),
    "context prediction": _from_checkpoint("context-prediction"),
    "jigsaw": _from_checkpoint("jigsaw"),
    "colorization": _from_checkpoint("colorization"),
    "rotation": _from_checkpoint("rotation"),
    "imagenet": _imagenet,
    "custom": _from_checkpoint(None),
}


def build_init(name: str, *, arch_cfg="demo", checkpoint=None, data_for_magic_init=None, seed: int = 0,
               magic: str = "random") -> AlexNetEncoder:
    """Encoder for row `name` (a key or alias of INITS). Returns a CPU encoder in train mode.

    magic: which rows get the data-dependent init from `data_for_magic_init` ([B,3,H,W] normalised):
    "random" (only the random row: within-layer, per channel), "all" (random rows per channel; loaded
    rows get the between-layer rescaling only, which keeps each layer's learned filters' proportions),
    "none".
    """
    kind = canonical_name(name)
    if kind not in INITS:
        kind = "custom"
    enc = INITS[kind](arch_cfg, checkpoint, seed)
    if data_for_magic_init is not None and magic != "none":
        if kind == "random":
            magic_init(enc, data_for_magic_init, mode="within")
        elif magic == "all":
            magic_init(enc, data_for_magic_init, mode="between")
    enc.train()
    return enc


# ---------------------------------------------------------------------------------------------------
# Data-dependent init (Krähenbühl, Doersch, Donahue, Darrell, ICLR 2016)
# ---------------------------------------------------------------------------------------------------


def _preactivation_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@torch.no_grad()
def magic_init(model: nn.Module, images: torch.Tensor, *, mode: str = "within", forward=None,
               modules=None, eps: float = 1e-8) -> nn.Module:
    """Rescale conv / linear layers in forward order so their outputs on `images` are standardised.

    mode="within": each output channel gets zero mean and unit variance (Krähenbühl et al.'s
    within-layer init for random Gaussian weights). mode="between": one scale per layer so the
    layer's outputs have unit average variance (the bias is scaled too), leaving the pretrained
    filters' relative sizes intact. Layers are processed one after the other, each measured after the
    previous ones were fixed. BatchNorm running statistics are then re-estimated on `images`.
    forward: callable(model, images) (default `model(images)`); modules: which layers (default all
    Conv2d/Linear in registration order).
    """
    if mode not in ("within", "between"):
        raise ValueError(f"magic_init mode must be 'within' or 'between', got {mode!r}")
    forward = forward or (lambda m, x: m(x))
    was_training = model.training
    model.eval()  # BN uses its running stats (identity at init), dropout off
    targets = list(modules) if modules is not None else _preactivation_modules(model)
    for layer in targets:
        captured = {}

        def hook(mod, inp, out):
            captured["y"] = out.detach()

        handle = layer.register_forward_hook(hook)
        try:
            forward(model, images)
        finally:
            handle.remove()
        if "y" not in captured:
            continue  # not on the forward path of this call
        y = captured["y"]
        y = y.transpose(0, 1).reshape(y.shape[1], -1) if y.dim() == 4 else y.t()  # [C, N*]
        mean, std = y.mean(1), y.std(1)
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        if mode == "within":
            s = 1.0 / (std + eps)
            layer.weight.mul_(s.view(shape))
            if layer.bias is not None:
                layer.bias.sub_(mean).mul_(s)
        else:
            s = 1.0 / (torch.sqrt((std ** 2).mean()) + eps)
            layer.weight.mul_(s)
            if layer.bias is not None:
                layer.bias.mul_(s)
    recalibrate_batchnorm(model, images, forward=forward)
    model.train(was_training)
    return model


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, forward=None) -> None:
    """Set every BatchNorm's running mean/var to the statistics of `images` (cumulative average)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    forward = forward or (lambda m, x: m(x))
    saved = [(m, m.momentum) for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for chunk in images.split(256):
        forward(model, chunk)
    for m, mom in saved:
        m.momentum = mom
    model.train(was_training)


__all__ = ["INITS", "INIT_NAMES", "INIT_ORDER", "ALIASES", "table_label", "init_rank", "InitSpec", "InitUnavailable",
           "parse_init", "build_init", "magic_init", "recalibrate_batchnorm", "canonical_name", "arch_from",
           "ARCH_PRESETS"]
