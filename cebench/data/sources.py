"""Where a stage's images come from: the built-in demo tree (generated on first use) or real data.

Every stage command resolves its data through `DataConfig` (the `data:` section of the YAML config)
and `--data` on the command line, so the demo and real VOC take the same code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import DatasetMissingError
from .demo import DEMO_PRESETS, generate_demo
from .voc import find_voc_root


@dataclass
class DataConfig:
    demo: str = "demo"            # demo preset used when no real root is given: tiny | demo | large
    demo_seed: int = 0
    demo_dir: str = ""            # where the demo tree is generated ("" = $CEBENCH_DATA or ./data)
    root: str = ""                # real VOC2007 (classification, detection): VOCdevkit, VOC2007 or parent
    seg_root: str = ""            # real VOC2012 for segmentation ("" = same as root)
    classes: list[str] = field(default_factory=list)  # class names, or [a file with one name a line];
    #                               [] = classes.txt at the VOC root, else the VOC classes / the annotations' names
    pretrain_images: str = ""     # a folder of images for pretraining (ImageNet, Paris StreetView, ...)
    pretrain_split: str = "pretrain"  # VOC split used for pretraining when pretrain_images is empty
    trainval_split: str = "trainval"
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"


def demo_root(cfg: DataConfig) -> Path:
    base = Path(cfg.demo_dir or os.environ.get("CEBENCH_DATA", "data"))
    return base / f"demo-{cfg.demo}-seed{cfg.demo_seed}"


def voc_root(cfg: DataConfig, override: str | None = None, *, segmentation: bool = False) -> Path:
    """The VOCyyyy folder to read; generates the demo tree when no real root is configured."""
    given = override or (cfg.seg_root if segmentation and cfg.seg_root else cfg.root)
    if given:
        return find_voc_root(given)
    if cfg.demo not in DEMO_PRESETS:
        raise DatasetMissingError(f"unknown demo preset {cfg.demo!r}; choose one of {sorted(DEMO_PRESETS)}")
    preset = DEMO_PRESETS[cfg.demo]
    return Path(generate_demo(demo_root(cfg), replace(preset, seed=cfg.demo_seed)))
