"""`cebench bench folder [--photos 1000]`: `cebench retrieve` over a folder of photos, as a user runs it.

The photos are made from the sample photographs scikit-image and scikit-learn ship (random crops,
a third of them tiled 2x2, resized to a long side drawn log-uniformly from 68 to 2,400 px, JPEG
quality 90) in a temporary folder that is deleted afterwards. Measured: the wall time of the
`cebench retrieve` command (a fresh process, HOG features, default settings) with an empty cache and
again with the cache filled, its peak resident memory, the cache's size on disk, the number of patches,
and how much the float16 storage changes the neighbours: recall@10 of the top-10 found with the
float16 features against those found with float32 ones, for 200 database patches as queries on the
first 64 photos. The same command with CNN features (`--features random`, a demo AlexNet) is timed with an
empty cache in the precision amp=auto chooses and in fp32. Times depend on the machine's load.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cebench.features.hog import grid_hog
from cebench.features.index import FeatureIndex
from cebench.io import atomic_write_json
from cebench.retrieval.evaluate import HOGFeatures
from cebench.retrieval.folder import PatchGrid, _finish, load_image
from cebench.retrieval.patches import patch_positions
from cebench.runtime import resolve_amp

from .knn import recall_at_k
from .timing import timed


def make_photos(folder: Path, n: int = 1000, seed: int = 0) -> list[Path]:
    """n JPEGs of varied sizes (68-2400 px long side) from the installed packages' sample photos."""
    import skimage.data as sd
    from sklearn.datasets import load_sample_images

    sources = [Image.fromarray(a) for a in load_sample_images().images]
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
                 "retina", "cat", "colorwheel"):
        try:
            a = getattr(sd, name)()
        except Exception:  # noqa: BLE001 - a sample missing from this scikit-image version
            continue
        if a.ndim == 3 and a.shape[2] == 3:
            sources.append(Image.fromarray(a))
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        src = sources[i % len(sources)]
        w, h = src.size
        cw, ch = int(w * rng.uniform(0.5, 1)), int(h * rng.uniform(0.5, 1))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im = src.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.3:  # a 2x2 mirrored tiling: large photos with detail everywhere
            big = Image.new("RGB", (2 * cw, 2 * ch))
            for k, t in enumerate((None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM,
                                   Image.Transpose.ROTATE_180)):
                big.paste(im if t is None else im.transpose(t), ((k % 2) * cw, (k // 2) * ch))
            im = big
        long_side = int(np.exp(rng.uniform(np.log(68), np.log(2400))))
        s = long_side / max(im.size)
        im = im.resize((max(8, round(im.width * s)), max(8, round(im.height * s))), Image.BICUBIC)
        paths.append(folder / f"photo_{i:04d}.jpg")
        im.save(paths[-1], quality=90)
    return paths


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _run_retrieve(photos: Path, out: Path, cache: Path, query: str, *extra: str) -> float:
    cmd = [sys.executable, "-m", "cebench.benchmarks.cli", "retrieve", "--images", str(photos), "--query", query,
           "--out", str(out), "--cache", str(cache), *extra]
    env = {**os.environ, "CEBENCH_NO_PROGRESS": "1"}
    return timed(lambda: subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL))[1]


def float16_recall(photos: list[Path], grid: PatchGrid, n_queries: int = 200, k: int = 10) -> float:
    """recall@k of the neighbours found with the float16-stored HOG against the float32 features
    (database patches as queries, each query's own patch left out)."""
    h = HOGFeatures(9, max(4, grid.size // 8), 2)
    out = []
    for p in photos:  # what folder_features computes before it casts to float16
        img = load_image(p, grid)
        c = patch_positions(img.shape[1], img.shape[2], grid.size, mode="grid", stride=grid.stride)
        if len(c):
            out.append(_finish(grid_hog(img.float() / 255.0, c, grid.size, h.orientations, h.cell, h.block)))
    f32 = torch.cat(out).numpy()
    f16 = f32.astype(np.float16)
    q = np.random.default_rng(0).choice(len(f32), min(n_queries, len(f32)), replace=False)
    ref = FeatureIndex(f32.shape[1], use_gpu=False).add(f32).search(f32[q], k + 1)[1][:, 1:]
    got = FeatureIndex(f16.shape[1], use_gpu=False).add(f16).search(f16[q].astype(np.float32), k + 1)[1][:, 1:]
    return recall_at_k(got, ref)


def bench_folder(out_path=None, *, n_photos: int = 1000, quick: bool = False) -> dict:
    if quick:
        n_photos = 24
    tmp = Path(tempfile.mkdtemp(prefix="cebench-folder-bench-"))
    try:
        photos = make_photos(tmp / "photos", n_photos)
        sizes = [max(Image.open(p).size) for p in photos]
        query = f"{photos[3]}:4,4,60,60"
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t_fresh = _run_retrieve(tmp / "photos", tmp / "out" / "grid.png", tmp / "cache", query)
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t_cached = _run_retrieve(tmp / "photos", tmp / "out" / "grid2.png", tmp / "cache", query)
        chunks = sorted((tmp / "cache").rglob("chunk_*.npz"))
        n_patches = 0
        for c in chunks:
            with np.load(c) as z:
                n_patches += len(z["feats"])
        grid = PatchGrid()
        res = {"photos": n_photos, "long_side_px": [int(min(sizes)), int(max(sizes))], "features": "hog",
               "patch": grid.size, "stride": grid.stride, "max_side": grid.max_side, "patches": n_patches,
               "fresh_s": round(t_fresh, 1), "cached_s": round(t_cached, 1),
               "cache_mb": round(_du(tmp / "cache") / 2**20, 1),
               "peak_rss_mb": round(max(rss, before) / 1024, 1) if rss > before else None,
               "float16_recall_at_10_vs_float32": round(float16_recall(photos[:64], grid), 4),
               "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
        # CNN features (a random demo AlexNet: the compute of --features ce without a checkpoint), empty cache,
        # in the precision amp=auto picks on this machine and in fp32, one after the other
        amp_auto = resolve_amp("auto", "cpu")
        res["cnn"] = {"features": "random (demo AlexNet, pool5)", "auto_precision": amp_auto}
        for amp in dict.fromkeys([amp_auto, "none"]):
            res["cnn"][f"fresh_s_{amp}"] = round(_run_retrieve(tmp / "photos", tmp / "out" / f"cnn_{amp}.png",
                                                               tmp / f"cache_{amp}", query, "--features", "random",
                                                               "--amp", amp), 1)
            res["cnn"][f"cache_mb_{amp}"] = round(_du(tmp / f"cache_{amp}") / 2**20, 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if out_path is not None:
        atomic_write_json(Path(out_path), res)
    return res
