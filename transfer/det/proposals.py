"""Object proposals for Fast R-CNN: selective search computed once per image and cached on disk.

Methods:
- "selective_search": OpenCV contrib's `cv2.ximgproc.segmentation.createSelectiveSearchSegmentation`
  (fast mode by default, as Fast R-CNN's VOC proposals; "quality" selectable). Images smaller than
  `min_side` are upscaled before segmentation (selective search finds few regions in 64 px images), images
  larger than `max_side` (when set) downscaled, and the boxes mapped back.
- "grid": NOT selective search - a dense multi-scale, multi-aspect sliding-window box grid, the
  documented fallback when OpenCV's contrib module is missing (or for speed). Labelled as such in
  every result that uses it (the settings key names the method).
- "mat" (the paper path): the selective-search proposals Fast R-CNN published, the files
  `selective_search_data/voc_2007_{train,val,trainval,test}.mat` (Fast R-CNN's
  `data/scripts/fetch_selective_search_data.sh`): `boxes` a cell array with one [N, 4] array per image,
  1-based pixel coordinates in [y1 x1 y2 x2] order, `images` the image ids (without it, the split's
  list order, which is how Fast R-CNN reads them). `file` is the path with `{split}` for the split name
  ("" = `selective_search_data/voc_<year>_{split}.mat` beside the VOCdevkit folder); the files of every
  split present are read until each requested image is found. Fast R-CNN makes them 0-based inclusive
  (`boxes[:, (1, 0, 3, 2)] - 1`); here, as for the ground truth, they become pixel edges:
  (x1 - 1, y1 - 1, x2, y2). An `.npz` file with one [N,4] xyxy 0-based array per image id works too.

Boxes are float32 [N,4] xyxy in the image's own pixel coordinates (continuous, 0-based).
Cache (never in the data folder, see `cebench.cache`): `<cache>/proposals/<method>-<hash of settings>/
<image id>-<hash of the image's name, size and mtime>.npz`, one file per image, each written atomically
(temp + fsync + os.replace) as soon as it is computed, in parallel over images with a process pool.
A job killed at any point (SIGKILL included) keeps every finished image; the rerun computes only the
rest, and a changed image gets a new entry.
"""

from __future__ import annotations

import ctypes
import io
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cebench.cache import cache_key, cache_root, ensure_outside, files_key
from cebench.data.voc import read_split
from cebench.errors import CebenchError, ConfigError, DatasetMissingError
from cebench.images import open_rgb
from cebench.io import atomic_write_bytes, atomic_write_json
from cebench.logs import progress as pbar

PROPOSAL_VERSION = 2  # 2: selective search seeded (v1 caches hold boxes in a run-dependent order)


@dataclass
class ProposalConfig:
    method: str = "selective_search"   # selective_search | mat (published files) | grid (a box grid, NOT selective
                                       # search)
    mode: str = "fast"                 # selective search strategy: fast | quality | single
    min_side: int = 64                 # upscale smaller images to this short side before segmenting
    max_side: int = 0                  # downscale larger images to this long side before segmenting (0 = never):
    #                                    the detector sees photos at a few hundred px, and selective search on a
    #                                    500 px photo takes seconds where it takes tens of ms at 171 px
    max_proposals: int = 2000          # keep the first N (selective search's own ranking)
    seed: int = 0                      # seed of selective search's pseudo-random ranking (see seed_c_rand)
    min_box: float = 4.0               # drop boxes with a side below this many (original) pixels
    grid_scales: tuple[float, ...] = (0.15, 0.25, 0.35, 0.5, 0.7, 0.9)  # grid: box side / image side
    grid_aspects: tuple[float, ...] = (0.5, 1.0, 2.0)
    grid_stride: float = 0.5           # grid: step as a fraction of the box side
    file: str = ""                     # method mat: the published files, {split} replaced ("" = beside VOCdevkit)
    cache_dir: str = ""                # "" = <the command's cache folder>/proposals (see cebench.cache)
    workers: int = 2


def settings_key(cfg: ProposalConfig) -> str:
    d = asdict(cfg)
    for k in ("file", "cache_dir", "workers"):
        d.pop(k)
    if not cfg.max_side:  # the key of every cache written before max_side existed
        d.pop("max_side")
    if cfg.method != "grid":
        for k in ("grid_scales", "grid_aspects", "grid_stride"):
            d.pop(k)
    d["version"] = PROPOSAL_VERSION
    return f"{cfg.method}-{cache_key(d)}"


def has_selective_search() -> bool:
    try:
        import cv2

        return hasattr(cv2, "ximgproc") and hasattr(cv2.ximgproc.segmentation, "createSelectiveSearchSegmentation")
    except ImportError:  # pragma: no cover
        return False


# --------------------------------------------------------------------------------------------- methods
def seed_c_rand(seed: int) -> bool:
    """Seed the C library's `rand()`, which OpenCV's selective search draws its ranking from
    (`rank = rand() / RAND_MAX * level`). Unseeded, the order of the boxes - hence which RoIs Fast R-CNN
    samples and which boxes `max_proposals` keeps - depended on how many images the process had
    segmented before, i.e. on how the pool split the work: detection was not reproducible. False when
    no C library is found (the caller then falls back to a canonical order)."""
    try:  # the process's own symbols (libc among them); ctypes.util.find_library would spawn
        srand = ctypes.CDLL(None).srand  # `ldconfig`, which deadlocked in the forked pool workers
    except (OSError, AttributeError, TypeError):  # pragma: no cover - e.g. Windows
        return False
    srand(ctypes.c_uint(seed & 0xFFFFFFFF))
    return True


def selective_search(rgb: np.ndarray, cfg: ProposalConfig) -> np.ndarray:
    """rgb uint8 [H,W,3] -> boxes float32 [N,4] xyxy (original pixels)."""
    import cv2

    if not has_selective_search():
        raise CebenchError("selective search needs opencv-contrib (cv2.ximgproc); use proposals.method=grid")
    cv2.setNumThreads(1)
    h, w = rgb.shape[:2]
    scale = max(1.0, cfg.min_side / min(h, w))
    if cfg.max_side and max(h, w) * scale > cfg.max_side:
        scale = cfg.max_side / max(h, w)
    img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if scale != 1.0:
        img = cv2.resize(img, (int(round(w * scale)), int(round(h * scale))),
                         interpolation=cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA)
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(img)
    {"fast": ss.switchToSelectiveSearchFast, "quality": ss.switchToSelectiveSearchQuality,
     "single": ss.switchToSingleStrategy}[cfg.mode]()
    seeded = seed_c_rand(cfg.seed)
    rects = np.asarray(ss.process(), dtype=np.float32).reshape(-1, 4)  # x, y, w, h
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], 1) / scale
    if not seeded:  # pragma: no cover - deterministic, though the ranking is lost
        boxes = boxes[np.lexsort(boxes.T[::-1])]
    return boxes


def grid_boxes(h: int, w: int, cfg: ProposalConfig) -> np.ndarray:
    """The fallback: dense multi-scale sliding windows (NOT selective search), vectorised."""
    side = min(h, w)
    out = []
    for s in sorted(cfg.grid_scales, reverse=True):  # large first: the cap drops small ones
        for a in cfg.grid_aspects:
            bw, bh = s * side * np.sqrt(a), s * side / np.sqrt(a)
            if bw > w or bh > h:
                continue
            step = max(1.0, cfg.grid_stride * min(bw, bh))
            xs = np.arange(0.0, w - bw + 1e-6, step)
            ys = np.arange(0.0, h - bh + 1e-6, step)
            X, Y = np.meshgrid(xs, ys)
            out.append(np.stack([X.ravel(), Y.ravel(), X.ravel() + bw, Y.ravel() + bh], 1))
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 4), np.float32)


def clean_boxes(boxes: np.ndarray, h: int, w: int, cfg: ProposalConfig) -> np.ndarray:
    """Clip, drop small boxes, remove exact duplicates (keeping the first, i.e. the method's order), cap."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    boxes = np.clip(boxes, 0, np.array([w, h, w, h], dtype=np.float32))
    keep = ((boxes[:, 2] - boxes[:, 0]) >= cfg.min_box) & ((boxes[:, 3] - boxes[:, 1]) >= cfg.min_box)
    boxes = boxes[keep]
    _, first = np.unique(np.round(boxes, 1), axis=0, return_index=True)
    boxes = boxes[np.sort(first)]
    return boxes[: cfg.max_proposals]


def compute_one(path, cfg: ProposalConfig) -> np.ndarray:
    rgb = np.asarray(open_rgb(path))
    h, w = rgb.shape[:2]
    raw = grid_boxes(h, w, cfg) if cfg.method == "grid" else selective_search(rgb, cfg)
    return clean_boxes(raw, h, w, cfg)


def _save_npz(path: Path, boxes: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, boxes=boxes.astype(np.float32))
    atomic_write_bytes(path, buf.getvalue())


def _load_npz(path: Path) -> np.ndarray | None:
    """A cached entry, or None when it is absent or unreadable (then it is computed again)."""
    try:
        with np.load(path) as z:
            return np.asarray(z["boxes"], dtype=np.float32).reshape(-1, 4)
    except (OSError, ValueError, KeyError, EOFError):
        return None


def _worker(args) -> int:
    items, cfg = args
    torch.set_num_threads(1)
    for image_path, out_path in items:
        _save_npz(Path(out_path), compute_one(image_path, cfg))
    return len(items)


# --------------------------------------------------------------------------------------------- public
def cache_folder(voc_root, cfg: ProposalConfig) -> Path:
    """`<cache_dir>/<method>-<settings hash>`; refused inside the data folder."""
    base = Path(cfg.cache_dir) if cfg.cache_dir else cache_root() / "proposals"
    return ensure_outside(base, voc_root) / settings_key(cfg)


def image_path(voc_root, image_id: str) -> Path:
    return Path(voc_root) / "JPEGImages" / f"{image_id}.jpg"


METHODS = ("selective_search", "mat", "grid")
def entry_path(folder: Path, image: Path, image_id: str) -> Path:
    """The cache file of one image: keyed by its id and by the image file's name, size and mtime."""
    return folder / f"{image_id}-{files_key([image], length=12)}.npz"


def load_proposals(voc_root, ids, cfg: ProposalConfig, *, split: str = "", progress: bool = True) -> dict:
    """{image id: float32 [N,4] xyxy}: the published files (method mat), else from the cache, computing
    what is missing."""
    ids = list(ids)
    if cfg.method not in METHODS:
        raise ConfigError(f"proposals.method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    if cfg.method == "mat" or cfg.file:  # a given file (.mat or .npz) replaces the computation
        return published_proposals(voc_root, ids, cfg)
    folder = cache_folder(voc_root, cfg)
    folder.mkdir(parents=True, exist_ok=True)
    settings = folder / "settings.json"
    if not settings.exists():
        atomic_write_json(settings, asdict(cfg), indent=1)
    entries = {i: entry_path(folder, image_path(voc_root, i), i) for i in ids}
    out = {i: _load_npz(p) for i, p in entries.items()}
    todo = [(str(image_path(voc_root, i)), str(entries[i])) for i in ids if out[i] is None]
    if todo:
        compute_missing(todo, cfg, progress=progress)
        for i in ids:
            if out[i] is None:
                out[i] = _load_npz(entries[i])
    return out


def compute_missing(todo, cfg: ProposalConfig, *, progress: bool = True) -> float:
    """Compute and cache proposals for [(image path, npz path)]; returns images/s."""
    missing = [p for p, _ in todo if not Path(p).is_file()]
    if missing:
        raise DatasetMissingError(f"proposals: {len(missing)} image(s) missing, e.g. {missing[0]}")
    t0 = time.perf_counter()
    workers = max(1, min(cfg.workers, os.cpu_count() or 1, len(todo) // 16 or 1))
    chunk = max(1, min(64, len(todo) // (4 * workers) or 1))
    chunks = [(todo[k:k + chunk], cfg) for k in range(0, len(todo), chunk)]
    bar = pbar(total=len(todo), desc=f"proposals ({cfg.method})", disable=None if progress else True)
    if workers == 1:
        for ch in chunks:
            bar.update(_worker(ch))
    else:
        with ProcessPoolExecutor(workers) as ex:
            for n in ex.map(_worker, chunks):
                bar.update(n)
    bar.close()
    return len(todo) / max(time.perf_counter() - t0, 1e-9)


_FETCH = ("Fast R-CNN's published selective-search proposals: run fast-rcnn's "
          "data/scripts/fetch_selective_search_data.sh (selective_search_data.tgz) and put the folder "
          "selective_search_data/ beside VOCdevkit, or give det.proposals.file=DIR/voc_2007_{split}.mat; "
          "or compute them with det.proposals.method=selective_search")


def published_pattern(voc_root, cfg: ProposalConfig) -> str:
    """The published files' path with `{split}`: cfg.file, else beside the VOCdevkit folder."""
    if cfg.file:
        return cfg.file
    voc = Path(voc_root)
    year = voc.name[3:] if voc.name.startswith("VOC") else "2007"
    return str(voc.parent.parent / "selective_search_data" / f"voc_{year}_{{split}}.mat")


def _hw(voc_root, image_id: str) -> tuple[int, int]:
    from PIL import Image

    with Image.open(image_path(voc_root, image_id)) as im:
        return im.height, im.width


def published_proposals(voc_root, ids, cfg: ProposalConfig) -> dict:
    """Proposals of `ids` from the published files (every split's file present, trainval and test first),
    cleaned like the computed ones (clipped, small and duplicate boxes dropped, at most max_proposals)."""
    pattern = published_pattern(voc_root, cfg)
    want, table = set(ids), {}
    splits = ("trainval", "test", "train", "val") if "{split}" in pattern else ("",)
    found = []
    for split in splits:
        path = Path(pattern.replace("{split}", split))
        if not want - set(table):
            break
        if not path.is_file():
            continue
        found.append(str(path))
        order = None
        if split:
            try:
                order = read_split(voc_root, split)
            except DatasetMissingError:
                order = None
        table.update(read_proposal_file(path, None, order=order))
    if not found:
        raise DatasetMissingError(f"proposals.method=mat: {pattern} not found ({_FETCH})")
    absent = [i for i in ids if i not in table]
    if absent:
        raise DatasetMissingError(f"proposals: no boxes for {len(absent)} image(s) in {', '.join(found)}, "
                                  f"e.g. {absent[0]} ({_FETCH})")
    return {i: clean_boxes(table[i], *_hw(voc_root, i), cfg) for i in ids}


def read_proposal_file(path, ids, *, order=None) -> dict:
    """Published proposals: Fast R-CNN's .mat or an .npz {id: [N,4] xyxy 0-based}; {id: float32 [N,4]
    xyxy pixel edges} for `ids` (None: every image in the file).

    .mat: `boxes` (a cell array, one [N,4] per image, 1-based [y1 x1 y2 x2]) and `images` (the ids; when
    absent the boxes are taken in the order of `order`, the split list, as Fast R-CNN does)."""
    path = Path(path)
    if path.is_dir():
        raise CebenchError(f"proposal file {path} is a folder, expected Fast R-CNN's .mat or an .npz file")
    if not path.is_file():
        raise DatasetMissingError(f"proposal file {path} not found ({_FETCH})")
    if path.suffix == ".mat":
        from scipy.io import loadmat

        try:  # whatever the parser raises on a file that is not one (random bytes, truncated, empty)
            mat = loadmat(str(path))
            cells = mat["boxes"].ravel()
        except Exception as exc:  # noqa: BLE001 - the boundary of this file's loader
            raise CebenchError(f"{path}: not a Fast R-CNN proposal file with a 'boxes' cell array "
                               f"({type(exc).__name__}: {str(exc)[:120]})") from None
        if "images" in mat:
            names = [str(np.asarray(x).ravel()[0]) for x in mat["images"].ravel()]
        elif order is not None:
            names = list(order)
        else:
            raise CebenchError(f"{path}: no 'images' list in the file and no split list to align its boxes with")
        if len(names) != len(cells):
            raise CebenchError(f"{path}: {len(cells)} box arrays for {len(names)} images")
        table = {}
        for n, b in zip(names, cells):
            yx = np.asarray(b, dtype=np.float32).reshape(-1, 4)  # 1-based [y1 x1 y2 x2], inclusive
            table[n] = np.stack([yx[:, 1] - 1, yx[:, 0] - 1, yx[:, 3], yx[:, 2]], 1)
    else:
        try:
            with np.load(path, allow_pickle=False) as z:
                table = {k: np.asarray(z[k], dtype=np.float32).reshape(-1, 4) for k in z.files}
        except Exception as exc:  # noqa: BLE001 - the boundary of this file's loader
            text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            raise CebenchError(f"proposal file {path}: not a readable proposal file ({type(exc).__name__}"
                               f"{': ' + text if text else ''}); expected Fast R-CNN's .mat (images, boxes) or an "
                               f".npz of [N,4] boxes per image id") from None
    if ids is None:
        return table
    absent = [i for i in ids if i not in table]
    if absent:
        raise DatasetMissingError(f"proposal file {path} has no boxes for {len(absent)} image(s), e.g. {absent[0]}")
    return {i: table[i] for i in ids}


__all__ = ["ProposalConfig", "settings_key", "has_selective_search", "selective_search", "grid_boxes",
           "clean_boxes", "compute_one", "load_proposals", "compute_missing", "read_proposal_file", "cache_folder",
           "published_proposals", "published_pattern", "METHODS"]
