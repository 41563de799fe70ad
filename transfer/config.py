"""The `transfer:` config section: the settings every task shares, then one sub-section per task."""

from __future__ import annotations

from dataclasses import dataclass, field

from cebench.logs import LogConfig

from .classification import ClsConfig
from .common import FinetuneRuntime
from .det.train import DetConfig
from .segmentation import SegConfig
from .svm import SvmConfig


@dataclass
class TransferConfig:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    select_seeds: list[int] = field(default_factory=lambda: [100])  # seeds of the lr-selection runs (val)
    arch: str = "demo"            # random row's AlexNet: demo | paper | caffenet | auto (= first checkpoint's)
    magic: str = "random"         # data-dependent init: random (random row only) | all | none
    magic_images: int = 64        # images of the data-dependent init (det has its own: its images are larger)
    workers: int = 1              # job processes inside one command (the pipeline parallelises inits)
    threads: int = 1              # torch threads per job process
    cache_dir: str = ""           # decoded-split cache ("" = <the command's cache folder>/splits, see cebench.cache)
    runtime: FinetuneRuntime = field(default_factory=FinetuneRuntime)  # AMP, checkpoints, memory budget, loaders
    log: LogConfig = field(default_factory=LogConfig)  # per-step fine-tuning metrics of every job
    cls: ClsConfig = field(default_factory=ClsConfig)
    seg: SegConfig = field(default_factory=SegConfig)
    svm: SvmConfig = field(default_factory=SvmConfig)
    det: DetConfig = field(default_factory=DetConfig)


__all__ = ["TransferConfig"]
