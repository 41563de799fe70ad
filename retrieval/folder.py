"""The patch database of `cebench retrieve`: features of every grid patch of a folder of images,
extracted in batches, stored compactly in a cache folder and resumable after a kill.

Layout of one cache entry (`<cache>/retrieve/<features>-<key>/`, the key hashing the images' names,
sizes and modification times and every setting that changes the features):
  meta.json                 settings and the image list (written first)
  chunk_00000.npz ...       one per CHUNK_IMAGES images: feats float16 [n, D], boxes int32 [n, 3]
                            (image number, x, y in the image as read, i.e. after `max_side`)
Each chunk is written to a temporary file and renamed, so a killed run leaves only whole chunks
and the next run computes only the missing ones. Nothing is ever written into the image folder.

float16 keeps the features at half the size of float32; the neighbours found with them against
those of the float32 features are measured by `cebench bench folder` (results/).
"""

from __future__ import annotations

import contextlib
import json
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cebench.cache import ensure_outside, files_key
from cebench.errors import BadImageError, CebenchError
from cebench.features.hog import grid_hog
from cebench.images import open_rgb
from cebench.io import atomic_target, atomic_write_json
from cebench.logs import progress

from .evaluate import HOGFeatures
from .patches import crop_patches, patch_positions, pil_to_uint8

CHUNK_IMAGES = 16
CACHE_VERSION = 2


@dataclass(frozen=True)
class PatchGrid:
    """How the database patches are cut: side, grid step, and the longer image side they are cut at."""

    size: int = 64
    stride: int = 32
    max_side: int = 640  # images larger than this are scaled down first (0: native resolution)


def load_image(path: Path, grid: PatchGrid) -> torch.Tensor:
    """uint8 [3, H, W] as the database sees it: scaled down to `max_side`, small images scaled up so
    at least one patch fits."""
    img = open_rgb(path, max_side=grid.max_side)
    if min(img.size) < grid.size:
        s = grid.size / min(img.size)
        img = img.resize((max(grid.size, round(img.width * s)), max(grid.size, round(img.height * s))))
    return pil_to_uint8(img)


def _image_features(hog_params, img: torch.Tensor, corners: torch.Tensor, grid: PatchGrid) -> torch.Tensor | None:
    """Dense HOG of the whole image when the features are HOG on a cell-aligned grid (the same numbers
    as per patch, computed once per image), else None (the caller crops and batches the patches)."""
    h = hog_params
    if isinstance(h, HOGFeatures) and grid.size % h.cell == 0 and grid.stride % h.cell == 0:
        return grid_hog(img.float() / 255.0, corners, grid.size, h.orientations, h.cell, h.block)
    return None


def _chunk_path(entry: Path, i: int) -> Path:
    return entry / f"chunk_{i:05d}.npz"


def read_chunk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(feats float16 [n, D], boxes int32 [n, 3]) of one cache chunk; a damaged file is a CebenchError
    naming it (the cache is never trusted blindly: delete the file and the next run recomputes it)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            feats, boxes = z["feats"], z["boxes"]
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise CebenchError(f"{path}: damaged retrieval cache file ({type(exc).__name__}: {exc}); "
                           "delete it and rerun to recompute it") from None
    if feats.ndim != 2 or boxes.shape != (feats.shape[0], 3) or feats.dtype != np.float16:
        raise CebenchError(f"{path}: damaged retrieval cache file (shapes {feats.shape} / {boxes.shape}); "
                           "delete it and rerun to recompute it")
    return feats, boxes.astype(np.int64)


def _write_chunk(path: Path, feats: np.ndarray, boxes: np.ndarray) -> None:
    with atomic_target(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, feats=feats.astype(np.float16), boxes=boxes.astype(np.int32))


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        return meta
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CebenchError(f"{path}: damaged retrieval cache file ({type(exc).__name__}: {exc}); "
                           "delete its folder and rerun") from None


def entry_dir(cache_root: Path, images: list[Path], images_dir: Path, feature: str, settings: dict) -> Path:
    """The cache entry of these images and settings (refused inside the image folder)."""
    cache_root = ensure_outside(cache_root, images_dir)
    key = files_key(images, sorted(settings.items()), CACHE_VERSION)
    return cache_root / "retrieve" / f"{feature}-{key}"


@torch.no_grad()
def folder_features(fn, images: list[Path], entry: Path, grid: PatchGrid, *, device, desc: str = "features",
                    batch: int = 512, hog_params: HOGFeatures | None = None, workers: int = 2,
                    on_chunk=None) -> tuple[np.ndarray, np.ndarray]:
    """Features (float16 [N, D], L2-normalised) and boxes (int64 [N, 3]: image number, x, y) of all grid
    patches of `images`, from the cache entry where present, computed and cached chunk by chunk where
    not. `fn(uint8 [B,3,s,s]) -> [B, ...]` is the feature function (`hog_params`: it is this HOG, then
    computed per image with `grid_hog` where the grid allows); `on_chunk(i)` runs after chunk i is
    written (in chunk order; tests use it to kill the process midway). Unreadable images are skipped with a
    warning."""
    entry.mkdir(parents=True, exist_ok=True)
    meta_path = entry / "meta.json"
    if meta_path.is_dir() or meta_path.exists():
        _read_meta(meta_path)
    else:
        atomic_write_json(meta_path, {"version": CACHE_VERSION, "grid": asdict(grid),
                                      "images": [str(p) for p in images], "chunk_images": CHUNK_IMAGES})
    n_chunks = (len(images) + CHUNK_IMAGES - 1) // CHUNK_IMAGES
    # every finished chunk is read (and checked) before anything is computed or printed
    cached = {i: read_chunk(_chunk_path(entry, i)) for i in range(n_chunks) if _chunk_path(entry, i).exists()}
    if cached:
        print(f"[retrieve] {desc}: reusing {len(cached)} of {n_chunks} cached chunks from {entry}", file=sys.stderr)
    if isinstance(fn, torch.nn.Module):
        fn.eval()
    dense = hog_params is not None
    # Dense HOG: `workers` Python threads, one chunk each, every thread's torch ops on one thread (they
    # release the GIL): two one-thread streams beat one two-thread stream of many small element-wise
    # passes here. Encoders: one stream, torch's own threads inside each batch.
    workers = max(1, workers if dense else 1)

    def compute(i: int):
        lo, hi = i * CHUNK_IMAGES, min(len(images), (i + 1) * CHUNK_IMAGES)
        with torch.no_grad():  # grad mode is per thread
            f, b = _extract_chunk(fn, hog_params, images, lo, hi, grid, device, batch)
        _write_chunk(_chunk_path(entry, i), f, b)
        return f, b

    feats, boxes = [], []
    n_patches = 0
    bar = progress(total=len(images), desc=desc, unit="img")
    todo = [i for i in range(n_chunks) if i not in cached]
    with _threads(1 if dense else None), ThreadPoolExecutor(
            max_workers=workers, initializer=torch.set_num_threads if dense else None,
            initargs=(1,) if dense else ()) as pool:
        computed = pool.map(compute, todo)  # in chunk order, `workers` ahead
        for i in range(n_chunks):
            if i in cached:
                f, b = cached.pop(i)
            else:
                f, b = next(computed)
                if on_chunk is not None:
                    on_chunk(i)
            if len(f):
                feats.append(f)
                boxes.append(b)
            n_patches += len(f)
            bar.update(min(len(images), (i + 1) * CHUNK_IMAGES) - i * CHUNK_IMAGES)
            bar.set_postfix(patches=n_patches)
    bar.close()
    if not feats:
        raise CebenchError(f"no patches of {grid.size} px could be cut from the {len(images)} images")
    return np.concatenate(feats), np.concatenate(boxes)


def _extract_chunk(fn, hog_params, images, lo: int, hi: int, grid: PatchGrid, device, batch: int):
    """Features of images[lo:hi]: dense HOG per image, or the patches of all images batched through fn."""
    out, boxes, pending = [], [], []

    def flush():
        x = torch.cat(pending).to(device)
        pending.clear()
        for s in range(0, len(x), batch):
            out.append(_finish(fn(x[s:s + batch])))

    for im in range(lo, hi):
        try:
            img = load_image(images[im], grid)
        except BadImageError as exc:
            print(f"warning: skipping {exc}", file=sys.stderr)
            continue
        corners = patch_positions(img.shape[1], img.shape[2], grid.size, mode="grid", stride=grid.stride)
        if len(corners) == 0:
            continue
        dense = _image_features(hog_params, img, corners, grid)
        if dense is not None:
            out.append(_finish(dense))
        else:
            pending.append(crop_patches(img, corners, grid.size))
            if sum(len(p) for p in pending) >= batch:
                flush()
        boxes.append(torch.cat([torch.full((len(corners), 1), im), corners[:, 1:2], corners[:, 0:1]], 1))
    if pending:
        flush()
    if not out:
        return np.zeros((0, 1), np.float16), np.zeros((0, 3), np.int32)
    return torch.cat(out).numpy().astype(np.float16), torch.cat(boxes).numpy().astype(np.int32)


@contextlib.contextmanager
def _threads(n: int | None):
    """torch threads = n inside (None: unchanged). Dense HOG is many small element-wise passes over
    one image: on this project's shared 2-core machine one thread ran them 4x faster than two, which
    spent their time in OpenMP barriers (results/profile.md)."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _finish(y: torch.Tensor) -> torch.Tensor:
    """[B, ...] -> float32 [B, D], L2-normalised (inner product = cosine), on the CPU."""
    y = y.float().reshape(y.shape[0], -1)
    return torch.nn.functional.normalize(y, dim=1, eps=1e-12).cpu()
