"""`cebench retrieve` at folder scale: the feature cache (float16 chunks in the cache folder, never in
the images), resuming after SIGKILL, the cache reader fuzzed, dense HOG equal to per-patch HOG, the
kNN-at-scale benchmark and FeatureIndex's "auto" kind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from cebench.benchmarks.cli import main as cli_main
from cebench.benchmarks.perf.knn import bench_knn, recall_at_k
from cebench.errors import ConfigError
from cebench.features.hog import grid_hog, hog
from cebench.features.index import AUTO_IVF_MIN, FeatureIndex
from cebench.retrieval.cli import retrieve
from cebench.retrieval.folder import CHUNK_IMAGES
from cebench.retrieval.patches import crop_patches, patch_positions

torch.set_num_threads(1)
N_IMAGES = 2 * CHUNK_IMAGES + 5  # three chunks


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        arr[: h // 3] = rng.integers(0, 255, 3)  # a flat band: zero gradients and colour ties
        Image.fromarray(arr).save(d / f"im{i:02d}.{'png' if i % 3 else 'jpg'}")
    return d


def _argv(folder, out, cache, *extra):
    return ["retrieve", "--images", str(folder), "--query", f"{folder / 'im00.jpg'}:2,2,30,30", "--patch-size", "32",
            "--k", "3", "--out", str(out), "--cache", str(cache), *extra]


def _chunks(cache):
    return sorted(cache.rglob("chunk_*.npz"))


@pytest.fixture(scope="module")
def full_run(folder, tmp_path_factory):
    base = tmp_path_factory.mktemp("full")
    assert cli_main(_argv(folder, base / "grid.png", base / "cache")) == 0
    return base


def test_cache_holds_float16_chunks_outside_the_images(folder, full_run):
    chunks = _chunks(full_run / "cache")
    assert len(chunks) == 3 and (chunks[0].parent / "meta.json").is_file()
    with np.load(chunks[0]) as z:
        feats, boxes = z["feats"], z["boxes"]
    assert feats.dtype == np.float16 and feats.shape[1] == 1764  # 32 px HOG: 4 px cells, 7x7 blocks of 2x2 cells x 9
    np.testing.assert_allclose(np.linalg.norm(feats.astype(np.float32), axis=1), 1.0, atol=2e-3)
    assert boxes.shape == (len(feats), 3) and set(np.unique(boxes[:, 0])) <= set(range(CHUNK_IMAGES))
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"im{i:02d}.{'png' if i % 3 else 'jpg'}"
                                                              for i in range(N_IMAGES))  # nothing written there
    with pytest.raises(ConfigError, match="inside the data folder"):
        retrieve(folder, [str(folder / "im00.jpg")], ["hog"], full_run / "x.png", cache_dir=folder / "cache",
                 patch_size=32)


def test_killed_midway_the_rerun_reuses_the_finished_chunks(folder, full_run, tmp_path, capsys):
    cache, out = tmp_path / "cache", tmp_path / "grid.png"
    script = textwrap.dedent(f"""
        import os, signal, torch
        torch.set_num_threads(1)
        from cebench.retrieval.cli import retrieve
        def kill(i):
            if i == 1:  # SIGKILL right after the second chunk is on disk: no cleanup runs
                os.kill(os.getpid(), signal.SIGKILL)
        retrieve({str(folder)!r}, [{str(folder / 'im00.jpg')!r} + ":2,2,30,30"], ["hog"], {str(out)!r},
                 cache_dir={str(cache)!r}, patch_size=32, k=3, workers=1, on_chunk=kill)
    """)
    env = {**os.environ, "CEBENCH_NO_PROGRESS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    done = _chunks(cache)
    assert len(done) == 2 and not out.exists()
    assert not list(cache.rglob("*.tmp"))  # the atomic writes left no partial file
    stamps = [p.stat().st_mtime_ns for p in done]
    capsys.readouterr()
    assert cli_main(_argv(folder, out, cache)) == 0
    assert "reusing 2 of 3 cached chunks" in capsys.readouterr().err
    assert [p.stat().st_mtime_ns for p in done] == stamps and out.is_file()
    for a, b in zip(_chunks(cache), _chunks(full_run / "cache")):  # same features as the uninterrupted run
        with np.load(a) as za, np.load(b) as zb:
            np.testing.assert_array_equal(za["feats"], zb["feats"])
            np.testing.assert_array_equal(za["boxes"], zb["boxes"])


def _spoil(path, variant):
    data = path.read_bytes()
    path.unlink()
    if variant == "random":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif variant == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif variant == "empty":
        path.write_bytes(b"")
    else:
        path.mkdir()


@pytest.mark.parametrize("which", ["chunk", "meta"])
@pytest.mark.parametrize("variant", ["random", "truncated", "empty", "folder"])
def test_damaged_cache_file_gives_one_line_naming_it(folder, full_run, tmp_path, capsys, which, variant):
    cache = tmp_path / "cache"
    shutil.copytree(full_run / "cache", cache)
    target = _chunks(cache)[0] if which == "chunk" else next(cache.rglob("meta.json"))
    _spoil(target, variant)
    out = tmp_path / "grid.png"
    capsys.readouterr()
    rc = cli_main(_argv(folder, out, cache))  # an exception escaping here (a traceback) fails the test
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: ") and str(target) in err[0], err
    assert "damaged retrieval cache file" in err[0] and "Traceback" not in err[0]
    assert not out.exists()


def test_grid_hog_equals_per_patch_hog():
    g = torch.Generator().manual_seed(0)
    for (h, w, size, stride, cell, block) in [(70, 90, 32, 16, 4, 2), (75, 64, 64, 32, 8, 2), (64, 64, 64, 32, 8, 2),
                                              (100, 130, 48, 24, 6, 3), (50, 61, 16, 8, 4, 2)]:
        img = torch.randint(0, 256, (3, h, w), generator=g).float() / 255
        img[:, 5:25, 10:40] = 0.5  # flat: zero gradients, every channel tied
        img[0, 30:40] = img[1, 30:40]  # two channels tied
        corners = patch_positions(h, w, size, mode="grid", stride=stride)
        ref = hog(crop_patches(img, corners, size), 9, cell, block)
        got = grid_hog(img, corners, size, 9, cell, block)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="lattice"):
        grid_hog(img, torch.tensor([[0, 0], [3, 0]]), 16, 9, 4, 2)


def test_recall_and_feature_index_auto_and_float16():
    ref = np.array([[1, 2, 3], [4, 5, 6]])
    assert recall_at_k(np.array([[3, 2, 9], [7, 8, 9]]), ref) == pytest.approx(2 / 6)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    idx = FeatureIndex(16, kind="auto", use_gpu=False).add(x.astype(np.float16), chunk=128)
    assert idx.kind == "flat" and idx.ntotal == 500 and AUTO_IVF_MIN > 500
    ids = idx.search(x[:5], 1)[1][:, 0]
    assert list(ids) == [0, 1, 2, 3, 4]


def test_knn_benchmark_quick_writes_every_method(tmp_path):
    res = bench_knn(tmp_path / "knn.json", quick=True, threads=1)
    m = res["methods"]
    assert (res["n"], res["queries"], res["k"]) == (20_000, 200, 10)  # quick's sizes
    assert {"sklearn brute", "faiss flat", "faiss ivf32", "faiss hnsw16", "FeatureIndex auto"} <= set(m)
    assert m["faiss flat"]["recall_at_10"] == 1.0 and m["FeatureIndex auto"]["recall_at_10"] == 1.0
    # nprobe: the smallest setting tried whose validation recall reaches the target
    ivf = m["faiss ivf32"]
    tried = {int(k): v for k, v in ivf["val_recall_by_nprobe"].items()}
    assert tried[ivf["nprobe"]] >= 0.95 and all(r < 0.95 for k, r in tried.items() if k < ivf["nprobe"])
    # every speed-up is scikit-learn's time over the method's build + search; the stored times are rounded
    # to the ms and the speed-up to 0.01, so it lies within the bounds those roundings leave
    t_sk = m["sklearn brute"]["total_s"]
    for name, row in m.items():
        if "total_s" in row and name != "sklearn brute":
            assert row["total_s"] == pytest.approx(row["build_s"] + row["search_s"], abs=1.5e-3), name
            lo = (t_sk - 5e-4) / (row["total_s"] + 5e-4) - 5e-3
            hi = (t_sk + 5e-4) / max(row["total_s"] - 5e-4, 1e-9) + 5e-3
            assert lo <= row["speedup_vs_sklearn"] <= hi, (name, row, t_sk)
    assert (tmp_path / "knn.json").is_file()
