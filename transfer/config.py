"""The `transfer:` config section: shared run settings plus one sub-config per task."""

from __future__ import annotations

from dataclasses import dataclass, field

from .classification import ClsConfig
from .finetune import FinetuneRuntime
from .segmentation import SegConfig
from .svm import SvmConfig


@dataclass
class TransferConfig:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    select_seeds: list[int] = field(default_factory=lambda: [100])  # seeds of the lr-selection runs (val)
    arch: str = "demo"            # AlexNet preset of the random row: demo | paper | caffenet | auto
    magic: str = "random"         # data-dependent init: random (random row only) | all | none
    magic_images: int = 64
    workers: int = 1              # job processes inside one command (the pipeline parallelises inits)
    threads: int = 1              # torch threads per job process
    cache_dir: str = ""           # in-memory split cache ("" = <out>/cache)
    runtime: FinetuneRuntime = field(default_factory=FinetuneRuntime)  # AMP, checkpoints, memory budget, loaders
    cls: ClsConfig = field(default_factory=ClsConfig)
    seg: SegConfig = field(default_factory=SegConfig)
    svm: SvmConfig = field(default_factory=SvmConfig)


__all__ = ["TransferConfig"]
