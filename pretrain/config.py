"""The `pretrain:` config section: one dataclass for every pretraining method."""

from __future__ import annotations

from dataclasses import dataclass, field

from cebench.logs import LogConfig

from .colorization import ColorizationConfig
from .context_prediction import ContextPredictionConfig
from .jigsaw import JigsawConfig
from .models import AlexNetConfig, InpaintNetConfig
from .rotation import RotationConfig


@dataclass
class PretrainConfig:
    method: str = "ce"                 # ce | ce-adv | ae | supervised | inpaint | inpaint-adv | context-prediction
    #                                    | rotation | jigsaw | colorization
    encoder: AlexNetConfig = field(default_factory=AlexNetConfig)        # AlexNet methods
    inpaint_net: InpaintNetConfig = field(default_factory=InpaintNetConfig)  # inpaint methods
    mask: str = "region"               # ce/ce-adv: center | blocks | region | noise | file (ae: none)
    mask_file: str = ""
    region_split: str = "trainval"     # VOC split whose segmentation masks give the region shapes
    loss_region: str = "masked"        # masked (paper) | all (released random-region code)
    target_patch: int = 0              # ce/ae: 0 = image target (paper); p = per-patch standardised target (MAE)
    overlap: int = 4                   # px band weighted overlap_weight (official 4 px, x10)
    overlap_weight: float = 10.0
    w_rec: float = 0.999               # joint loss with the adversary
    w_adv: float = 0.001
    dropout: float = 0.5
    decoder_widths: tuple[int, ...] = (64, 32, 16)  # up-convolution widths (the last one outputs RGB)
    decoder_layers: int = 4            # paper: 5 up-convolutions; the 64 px demo needs 4 (4 -> 64 px)
    lr: float = 2e-4
    lr_schedule: str = "constant"      # constant (paper) | cosine (to 0 at the last step: short CPU schedules)
    beta1: float = 0.5
    lr_d_factor: float = 0.1           # D lr = lr * lr_d_factor (official: G 10x D)
    weight_decay: float = 0.0
    batch_size: int = 64
    steps: int = 1200                  # total optimiser steps (0: use epochs)
    epochs: int = 0
    max_minutes: float = 0.0           # wall-clock cap (0: none); stops early with a warning
    load_size: int = 0                 # short side before the random crop (0: = crop); official 350
    crop_size: int = 0                 # 0: the network's input size; official 128
    flip: bool = True
    colour: str = "rgb"                # rgb | permute (random channel order) | gray (luminance): colour shortcut off
    cache_images: bool = True          # keep decoded images in memory (small datasets)
    workers: int = 0
    threads: int = 1
    seed: int = 0
    amp: str = "auto"                  # auto (bf16 on GPU) | bf16 | none
    eval_images: int = 256             # held-out (val split) images for the loss curve (0: none)
    log: LogConfig = field(default_factory=LogConfig)  # metrics.jsonl every log.every steps (+ TensorBoard)
    sample_every: int = 400
    ckpt_every: int = 200
    stop_after: int = 0                # testing: exit after this many steps as if killed (0: off)
    # the pretext methods' own settings (docs/methods.md); each also sets its batch, steps, colour, load size
    # and optimiser where they differ from the keys above (0 / "": the keys above, the context encoder's)
    context_prediction: ContextPredictionConfig = field(default_factory=ContextPredictionConfig)
    rotation: RotationConfig = field(default_factory=RotationConfig)
    jigsaw: JigsawConfig = field(default_factory=JigsawConfig)
    colorization: ColorizationConfig = field(default_factory=ColorizationConfig)


__all__ = ["PretrainConfig"]
