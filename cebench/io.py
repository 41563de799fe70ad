"""Atomic file writes: the one place where the suite writes a file.

Every writer goes through `atomic_target` (a temp file beside the target, fsynced, then `os.replace`d
onto it), so a killed process never leaves a half-written result, checkpoint, cache entry or figure:
readers see the old file or the new one. `atomic_directory` does the same for a folder written as a
whole (saved features). Files get mode 0644 (a bare `mkstemp` file would be owner-only, which breaks
results shared on a cluster).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

FILE_MODE = 0o644


@contextlib.contextmanager
def atomic_target(path) -> Iterator[str]:
    """Yield a temp path beside `path`; on success fsync and os.replace it onto `path`, else remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> Path:
    with atomic_target(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return Path(path)


def atomic_write_text(path, text: str) -> Path:
    with atomic_target(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write(text)
    return Path(path)


def json_default(o):
    """JSON for what the stages record: numpy scalars and arrays as numbers, anything else as str."""
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def atomic_write_json(path, data, *, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=indent, default=json_default))


def atomic_write_csv(path, df, **to_csv) -> Path:
    """A pandas DataFrame as CSV (`to_csv` keyword arguments, index=False unless given)."""
    to_csv.setdefault("index", False)
    return atomic_write_text(path, df.to_csv(**to_csv))


def atomic_save_figure(fig, path, *, colors: int | None = None, **savefig) -> Path:
    """A matplotlib figure; the format comes from the target's suffix (the temp file has none).

    `colors=N` (PNG only) writes a palette PNG of N colours (PIL's median-cut quantiser): grids of many
    photographs as full-colour RGBA PNGs are over 1 MB, as 256-colour palettes about a fifth of that."""
    path = Path(path)
    savefig.setdefault("format", path.suffix.lstrip(".") or "png")
    if colors is None or savefig["format"] != "png":
        with atomic_target(path) as tmp:
            fig.savefig(tmp, **savefig)
        return path
    buf = io.BytesIO()
    fig.savefig(buf, **savefig)
    buf.seek(0)
    rgb = Image.open(buf).convert("RGB")  # Agg renders RGBA on a white face: alpha carries nothing here
    return atomic_save_image(rgb.quantize(colors=colors, method=Image.Quantize.MEDIANCUT), path, format="PNG")


def atomic_save_image(image, path, format: str | None = None) -> Path:
    """A PIL image in `format` (default: from the target's suffix)."""
    path = Path(path)
    buf = io.BytesIO()
    image.save(buf, format=format or (path.suffix.lstrip(".") or "png").upper().replace("JPG", "JPEG"))
    return atomic_write_bytes(path, buf.getvalue())


def atomic_torch_save(obj, path) -> Path:
    with atomic_target(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def atomic_copy(src, dst) -> bool:
    """Copy `src` onto `dst` atomically; False (nothing written) when `src` is not a file."""
    src = Path(src)
    if not src.is_file():
        return False
    with atomic_target(dst) as tmp:
        shutil.copyfile(src, tmp)
    return True


@contextlib.contextmanager
def atomic_directory(path) -> Iterator[Path]:
    """Yield an empty temp folder beside `path`; on success it replaces `path` (an older folder there is
    moved aside first and then deleted), else it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["atomic_target", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_write_csv",
           "atomic_save_figure", "atomic_save_image", "atomic_torch_save", "atomic_copy", "atomic_directory",
           "json_default"]
