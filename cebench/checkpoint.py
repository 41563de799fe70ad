"""Checkpoints: one format for every stage, written atomically, loaded with weights_only=True.

A checkpoint is a dict `{"model", "optimizer", "scaler", "step", "epoch", "config", "arch"}` holding
the *unwrapped* model's state_dict; `arch` is the architecture dataclass as a dict with a "name",
so loading into the wrong architecture fails with the exact keys that differ.

`CheckpointSaver` keeps a fine-tuning run resumable to the same numbers (its `last` checkpoint, every
RNG, SIGTERM / SIGINT), so the training loop itself sees none of it.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError
from .io import atomic_torch_save
from .logs import get_logger
from .runtime import Runtime, all_reduce_sum, barrier, gather, unwrap_model

log = get_logger("cebench")

TEST_SIGNAL_ENV = "CEBENCH_TEST_SIGNAL_AT"

_PREFIXES = ("module.", "_orig_mod.")


def save_checkpoint(path, state: dict) -> Path:
    """Write `state` to `path` via a temp file in the same folder and os.replace (never half-written)."""
    return atomic_torch_save(state, path)


def load_checkpoint(path, map_location="cpu") -> dict:
    """The checkpoint dict at `path`. Any file that is not one (random bytes, a truncated copy, an empty
    file, a folder) raises CheckpointError naming it: the weights-only unpickler raises whatever its
    parser hits on foreign bytes (UnpicklingError, RuntimeError, IndexError, KeyError, UnicodeDecodeError,
    struct.error, ...), so every exception of the load itself is this file's problem, caught here at the
    boundary of the one loader of checkpoints."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - see the docstring: foreign bytes, not a bug of ours
        text = str(exc).strip()
        first = f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable cebench checkpoint ({first[:200]})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(ckpt).__name__}")
    return ckpt


def strip_prefixes(state_dict: dict) -> dict:
    """Remove DDP (`module.`) and torch.compile (`_orig_mod.`) prefixes."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def sub_state_dict(state_dict: dict, prefix: str) -> dict:
    """Keys under `prefix.` with the prefix removed (e.g. the encoder of a context encoder)."""
    p = prefix.rstrip(".") + "."
    return {k[len(p):]: v for k, v in state_dict.items() if k.startswith(p)}


def load_state_strict(module: torch.nn.Module, state_dict: dict, path="checkpoint",
                      allow_missing=(), allow_unexpected=()) -> None:
    """Load with an exact key check; the error lists missing/unexpected keys and shape mismatches."""
    state_dict = strip_prefixes(state_dict)
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state_dict and k not in allow_missing)
    unexpected = sorted(k for k in state_dict if k not in own and k not in allow_unexpected)
    shapes = sorted(
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch {_short(shapes)}")
        raise CheckpointError(f"{path}: checkpoint does not match the architecture: " + "; ".join(parts))
    module.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)


def _short(items, n: int = 6) -> str:
    shown = ", ".join(items[:n])
    return f"[{shown}{', ... +' + str(len(items) - n) if len(items) > n else ''}]"


# ------------------------------------------------------------------------------------------ resumable runs
class Preempted(KeyboardInterrupt):
    """SIGTERM or SIGINT during training: the run saved its `last` checkpoint and stops; rerun to resume."""


def _rng_state() -> dict:
    """Every global RNG of this process (torch, CUDA, numpy, python), as tensors and plain values."""
    npk = np.random.get_state()
    out = {"torch": torch.get_rng_state(), "python": random.getstate(),
           "numpy": {"keys": torch.from_numpy(npk[1].astype(np.int64)), "pos": int(npk[2]),
                     "has_gauss": int(npk[3]), "cached": float(npk[4])}}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    v, keys, g = state["python"]
    random.setstate((v, tuple(keys), g))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _test_signal() -> tuple[int, int] | None:
    """`CEBENCH_TEST_SIGNAL_AT="KILL:5"` or `"TERM:3"`: the run signals itself before that iteration (tests of
    resumption after a hard kill or a preemption)."""
    spec = os.environ.get(TEST_SIGNAL_ENV, "")
    if not spec:
        return None
    name, _, step = spec.partition(":")
    return {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM}[name.upper()], int(step)


class CheckpointSaver:
    """Everything that lets a training run stop anywhere and resume to the numbers of an uninterrupted one,
    kept out of its loop (timm's `CheckpointSaver`: `save_recovery` writes the fixed `last` file,
    `find_recovery` reads it back).

    It holds the run's stateful parts: the `model` (saved unwrapped), `optimizer`, `scheduler`, the batch
    `stream` (`take(k)`, `state_dict`, `load_state_dict`: data order and augmentation generators) and extra
    torch `generators` (detection's RoI sampling), and with them captures every global RNG of every rank.
    `path`: the `last` file (None: nothing is written); `key`: what a checkpoint must carry to be resumed
    (another key: the run starts afresh); `iterations`: the run's length; `every`: iterations between saves
    (0: only on a signal).

        with saver:                                   # resumes; SIGTERM / SIGINT now set a flag
            while saver.step < iterations:            # an "epoch": the iterations up to the next save
                saver.end_epoch(train_one_epoch(model, saver.batches(), ...))
        stats = saver.totals()                        # mean losses over every iteration, resumed ones too

    `batches()` stops before drawing the next batch once a signal came (the ranks agree, so all stop at the
    same iteration, and a saved stream holds no untrained batch); `end_epoch` then saves and raises
    `Preempted`. The checkpoint: {"model", "optimizer", "scheduler", "scaler", "step", "sums" (loss sums so
    far), "inputs" (the training batch's shape), "per_rank" (each rank's stream, RNG and generator states),
    "config" (the key), "world_size", "epoch"}."""

    def __init__(self, path: Path | None, key, rt: Runtime, *, iterations: int, model, optimizer, stream,
                 scheduler=None, generators: dict | None = None, every: int = 0):
        self.path, self.key, self.rt = (Path(path) if path is not None else None), key, rt
        self.iterations, self.every = int(iterations), int(every)
        self.model, self.optimizer, self.scheduler, self.stream = unwrap_model(model), optimizer, scheduler, stream
        self.generators = generators or {}
        self.step, self.sums, self.inputs = 0, {}, {}       # resumed from the checkpoint
        self.images, self.seconds = 0, 0.0                  # of this process (the throughput it measured)
        self._asked, self._flag, self._previous, self._hook = 0, {"set": False}, {}, None

    # ---------------------------------------------------------------------------------- timm's pair
    def find_recovery(self) -> dict | None:
        """This run's `last` checkpoint, or None (none yet, or one written for another key)."""
        if self.path is None or not self.path.is_file():
            return None
        ck = load_checkpoint(self.path)
        if ck.get("config") != self.key:
            log.warning("%s: written for another job configuration; starting this job afresh", self.path)
            return None
        if int(ck.get("world_size", 1)) != self.rt.world_size:
            raise CheckpointError(f"{self.path}: written by {ck.get('world_size')} processes, resumed with "
                                  f"{self.rt.world_size}; use the same number or delete it")
        return ck

    def save_recovery(self) -> None:
        """Write the run's state at `step` to `last` (rank 0 writes every rank's data-order and RNG state)."""
        per_rank = gather([{"stream": self.stream.state_dict(), "rng": _rng_state(),
                            "generators": {n: g.get_state() for n, g in self.generators.items()}}], self.rt)
        if self.rt.is_main and self.path is not None:
            save_checkpoint(self.path, {
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None, "scaler": None,
                "step": self.step, "sums": self.sums, "inputs": self.inputs, "per_rank": per_rank,
                "config": self.key, "world_size": self.rt.world_size, "epoch": 0})
        barrier(self.rt)

    # ------------------------------------------------------------------------------- around the loop
    def __enter__(self) -> CheckpointSaver:
        """Resume from `last` when it is this run's, then turn SIGTERM (a preemption, `cebench run` stopping
        its jobs) and SIGINT (Ctrl-C reaches every job of a terminal) into a flag until the exit."""
        ck = self.find_recovery()
        if ck is not None:
            self.model.load_state_dict(ck["model"])
            self.optimizer.load_state_dict(ck["optimizer"])
            if self.scheduler is not None and ck.get("scheduler") is not None:
                self.scheduler.load_state_dict(ck["scheduler"])
            mine = ck["per_rank"][self.rt.rank]
            self.stream.load_state_dict(mine["stream"])
            for name, g in self.generators.items():
                g.set_state(mine["generators"][name])
            _set_rng_state(mine["rng"])
            self.step, self.sums, self.inputs = int(ck["step"]), dict(ck["sums"]), dict(ck.get("inputs") or {})
            log.info("resumed from %s at iteration %d of %d", self.path, self.step, self.iterations)
        self._hook = _test_signal()
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, lambda *_: self._flag.__setitem__("set", True))
        except ValueError:  # not the main thread: no handler, no graceful stop
            pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def batches(self):
        """The stream's batches up to the next checkpoint (or the end), stopping early on a signal."""
        every = self.every if self.every > 0 and self.path is not None else self.iterations
        self._asked = min((self.step // every + 1) * every, self.iterations) - self.step
        return self._until_stop(self.stream.take(self._asked))

    def _until_stop(self, batches):
        """Yield `batches` until SIGTERM (agreed over the ranks, so all stop at the same iteration). The flag
        is checked before the next batch is drawn: a saved stream state holds no untrained batch."""
        it, step = iter(batches), self.step
        while True:
            if self._hook is not None and step == self._hook[1]:
                os.kill(os.getpid(), self._hook[0])
            stop = all_reduce_sum(torch.tensor([1.0 if self._flag["set"] else 0.0]), self.rt)
            if stop.item() > 0:
                return
            try:
                batch = next(it)
            except StopIteration:
                return
            if not self.inputs:  # what the net sees, for the record (e.g. [16, 3, 227, 227])
                self.inputs["train"] = list(batch[0].shape)
            yield batch
            step += 1

    def end_epoch(self, stats: dict) -> None:
        """Add an epoch's statistics (`train_one_epoch`'s means over its `iterations`); save at the interval;
        after a signal save and raise `Preempted`."""
        n = int(stats["iterations"])
        for name in stats:
            if name not in ("iterations", "images", "seconds", "images_per_s"):
                self.sums[name] = self.sums.get(name, 0.0) + stats[name] * n
        self.step, self.seconds = self.step + n, self.seconds + stats["seconds"]
        self.images += stats["images"]
        if n < self._asked:  # SIGTERM / SIGINT (the ranks agreed to stop): save where we are and stop
            self.save_recovery()
            raise Preempted(f"training stopped by a signal at iteration {self.step}; saved {self.path}")
        if self.path is not None and self.every > 0 and self.step < self.iterations:
            self.save_recovery()

    def totals(self) -> dict:
        """Mean of every named loss over all iterations (those before a resumption too), the iterations, and
        this process's images, seconds and throughput."""
        out = {k: v / max(self.step, 1) for k, v in self.sums.items()}
        out.update(iterations=self.step, images=self.images, seconds=self.seconds,
                   images_per_s=self.images / self.seconds if self.seconds > 0 else float("nan"), inputs=self.inputs)
        return out
