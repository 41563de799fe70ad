"""Logging by concern: JSON-lines metrics, progress bars, python loggers, optional TensorBoard.

Every training loop (pretraining, each transfer task) writes its metrics per logged step through
`JsonlLogger` (`LogConfig.every` steps apart), mirrored to TensorBoard when `LogConfig.tensorboard` is on;
messages for people go through `get_logger`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm


@dataclass
class LogConfig:
    """The `log:` sub-section of the pretrain and transfer sections."""

    every: int = 10             # training metrics every this many steps (metrics.jsonl)
    tensorboard: bool = False   # also write TensorBoard event files (needs `pip install cebench[tensorboard]`)


def get_logger(name: str = "cebench") -> logging.Logger:
    logger = logging.getLogger(name)
    root = logging.getLogger("cebench")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s] %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return logger


def progress(iterable=None, desc: str | None = None, total: int | None = None, disable: bool | None = None, **kw):
    """tqdm that stays quiet on non-main ranks and when CEBENCH_NO_PROGRESS=1."""
    if disable is None:
        disable = os.environ.get("CEBENCH_NO_PROGRESS") == "1" or int(os.environ.get("RANK", "0")) != 0
    return tqdm(iterable, desc=desc, total=total, disable=disable, dynamic_ncols=True, leave=False, **kw)


def _clean(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class JsonlLogger:
    """Append one JSON object per `log` call (flushed, so a killed run keeps what it logged)."""

    def __init__(self, path, tensorboard_dir=None, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard_dir:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self._tb = SummaryWriter(str(tensorboard_dir))
                except ImportError:
                    get_logger().warning("tensorboard not installed; pip install cebench[tensorboard]")

    def log(self, **metrics) -> None:
        if not self.enabled:
            return
        rec = {"time": round(time.time(), 3), **{k: _clean(v) for k, v in metrics.items()}}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            step = rec.get("step", rec.get("epoch", 0))
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k not in ("time", "step", "epoch"):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_jsonl(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill: skip it
    return out
