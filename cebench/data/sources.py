"""Where a stage's images come from: the built-in demo tree (generated on first use) or real data.

Every stage command resolves its data through `DataConfig` (the `data:` section of the YAML config)
and `--data` on the command line, so the demo and real VOC take the same code path. Each stage reads
its own source (`source_of` is the one routing table):

- "voc": VOC2007 (`data.root`) - classification, detection, the SVMs, inpainting's held-out images;
- "seg": VOC2012 (`data.seg_root`, else `data.root`) - segmentation, the region-mask shapes of
  pretraining, retrieval (which needs segmentation masks);
- "pretrain": the pretraining images (`data.pretrain_images`, else the `pretrain` split of `data.root`).

`data.root` (or `--data`) may be a VOCdevkit holding both years, as real VOC extracts: then "voc" and
"pretrain" read its VOC2007 and "seg" its VOC2012 (`YEAR_OF`), unless `data.seg_root` names another tree.

With no real root the demo preset `data.demo` provides all three: the demo tree, or for preset
"voc" (the paper-protocol rehearsal) a VOC2007 tree, a VOC2012 tree and an image folder beside them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config import config_to_dict, save_config
from ..errors import ConfigError, DatasetMissingError
from .demo import DEMO_PRESETS, generate_demo, paper_layout_paths
from .voc import find_voc_root, voc_years


@dataclass
class DataConfig:
    demo: str = "demo"            # demo preset used when no real root is given: tiny | demo | large | voc
    demo_seed: int = 0
    demo_dir: str = ""            # where the demo tree is generated ("" = $CEBENCH_DATA or ./data)
    root: str = ""                # real VOC2007 (classification, detection): VOCdevkit, VOC2007 or parent
    seg_root: str = ""            # real VOC2012 for segmentation ("" = root's VOC2012 when root is a
    #                               VOCdevkit holding both years, else root itself)
    classes: list[str] = field(default_factory=list)  # class names, or [a file with one name a line];
    #                               [] = classes.txt at the VOC root, else the VOC classes / the annotations' names
    pretrain_images: str = ""     # a folder of images for pretraining (ImageNet, Paris StreetView, ...)
    pretrain_split: str = "pretrain"  # VOC split used for pretraining when pretrain_images is empty
    trainval_split: str = "trainval"
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"


USES = ("voc", "seg", "pretrain")
# the year each use reads from a VOCdevkit that holds several (VOC2007 and VOC2012 side by side)
YEAR_OF = {"voc": "2007", "seg": "2012", "pretrain": "2007"}


def demo_root(cfg: DataConfig) -> Path:
    base = Path(cfg.demo_dir or os.environ.get("CEBENCH_DATA", "data"))
    return base / f"demo-{cfg.demo}-seed{cfg.demo_seed}"


def _demo_preset(cfg: DataConfig):
    if cfg.demo not in DEMO_PRESETS:
        raise DatasetMissingError(f"unknown demo preset {cfg.demo!r}; choose one of {sorted(DEMO_PRESETS)}")
    return replace(DEMO_PRESETS[cfg.demo], seed=cfg.demo_seed)


def source_of(cfg: DataConfig, use: str, override: str | None = None) -> tuple[str, str]:
    """(what, path) a stage with data `use` reads, as configured; generates nothing, and looks at a real
    root's folder names only to pick the year from a VOCdevkit holding several.

    what names the source: "--data", "data.root", "data.seg_root", "data.pretrain_images",
    "data.root split <pretrain_split>", or "demo <preset>" (path then the demo folder it lives in); a year
    picked from a VOCdevkit is named after it, e.g. ("data.root VOC2012", "/data/VOCdevkit/VOC2012")."""
    if use not in USES:
        raise ConfigError(f"data use must be one of {', '.join(USES)}, got {use!r}")
    if override:
        return _year_of(use, "--data", str(override))
    if use == "seg" and cfg.seg_root:
        return _year_of(use, "data.seg_root", cfg.seg_root)
    if use == "pretrain" and cfg.pretrain_images:
        return "data.pretrain_images", cfg.pretrain_images
    if cfg.root:
        return _year_of(use, "data.root", cfg.root, f" split {cfg.pretrain_split}" if use == "pretrain" else "")
    base = demo_root(cfg)
    preset = _demo_preset(cfg)
    if preset.layout == "paper":
        extra = paper_layout_paths(base)
        path = {"voc": base / "VOCdevkit" / "VOC2007", "seg": extra["voc2012"],
                "pretrain": extra["pretrain_images"]}[use]
    else:
        path = base / "VOCdevkit" / "VOC2007"
    return f"demo {cfg.demo}", str(path)


def _year_of(use: str, what: str, path: str, suffix: str = "") -> tuple[str, str]:
    """The tree of year YEAR_OF[use] when `path` is a VOCdevkit (or its parent) holding several years and
    that one among them; else `path` as given (a VOCyyyy folder, a devkit of one year, a path not here)."""
    years = voc_years(path)
    year = YEAR_OF[use]
    if len(years) > 1 and year in years:
        return f"{what} VOC{year}{suffix}", str(years[year])
    return f"{what}{suffix}", path


def _demo(cfg: DataConfig) -> Path:
    """Generate (or reuse) the demo data of preset `data.demo`; returns its VOC2007 root."""
    return Path(generate_demo(demo_root(cfg), _demo_preset(cfg)))


def voc_root(cfg: DataConfig, override: str | None = None, *, segmentation: bool = False) -> Path:
    """The VOCyyyy folder to read (segmentation: the "seg" source); generates the demo tree when no
    real root is configured."""
    what, path = source_of(cfg, "seg" if segmentation else "voc", override)
    if what.startswith("demo"):
        _demo(cfg)
    return find_voc_root(path)


def pretrain_folder(cfg: DataConfig) -> Path | None:
    """The folder of pretraining images (data.pretrain_images, or the demo preset's image folder), or
    None when pretraining reads the `pretrain_split` of the VOC root."""
    what, path = source_of(cfg, "pretrain")
    if what.startswith("demo"):
        _demo(cfg)
        return Path(path) if _demo_preset(cfg).layout == "paper" else None
    return Path(path) if what == "data.pretrain_images" else None


def record_sources(out_dir, data_cfg: DataConfig, **read) -> Path:
    """Write `out_dir/data.yaml`: the data section and what this stage actually read (paths, sizes), so a
    run can be checked afterwards for which tree each stage used."""
    return save_config({"data": config_to_dict(data_cfg),
                        "read": {k: (str(v) if isinstance(v, Path) else v) for k, v in read.items()}},
                       out_dir, name="data.yaml")


__all__ = ["DataConfig", "USES", "YEAR_OF", "demo_root", "source_of", "voc_root", "pretrain_folder", "record_sources"]
