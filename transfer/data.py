"""The data of classification and segmentation fine-tuning: VOC splits, their training batches, augmentation.

A split is read through the shared readers in `cebench.data.voc`. Images are read once, resized to
`load_size` x `load_size` (uint8), and cached as one .pt file per (split, size, class list, and the name,
size and mtime of every file it was read from) in the command's cache folder (never the data folder, see
`cebench.cache`), so every (init, seed, lr) job of a run loads them in milliseconds and augments on the
training device, vectorised; a changed image or split file makes a new entry. Segmentation masks are
resized with nearest neighbour (255 = ignore).

`open_split` holds a split in memory (`MemorySplit`) or, when it does not fit the memory budget, streams
it from disk through DataLoader workers (`StreamedSplit` over `DiskSplit`, the same pixels). `train_stream`
gives a job's seeded training batches over either (`TensorBatches` in memory, `StreamBatches` from disk),
resumable from their `state_dict`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cebench.cache import ensure_outside, files_key
from cebench.data.loader import make_loader
from cebench.data.voc import VOCIndex
from cebench.errors import ConfigError, DatasetMissingError
from cebench.images import normalize
from cebench.io import atomic_torch_save
from cebench.logs import get_logger
from cebench.runtime import Runtime

log = get_logger("cebench.transfer")

CACHE_VERSION = 2  # 2: keyed by the files read (was: by the data folder's path)


def _cache_file(cache_dir, index: VOCIndex, kind: str, size: int) -> Path:
    """The entry of one split: keyed by every file it is read from, the class list and the settings."""
    sub = "Segmentation" if index.kind == "segmentation" else "Main"
    files = [index.root / "ImageSets" / sub / f"{index.split}.txt"]
    for i in range(len(index)):
        files += [index.image_path(i), index.segmentation_path(i) if kind == "seg" else index.annotation_path(i)]
    key = files_key(files, kind, size, index.classes, CACHE_VERSION)
    return ensure_outside(cache_dir, index.root) / f"{kind}-{index.split}-{size}-{key}.pt"


def _load(path: Path) -> dict | None:
    """A cached split, or None when absent or unreadable (then it is read from the data again)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt, never trusted
        return None


def load_split(root, split: str, *, kind: str, load_size: int, cache_dir=None, classes=None) -> dict:
    """kind "cls": {"images" uint8 [N,3,S,S], "labels" float [N,C] in {1,0,-1}, "classes"};
    kind "seg": {"images", "masks" uint8 [N,S,S] (255 ignore), "classes" (background first)}.
    `classes`: data.classes (None = the tree's own class list)."""
    index = VOCIndex(root, split, kind="segmentation" if kind == "seg" else "main", classes=classes)
    if len(index) == 0:
        raise DatasetMissingError(f"{index.split_file}: split {split!r} is empty (no image ids)")
    path = _cache_file(cache_dir, index, kind, load_size) if cache_dir else None
    cached = _load(path) if path is not None else None
    if cached is not None:
        return cached
    n, s = len(index), int(load_size)
    images = torch.empty(n, 3, s, s, dtype=torch.uint8)
    out: dict = {"classes": list(index.classes)}
    if kind == "cls":
        out["labels"] = torch.from_numpy(index.label_matrix().astype(np.float32))
    else:
        out["classes"] = ["background", *index.classes]
        masks = torch.empty(n, s, s, dtype=torch.uint8)
    for i in range(n):
        images[i], m = load_item(index, i, kind, s)
        if kind == "seg":
            masks[i] = m
    out["images"] = images
    if kind == "seg":
        out["masks"] = masks
    if path is not None:
        atomic_torch_save(out, path)
    return out


def load_item(index: VOCIndex, i: int, kind: str, size: int):
    """Image i of a split at size x size: (uint8 [3,S,S], uint8 [S,S] mask for kind "seg" else None). The
    one decoding path of the in-memory splits and of the ones streamed from disk."""
    img = index.load_image(i)
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    if kind != "seg":
        return x, None
    m = index.segmentation(i)
    if m.shape != (size, size):
        m = np.asarray(Image.fromarray(m).resize((size, size), Image.NEAREST))
    return x, torch.from_numpy(m.astype(np.uint8))


def split_bytes(root, split: str, kind: str, load_size: int) -> int:
    """Bytes the split takes in memory at load_size (uint8 images, plus masks for seg)."""
    n = len(VOCIndex(root, split, kind="segmentation" if kind == "seg" else "main"))
    return n * load_size * load_size * (4 if kind == "seg" else 3)


class DiskSplit(torch.utils.data.Dataset):
    """A split read from disk item by item (DataLoader workers decode): (uint8 [3,S,S], labels float [C]
    for cls | mask uint8 [S,S] for seg). Same pixels as `load_split`; for splits over the memory budget."""

    def __init__(self, root, split: str, *, kind: str, load_size: int, classes=None):
        self.index = VOCIndex(root, split, kind="segmentation" if kind == "seg" else "main", classes=classes)
        if len(self.index) == 0:
            raise DatasetMissingError(f"{self.index.root}: split {split!r} is empty")
        self.kind, self.size = kind, int(load_size)
        self.classes = list(self.index.classes) if kind == "cls" else ["background", *self.index.classes]
        self.labels = torch.from_numpy(self.index.label_matrix().astype(np.float32)) if kind == "cls" else None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        x, m = load_item(self.index, i, self.kind, self.size)
        return (x, self.labels[i]) if self.kind == "cls" else (x, m)


class MemorySplit:
    """A split as in-memory tensors: images uint8 [N,3,S,S] and labels [N,C] or masks [N,S,S]."""

    def __init__(self, data: dict, kind: str):
        self.kind = kind
        self.classes = data["classes"]
        self.tensors = (data["images"], data["labels"] if kind == "cls" else data["masks"])
        self.labels = data.get("labels")

    def __len__(self) -> int:
        return int(self.tensors[0].shape[0])

    def first(self, k: int) -> torch.Tensor:
        return self.tensors[0][:k]

    def batches(self, index_lists: Iterable[list[int]], workers: int = 0):
        for idx in index_lists:
            yield tuple(t[idx] for t in self.tensors)


class StreamedSplit:
    """A split decoded from disk by `workers` DataLoader processes (same pixels as `MemorySplit`)."""

    def __init__(self, ds: DiskSplit):
        self.ds, self.kind, self.classes, self.labels = ds, ds.kind, ds.classes, ds.labels

    def __len__(self) -> int:
        return len(self.ds)

    def first(self, k: int) -> torch.Tensor:
        return torch.stack([self.ds[i][0] for i in range(min(k, len(self.ds)))])

    def batches(self, index_lists: Iterable[list[int]], workers: int = 0):
        lists = [list(map(int, x)) for x in index_lists]
        if not lists:
            return iter(())
        return iter(make_loader(self.ds, lists, workers))


def open_split(root, split: str, *, kind: str, load_size: int, cache_dir, memory_mb: float, classes=None):
    """The split in memory when it fits `memory_mb` (transfer.runtime.memory_mb), else streamed from disk.
    `classes`: data.classes (None = the tree's own list)."""
    if split_bytes(root, split, kind, load_size) <= memory_mb * 2**20:
        return MemorySplit(load_split(root, split, kind=kind, load_size=load_size, cache_dir=cache_dir,
                                      classes=classes), kind)
    log.info("%s split %s at %d px exceeds transfer.runtime.memory_mb=%g: streaming it from disk", kind, split,
             load_size, memory_mb)
    return StreamedSplit(DiskSplit(root, split, kind=kind, load_size=load_size, classes=classes))


class TensorBatches:
    """Seeded infinite mini-batch stream over in-memory tensors (sampling without replacement per pass).

    tensors: tuple of tensors sharing dim 0; `augment(batch_tuple, generator) -> batch_tuple` runs on
    the batch (vectorised; on the training device). Under DDP (`world` > 1) every rank draws the same
    global batch of `batch_size` indices and keeps its slice [rank::world]; its augmentations then come
    from a generator of its own (`aug_seed`), the order from the shared one. `state_dict` holds the
    pass order, the position and the generators: a resumed stream yields what the uninterrupted one would.
    """

    def __init__(self, tensors, batch_size: int, *, seed: int, augment: Callable | None = None,
                 device="cpu", rank: int = 0, world: int = 1):
        self.tensors = tensors
        self.n = int(tensors[0].shape[0])
        if self.n == 0:
            raise ConfigError("no training images")
        self.batch_size = min(int(batch_size), self.n)
        if world > 1 and self.batch_size % world:
            raise ConfigError(f"batch size {self.batch_size} is not divisible by the {world} processes")
        self.gen = torch.Generator().manual_seed(int(seed))
        # one process: one generator for order and augmentation (the numbers of every earlier run)
        self.aug_gen = self.gen if world == 1 else torch.Generator().manual_seed(int(seed) * 1000 + 7 + rank)
        self.augment = augment
        self.device = torch.device(device)
        self.rank, self.world = int(rank), int(world)
        self._perm, self._pos = torch.randperm(self.n, generator=self.gen), 0

    def next(self):
        if self._pos + self.batch_size > self.n:
            self._perm, self._pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self._perm[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        if self.world > 1:
            idx = idx[self.rank::self.world]
        batch = tuple(t[idx].to(self.device, non_blocking=True) for t in self.tensors)
        return self.augment(batch, self.aug_gen) if self.augment is not None else batch

    def take(self, k: int):
        for _ in range(int(k)):
            yield self.next()

    def state_dict(self) -> dict:
        out = {"perm": self._perm.clone(), "pos": self._pos, "gen": self.gen.get_state()}
        if self.aug_gen is not self.gen:
            out["aug_gen"] = self.aug_gen.get_state()
        return out

    def load_state_dict(self, state: dict) -> None:
        self._perm, self._pos = state["perm"].clone(), int(state["pos"])
        self.gen.set_state(state["gen"])
        if "aug_gen" in state and self.aug_gen is not self.gen:
            self.aug_gen.set_state(state["aug_gen"])


class StreamBatches:
    """Seeded training batches read from a streamed split: pass p visits a permutation drawn from
    (seed, p) in full batches, so the batches of any step are known ahead (the DataLoader prefetches
    them) and the state is the step count plus the augmentation generator. Under DDP each rank keeps
    the slice [rank::world] of every global batch."""

    def __init__(self, split: StreamedSplit, batch_size: int, *, seed: int, augment: Callable | None,
                 device, rank: int = 0, world: int = 1, workers: int = 0):
        self.split, self.n = split, len(split)
        self.batch_size = min(int(batch_size), self.n)
        if world > 1 and self.batch_size % world:
            raise ConfigError(f"batch size {self.batch_size} is not divisible by the {world} processes")
        self.seed, self.rank, self.world, self.workers = int(seed), int(rank), int(world), int(workers)
        self.aug_gen = torch.Generator().manual_seed(self.seed * 1000 + 11 + rank)
        self.augment, self.device, self.step = augment, torch.device(device), 0

    def _indices(self, step: int) -> list[int]:
        per_pass = self.n // self.batch_size
        p, k = divmod(step, per_pass)
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1000003 + p))
        return perm[k * self.batch_size:(k + 1) * self.batch_size][self.rank::self.world].tolist()

    def take(self, k: int):
        start, k = self.step, int(k)
        for batch in self.split.batches([self._indices(s) for s in range(start, start + k)], self.workers):
            self.step += 1
            batch = tuple(t.to(self.device, non_blocking=True) for t in batch)
            yield self.augment(batch, self.aug_gen) if self.augment is not None else batch

    def state_dict(self) -> dict:
        return {"step": self.step, "aug_gen": self.aug_gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.aug_gen.set_state(state["aug_gen"])


def train_stream(split, batch_size: int, *, seed: int, augment, rt: Runtime, workers: int = 0):
    """The training batches of a job: `TensorBatches` over a split in memory (the numbers of every
    earlier run), `StreamBatches` over one streamed from disk by `workers` DataLoader processes."""
    if isinstance(split, MemorySplit):
        return TensorBatches(split.tensors, batch_size, seed=seed, augment=augment, device=rt.device,
                             rank=rt.rank, world=rt.world_size)
    return StreamBatches(split, batch_size, seed=seed, augment=augment, device=rt.device, rank=rt.rank,
                         world=rt.world_size, workers=workers)


def to_input(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [B,3,H,W] -> float normalised with the ImageNet mean/std."""
    return normalize(images_u8.float().div_(255.0))


# --------------------------------------------------------------------------------------------------
# Vectorised batch augmentation (same random choice per sample; masks follow the images)
# --------------------------------------------------------------------------------------------------


def _rand(gen, n) -> torch.Tensor:
    return torch.rand(n, generator=gen)


def flip_rot_perm(x: torch.Tensor, gen, *, flip=True, rot90=False, channel_perm=False, masks=None):
    """Per-sample horizontal flip, rot90 (k in 0..3) and colour-channel permutation (images only)."""
    b = x.shape[0]
    if flip:
        f = (_rand(gen, b) < 0.5).to(x.device)
        x = torch.where(f.view(-1, 1, 1, 1), x.flip(-1), x)
        if masks is not None:
            masks = torch.where(f.view(-1, 1, 1), masks.flip(-1), masks)
    if rot90:  # square images: each sample turned by its k quarter turns, one group of samples per k
        k = torch.randint(0, 4, (b,), generator=gen)
        x = x.clone()
        masks = masks.clone() if masks is not None else None
        for r in (1, 2, 3):
            sel = torch.nonzero(k == r).flatten().to(x.device)
            if len(sel):
                x[sel] = torch.rot90(x[sel], r, (-2, -1))
                if masks is not None:
                    masks[sel] = torch.rot90(masks[sel], r, (-2, -1))
    if channel_perm:
        perms = torch.stack([torch.randperm(3, generator=gen) for _ in range(b)]).to(x.device)  # [B,3]
        x = x[torch.arange(b, device=x.device)[:, None], perms]  # [B,3,H,W]: whole planes, not a per-pixel gather
    return x, masks


def draw_scale_crop(gen, b: int, h: int, w: int, out_size: int, scale=(1.0, 1.0)):
    """The random choices of `scale_crop` for a batch of b images of h x w, drawn in its order:
    (scale factor, row offsets [b], column offsets [b])."""
    s = float(scale[0] + (scale[1] - scale[0]) * float(_rand(gen, 1)))
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    nh, nw = max(nh, out_size), max(nw, out_size)  # after padding
    oy = torch.randint(0, nh - out_size + 1, (b,), generator=gen)
    ox = torch.randint(0, nw - out_size + 1, (b,), generator=gen)
    return s, oy, ox


def draw_flip(gen, b: int) -> torch.Tensor:
    """The flip choices of `flip_rot_perm(flip=True)` for b images: bool [b]."""
    return _rand(gen, b) < 0.5


def apply_flip(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    return torch.where(flips.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


def scale_crop(x: torch.Tensor, gen, out_size: int, scale=(1.0, 1.0), masks=None, params=None):
    """One random scale per batch (vectorised resize), then a random out_size crop per sample
    (zero/255 padding when the scaled image is smaller). params: choices from `draw_scale_crop`
    (drawn ahead, e.g. for the test crops of a sharded evaluation) instead of drawing them from gen."""
    b, _, h, w = x.shape
    s, oy, ox = params if params is not None else draw_scale_crop(gen, b, h, w, out_size, scale)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
        if masks is not None:
            masks = F.interpolate(masks[:, None].float(), size=(nh, nw), mode="nearest")[:, 0].to(masks.dtype)
    ph, pw = max(0, out_size - nh), max(0, out_size - nw)
    if ph or pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        if masks is not None:
            masks = F.pad(masks, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=255)
        nh, nw = x.shape[-2:]
    # one slice per sample (a 4-D advanced index over every pixel took ~5 ms of a ~45 ms demo cls step)
    offsets = list(zip(oy.tolist(), ox.tolist()))  # drawn on the CPU: no device sync
    x = torch.stack([x[i, :, y:y + out_size, c:c + out_size] for i, (y, c) in enumerate(offsets)])
    if masks is not None:
        masks = torch.stack([masks[i, y:y + out_size, c:c + out_size] for i, (y, c) in enumerate(offsets)])
    return x, masks


__all__ = ["load_split", "load_item", "split_bytes", "DiskSplit", "MemorySplit", "StreamedSplit", "open_split",
           "TensorBatches", "StreamBatches", "train_stream", "to_input", "flip_rot_perm", "scale_crop",
           "draw_scale_crop", "draw_flip", "apply_flip"]
