"""The one timing helper of the benchmarks.

`timed(fn, device, repeat=, warmup=)` calls `fn` `warmup` times untimed, then `repeat` times, and returns
(its last result, the seconds of the timed calls); on a CUDA device it synchronises before and after, so
the seconds include the work the calls queued. `Clock` times a stream (a DataLoader, a generator of
batches) from its first item on, so worker start-up is not counted.
"""

from __future__ import annotations

import time

import torch


def sync(device) -> None:
    """Wait for the queued work of a CUDA device (nothing to wait for elsewhere)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device=None, *, repeat: int = 1, warmup: int = 0):
    """(fn's last result, seconds of `repeat` calls after `warmup` untimed ones)."""
    out = None
    for _ in range(warmup):
        out = fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    sync(device)
    return out, time.perf_counter() - t0


class Clock:
    """Wraps an iterable of batches (item[0] holds the batch's images): `rate()` = images after the
    first batch / seconds since the first batch arrived."""

    def __init__(self, iterable, device=None):
        self.iterable, self.device, self.t_first, self.n, self.first = iterable, device, None, 0, 0

    def __iter__(self):
        for item in self.iterable:
            if self.t_first is None:
                sync(self.device)
                self.t_first, self.first = time.perf_counter(), len(item[0])
            self.n += len(item[0])
            yield item

    def rate(self) -> float:
        sync(self.device)
        return rate(self.n - self.first, time.perf_counter() - self.t_first)


def rate(n: int, seconds: float) -> float:
    """n per second, rounded to 0.1 (a zero time counts as 1 ns)."""
    return round(n / max(seconds, 1e-9), 1)
