"""In-memory VOC splits for fine-tuning, read through the shared readers in `cebench.data.voc`.

Images are read once, resized to `load_size` x `load_size` (uint8), and cached as one .pt file per
(split, size, class list, and the name, size and mtime of every file it was read from) in the
command's cache folder (never the data folder, see `cebench.cache`), so every (init, seed, lr) job of a
run loads them in milliseconds and augments on the training device, vectorised; a changed image or
split file makes a new entry. Segmentation masks are resized with nearest neighbour (255 = ignore).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cebench.cache import ensure_outside, files_key
from cebench.data.voc import VOCIndex
from cebench.errors import DatasetMissingError
from cebench.images import normalize
from cebench.io import atomic_torch_save

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


__all__ = ["load_split", "load_item", "split_bytes", "DiskSplit", "to_input", "flip_rot_perm", "scale_crop",
           "draw_scale_crop", "draw_flip", "apply_flip"]
