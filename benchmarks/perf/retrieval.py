"""`cebench bench retrieval`: features/s per extractor, our HOG against scikit-image's, FAISS index
build time and queries/s (flat, IVF, HNSW) against scikit-learn's brute-force NearestNeighbors.

Rates are the best of `repeat` timed calls after one untimed call."""

from __future__ import annotations

import numpy as np
import torch

from cebench.features.hog import hog
from cebench.features.index import FeatureIndex, brute_force_search, faiss_gpu_available
from cebench.io import atomic_write_json
from cebench.pretrain.models import AlexNetConfig, build_encoder
from cebench.retrieval.patches import encoder_inputs
from cebench.runtime import choose_device

from .knn import recall_at_k
from .timing import timed


def _best_rate(fn, n: int, repeat: int = 2, device=None) -> float:
    """n / the fastest of `repeat` timed calls of fn, after one untimed call."""
    fn()
    return n / min(timed(fn, device)[1] for _ in range(repeat))


def bench_retrieval(out_path, device: str = "auto", quick: bool = False, *, n_patches: int = 1024,
                    patch_size: int = 32, n_db: int = 20000, n_queries: int = 500, dim: int = 1024,
                    k: int = 10) -> dict:
    """Run the retrieval speed benchmark, write JSON atomically to out_path, return the dict."""
    from skimage.feature import hog as sk_hog
    from sklearn.neighbors import NearestNeighbors

    if quick:
        n_patches, n_db, n_queries = 128, 2000, 100
    repeat = 1 if quick else 2
    dev = choose_device(device)
    g = torch.Generator().manual_seed(0)
    patches = torch.randint(0, 256, (n_patches, 3, patch_size, patch_size), dtype=torch.uint8, generator=g)
    x01 = patches.float() / 255.0
    res: dict = dict(device=str(dev), torch_threads=torch.get_num_threads(), n_patches=n_patches,
                     patch_size=patch_size, faiss_gpu=faiss_gpu_available())
    cell = max(4, patch_size // 8)
    n_sk = min(n_patches, 256)
    np_imgs = x01[:n_sk].permute(0, 2, 3, 1).double().numpy()
    res["hog_skimage_img_s"] = _best_rate(lambda: [sk_hog(im, 9, (cell, cell), (2, 2), channel_axis=-1)
                                                   for im in np_imgs], n_sk, 1)
    xd = x01.to(dev)
    res["hog_ours_exact_img_s"] = _best_rate(lambda: hog(xd, 9, cell, 2), n_patches, repeat, dev)
    res["hog_ours_fast_img_s"] = _best_rate(lambda: hog(xd, 9, cell, 2, exact_orientation=False), n_patches,
                                            repeat, dev)
    res["hog_speedup_vs_skimage"] = res["hog_ours_exact_img_s"] / res["hog_skimage_img_s"]
    torch.manual_seed(0)
    enc = build_encoder(AlexNetConfig.demo()).eval().to(dev)
    inp = encoder_inputs(patches, enc.cfg.input_size).to(dev)
    with torch.no_grad():
        for layer in ("conv3", "pool5"):
            res[f"random_alexnet_demo_{layer}_img_s"] = _best_rate(
                lambda layer=layer: enc.forward_intermediates(inp, [layer]), n_patches, repeat, dev)
    # nearest neighbours on clustered, L2-normalised vectors (pool5-sized)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((100, dim)).astype(np.float32)
    db = centres[rng.integers(0, 100, n_db)] + 0.5 * rng.standard_normal((n_db, dim)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = db[rng.choice(n_db, n_queries, replace=False)] + 0.05 * rng.standard_normal((n_queries, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    res.update(n_db=n_db, n_queries=n_queries, dim=dim, k=k)
    _, ref = brute_force_search(db, q, k)
    for kind in ("flat", "ivf", "hnsw"):
        index, res[f"faiss_{kind}_build_s"] = timed(lambda kind=kind: FeatureIndex(
            dim, kind=kind, nlist=256, nprobe=16, hnsw_m=16, ef_search=64, ef_construction=64).add(db))
        res[f"faiss_{kind}_queries_s"] = _best_rate(lambda: index.search(q, k), n_queries, repeat)
        res[f"faiss_{kind}_recall_at_{k}"] = recall_at_k(index.search(q, k)[1], ref)
    nn_, res["sklearn_brute_build_s"] = timed(
        lambda: NearestNeighbors(n_neighbors=k, algorithm="brute", metric="euclidean").fit(db))
    res["sklearn_brute_queries_s"] = _best_rate(lambda: nn_.kneighbors(q), n_queries, repeat)
    res[f"sklearn_brute_recall_at_{k}"] = recall_at_k(nn_.kneighbors(q)[1], ref)
    res["faiss_flat_speedup_vs_sklearn"] = res["faiss_flat_queries_s"] / res["sklearn_brute_queries_s"]
    atomic_write_json(out_path, res)
    return res
