"""The one no-grad feature extractor every stage uses, plus .npy storage of features.

`fn(images) -> [B, ...]` is any backbone call (an encoder layer, HOG, a lambda); the loader yields
batches whose first element is the images and whose LAST element is the dataset-index tensor.
Under DDP (torch.distributed initialised) every rank extracts its shard and the result is gathered
on all ranks; the duplicates a DistributedSampler pads in are dropped so every sample counts once.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from cebench.errors import CebenchError
from cebench.io import atomic_directory
from cebench.logs import progress as _progress

POOLS = (None, "avg", "max", "avgmax")


@dataclass
class Features:
    feats: np.ndarray  # float32 [N, D] (np.memmap when loaded with mmap=True)
    indices: np.ndarray  # int64 [N], ascending dataset indices

    def __len__(self) -> int:
        return int(self.feats.shape[0])

    @property
    def dim(self) -> int:
        return int(self.feats.shape[1])


def pool_features(y: torch.Tensor, pool: str | None) -> torch.Tensor:
    """[B, C, H, W] (or any [B, ...]) -> [B, D]. pool: None flattens; "avg"/"max"/"avgmax" pool
    over the spatial dims (avgmax concatenates both). 2-D inputs are returned as they are."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if y.dim() <= 2 or pool is None:
        return y.reshape(y.shape[0], -1)
    flat = y.reshape(y.shape[0], y.shape[1], -1)  # [B, C, HW]
    if pool == "avg":
        return flat.mean(-1)
    if pool == "max":
        return flat.amax(-1)
    return torch.cat([flat.mean(-1), flat.amax(-1)], dim=1)


def _gather_all_ranks(feats: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """all_gather variable-length [n_r, D] / [n_r] from every rank (padded to the longest)."""
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    world = dist.get_world_size()
    n = torch.tensor([feats.shape[0]], device=dev)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    m = max(sizes)
    f = torch.zeros(m, feats.shape[1], dtype=feats.dtype, device=dev)
    f[: feats.shape[0]] = feats.to(dev)
    i = torch.full((m,), -1, dtype=torch.int64, device=dev)
    i[: idx.shape[0]] = idx.to(dev)
    fs = [torch.empty_like(f) for _ in range(world)]
    is_ = [torch.empty_like(i) for _ in range(world)]
    dist.all_gather(fs, f)
    dist.all_gather(is_, i)
    feats = torch.cat([a[:s] for a, s in zip(fs, sizes)]).cpu()
    idx = torch.cat([a[:s] for a, s in zip(is_, sizes)]).cpu()
    return feats, idx


def _amp(amp_context):
    if amp_context is None:
        return contextlib.nullcontext()
    return amp_context() if callable(amp_context) and not hasattr(amp_context, "__enter__") else amp_context


@torch.no_grad()
def extract_features(fn, loader, *, device, amp_context=None, l2_normalize: bool = True,
                     pool: str | None = None, progress: bool = False) -> Features:
    """Run `fn` over `loader` without gradients -> Features sorted by dataset index.

    amp_context: a context manager (e.g. `cebench.runtime.autocast_context(rt)`) or a zero-argument
    callable returning one, entered around each `fn` call; outputs are cast to float32.
    """
    device = torch.device(device)
    if isinstance(fn, torch.nn.Module):
        fn.eval()
    it = loader
    if progress:
        it = _progress(loader, desc="features")
    chunks, idx_chunks = [], []
    for batch in it:
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise ValueError("the loader must yield (images, ..., dataset_index) batches")
        images, index = batch[0], batch[-1]
        images = images.to(device, non_blocking=True)
        with _amp(amp_context):
            y = fn(images)
        y = pool_features(y.float(), pool)
        if l2_normalize:
            y = F.normalize(y, dim=1, eps=1e-12)
        chunks.append(y.cpu())
        idx_chunks.append(torch.as_tensor(index).reshape(-1).long().cpu())
    if not chunks:
        raise ValueError("the loader yielded no batches")
    feats, idx = torch.cat(chunks), torch.cat(idx_chunks)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        feats, idx = _gather_all_ranks(feats, idx)
    idx_np = idx.numpy()
    # np.unique sorts by index and keeps the first occurrence of each (drops sampler padding).
    uniq, first = np.unique(idx_np, return_index=True)
    return Features(np.ascontiguousarray(feats.numpy()[first], dtype=np.float32), uniq.astype(np.int64))


def save_features(path, feats: Features, meta: dict | None = None) -> Path:
    """Write a directory `path` with feats.npy, indices.npy (and meta.json) atomically: the
    directory is written under a temporary name and renamed into place."""
    path = Path(path)
    with atomic_directory(path) as tmp:
        np.save(tmp / "feats.npy", np.asarray(feats.feats, dtype=np.float32))
        np.save(tmp / "indices.npy", np.asarray(feats.indices, dtype=np.int64))
        if meta is not None:
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    return path


def load_features(path, mmap: bool = True) -> Features:
    """Read what save_features wrote; with mmap the features stay on disk (np.memmap)."""
    path = Path(path)
    if not (path / "feats.npy").is_file() or not (path / "indices.npy").is_file():
        raise CebenchError(f"{path}: no saved features (feats.npy / indices.npy) found")
    feats = np.load(path / "feats.npy", mmap_mode="r" if mmap else None)
    indices = np.load(path / "indices.npy")
    return Features(feats, indices)


def load_features_meta(path) -> dict:
    p = Path(path) / "meta.json"
    return json.loads(p.read_text()) if p.is_file() else {}
