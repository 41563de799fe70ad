"""Checkpoints: one format for every stage, written atomically, loaded with weights_only=True.

A checkpoint is a dict `{"model", "optimizer", "scaler", "step", "epoch", "config", "arch"}` holding
the *unwrapped* model's state_dict; `arch` is the architecture dataclass as a dict with a "name",
so loading into the wrong architecture fails with the exact keys that differ.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import CheckpointError
from .io import atomic_torch_save

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
