"""FAISS index wrapper shared by retrieval and the nearest-neighbour inpainting baseline.

`FeatureIndex(dim, kind="flat"|"ivf"|"ivf-gemm"|"hnsw"|"auto", metric="ip"|"l2")`: exact search by default, IVF or
HNSW for millions of vectors; "auto" picks flat below `AUTO_IVF_MIN` vectors and from there ivf-gemm
(`gemm_ivf.GemmIVF`; faiss IVF when a GPU is used). On a machine where faiss has GPU support and a GPU is
visible, flat and IVF indexes run on the GPU (`use_gpu="auto"`); HNSW always runs on the CPU (faiss has no
GPU HNSW). Scores: inner products (higher is nearer) for "ip", squared L2 distances (lower is nearer) for
"l2", as faiss returns them.

Recall calibration: an approximate index (ivf, ivf-gemm, hnsw, and auto when it resolves to one of them)
measures its own recall@k when it is built and raises nprobe (efSearch for HNSW) until the recall reaches
`recall_target`, or searches exactly where that would be no faster than exact search. What it measured and
chose is `FeatureIndex.calibration` (saved and loaded with the index); `describe()` says it in one line.
`recall_target=None` keeps the settings as given (what the kNN benchmark's fixed-setting rows use).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from cebench.errors import CebenchError
from cebench.io import atomic_target

from .gemm_ivf import GemmIVF, in_threads, row_topk

KINDS = ("flat", "ivf", "ivf-gemm", "hnsw", "auto")
APPROXIMATE = ("ivf", "ivf-gemm", "hnsw")
# "auto": exact search below AUTO_IVF_MIN vectors; from there ivf-gemm on the CPU (faiss IVF on a GPU) with
# `auto_gemm_nlist(n)` lists (512 at 1M) chosen in a 16-d PCA projection, the build that won `cebench bench
# knn --n 1000000` build included (results/bench_knn.json), and nprobe calibrated on the data (from 1
# up): no fixed nprobe keeps its recall on every kind of data (results/bench.md: the nprobe each
# distribution of `cebench bench knn` needed).
AUTO_IVF_MIN = 500_000
# without calibration (recall_target=None) auto keeps the fixed settings of earlier versions:
AUTO_NPROBE = 4     # faiss IVF (GPU): 1M vectors, nlist 256: nprobe 2 gave recall@10 0.986; 4 for margin
AUTO_GEMM_NPROBE = 3  # ivf-gemm: recall@10 0.971 on the 1000-cluster mixture of the kNN benchmark
AUTO_GEMM_COARSE_DIM = 16
IVF_TRAIN_PER_LIST = 64  # k-means sample: 64 points per list (faiss wants >= 39), drawn at random
# ivf-gemm: 40 per list (just over faiss's 39; the k-means runs in the PCA projection): at 1M x 256 the
# quantizer's training is then ~0.1 s of a ~0.6 s build + search (`cebench bench knn`, benchmarks/perf/knn.py)
GEMM_TRAIN_PER_LIST = 40
METRICS = ("ip", "l2")
# calibration: CALIBRATION_QUERIES of the indexed vectors (a seeded sample) are the queries; the recall is
# their mean recall@k, and a setting passes when that mean minus RECALL_Z standard errors of it (a one-sided
# 95% lower bound over the sampled queries) reaches the target.
CALIBRATION_QUERIES = 200
CALIBRATION_SEED = 0
RECALL_Z = 1.645
# exact search instead when the lists the target needs hold more than this share of the vectors per query:
# an IVF search costs about what exact search costs per vector scanned, plus gathering the lists (ivf-gemm)
# or a scan per (query, list) pair (faiss), so at half the vectors it is no faster than scanning them all.
EXACT_FALLBACK_FRACTION = 0.5
HNSW_EF_MAX = 4096  # HNSW: efSearch doubled up to this; not enough there means exact search
# HNSW computes its distances one vector at a time, ~10x the cost per vector of exact search's matrix product
# (measured: efSearch 22 on 6,000 vectors, ~5% of them per query, took 1.4x the exact search of the queries):
# exact search instead when it computes more than this share of n distances per query (faiss's hnsw_stats)
HNSW_EXACT_FRACTION = 0.1
EXACT_CHUNK = 32768  # database rows scored per matrix product in `exact_search`
SMALL_TRAINING_FLOP = 1e10  # k-means below this trains on one faiss thread (`_faiss_threads`)
GEMM_FORMAT, FAISS_FORMAT = "cebench-ivf-gemm-1", "cebench-faiss-1"  # what `save` writes (.npz)


def _faiss():
    import faiss  # imported lazily: the package must import without it

    return faiss


@contextlib.contextmanager
def _faiss_threads(n: int | None):
    """faiss's OpenMP threads = n inside (None: unchanged). The coarse quantizer's training is small at the
    sizes auto uses (PCA of 20k x 256, k-means of 20k points to 512 centroids in 16-d: 0.04 + 0.07 s on one
    thread); with two threads on a loaded 2-core machine faiss's OpenBLAS took 3.6 s for the PCA alone."""
    if n is None:
        yield
        return
    faiss = _faiss()
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(old)


def _as_f32(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().float().cpu().numpy()
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"expected [N, D] vectors, got shape {x.shape}")
    return x


def auto_nlist(n: int) -> int:
    """IVF lists for n vectors: 256 up to 1M, then growing with n (a power of two near n / 4000).
    Few lists keep the build cheap (every vector is compared with every centroid once); IVF search
    is bound by the bytes of the visited lists, which more lists shrink."""
    return int(2 ** round(math.log2(max(256.0, n / 4000))))


def auto_gemm_nlist(n: int) -> int:
    """ivf-gemm lists for n vectors: a power of two near n / 2000 (512 at 1M), at least 64. Its build
    assigns in a low-dimensional projection, so more lists cost little there; its search reads each
    visited list once."""
    return int(2 ** round(math.log2(max(64.0, n / 2000))))


def faiss_gpu_available() -> bool:
    try:
        faiss = _faiss()
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:  # noqa: BLE001 - any faiss/CUDA problem means "no GPU"
        return False


def brute_force_search(db, q, k: int, metric: str = "ip") -> tuple[np.ndarray, np.ndarray]:
    """NumPy reference: top-k of q [M,D] against db [N,D] -> (scores [M,k], ids [M,k] int64).
    Ties are broken by the lower id. k larger than N pads with -inf/inf scores and id -1, as faiss."""
    db, q = _as_f32(db), _as_f32(q)
    if metric == "ip":
        s = q.astype(np.float64) @ db.astype(np.float64).T
        key = -s
    elif metric == "l2":
        d64, q64 = db.astype(np.float64), q.astype(np.float64)
        s = (q64**2).sum(1)[:, None] + (d64**2).sum(1)[None] - 2 * q64 @ d64.T
        s = np.maximum(s, 0)
        key = s
    else:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    kk = min(k, db.shape[0])
    ids = np.argsort(key, axis=1, kind="stable")[:, :kk]
    scores = np.take_along_axis(s, ids, axis=1).astype(np.float32)
    if kk < k:
        pad = k - kk
        fill = -np.inf if metric == "ip" else np.inf
        scores = np.concatenate([scores, np.full((q.shape[0], pad), fill, np.float32)], 1)
        ids = np.concatenate([ids, np.full((q.shape[0], pad), -1)], 1)
    return scores, ids.astype(np.int64)


def exact_search(db, q, k: int, metric: str = "ip", chunk: int = EXACT_CHUNK,
                 query_batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of q [M, D] against db [N, D] (float32 or float16, read `chunk` rows at a time: no copy of
    the whole array) by float32 matrix products in torch -> (scores [M, k] float32 as faiss gives them,
    ids [M, k] int64), padded with -inf/inf and -1 beyond N, as faiss. Queries go `query_batch` at a time,
    the chunks in one-thread streams (`gemm_ivf.in_threads`), each with its own [query_batch, chunk] scores.
    The recall calibration's exact neighbours, and ivf-gemm's search when it visits every list; faiss's flat
    search was several times slower than torch's matrix product on the 2-core CPUs this was measured on
    (its bundled BLAS) and needs a copy of the vectors."""
    q = _as_f32(q)
    n, m = db.shape[0], q.shape[0]
    kk = min(k, n)
    scores = np.full((m, k), -np.inf if metric == "ip" else np.inf, np.float32)
    ids = np.full((m, k), -1, np.int64)
    starts = list(range(0, n, chunk))
    workers = max(1, min(torch.get_num_threads(), len(starts)))
    for b in range(0, m, query_batch):
        qt = torch.from_numpy(q[b:b + query_batch])

        def run(mine: list[int], qt=qt) -> tuple[torch.Tensor, torch.Tensor]:  # top kk over these chunks
            best = torch.full((qt.shape[0], kk), -torch.inf)
            best_ids = torch.full((qt.shape[0], kk), -1, dtype=torch.long)
            buf = torch.empty(qt.shape[0], min(chunk, n))
            for s in mine:
                xc = torch.from_numpy(np.ascontiguousarray(db[s:s + chunk], dtype=np.float32))
                sc = buf[:, :xc.shape[0]]
                torch.mm(qt, xc.T, out=sc)                         # [m, c] inner products
                if metric == "l2":                                 # -|q-x|^2 + |q|^2 = 2 q.x - |x|^2
                    sc.mul_(2).sub_(xc.pow(2).sum(1)[None])
                values, cols = row_topk(sc, min(kk, sc.shape[1]))
                keep = torch.topk(torch.cat([best, values], 1), kk, dim=1)
                best_ids = torch.gather(torch.cat([best_ids, cols + s], 1), 1, keep.indices)
                best = keep.values
            return best, best_ids

        parts = in_threads(run, [starts[i::workers] for i in range(workers)], workers)
        keep = torch.topk(torch.cat([p[0] for p in parts], 1), kk, dim=1)  # merge the streams
        best = keep.values
        best_ids = torch.gather(torch.cat([p[1] for p in parts], 1), 1, keep.indices)
        if metric == "l2":
            best = (qt.pow(2).sum(1, keepdim=True) - best).clamp(min=0)
        scores[b:b + query_batch, :kk], ids[b:b + query_batch, :kk] = best.numpy(), best_ids.numpy()
    return scores, ids


def _drop_self(ids: np.ndarray, self_ids: np.ndarray) -> np.ndarray:
    """ids [M, k+1] of queries that are database rows `self_ids` [M] -> [M, k] without the query's own id
    (or without the last column where the own id is not among them: a duplicate vector tied with it)."""
    own = ids == self_ids[:, None]
    own[~own.any(1), -1] = True
    own &= np.cumsum(own, 1) == 1  # one column per row
    return ids[~own].reshape(ids.shape[0], ids.shape[1] - 1)


def recall_per_query(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """|found & truth| / k per row, found [M, >=k] (only its first k columns count), truth [M, k]."""
    k = truth.shape[1]
    return (found[:, :k, None] == truth[:, None, :]).any(-1).sum(1) / k


def _lower_bound(per_query: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """per_query [M, S] recalls (S settings) -> (mean, mean - RECALL_Z * standard error, standard error) [S]."""
    m = per_query.shape[0]
    mean = per_query.mean(0)
    se = per_query.std(0, ddof=1) / math.sqrt(m) if m > 1 else np.zeros_like(mean)
    return mean, mean - RECALL_Z * se, se


def _ladder(upto: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, 16, ... below `upto`, then `upto`: the recalls a calibration record lists."""
    out, v = [], 1
    while v < upto:
        out.append(v)
        v = v + 1 if v < 4 else (v * 3 // 2 if (v & (v - 1)) == 0 else v * 4 // 3)
    return out + [upto]


class FeatureIndex:
    """A FAISS index over float32 vectors.

    kind: "flat" (exact), "ivf-gemm" (`gemm_ivf.GemmIVF`: a faiss coarse quantizer, the lists as ids over
    the caller's array, searched with matrix products; keeps a view of the array added, which the caller
    must not change), "ivf" (IndexIVFFlat; k-means trained on a random sample of
    IVF_TRAIN_PER_LIST * nlist vectors of the first `add`, nlist reduced so each list gets >= 39
    training points), "hnsw" (IndexHNSWFlat with `hnsw_m` links), "auto" (flat, ivf-gemm or, on a GPU,
    ivf by the size of the first `add`, see AUTO_IVF_MIN; `kind` holds the resolved one afterwards).
    nprobe: IVF lists visited per query; ef_search: HNSW search breadth. With a recall target both are
    starting points that calibration only raises (auto starts from nprobe 1).
    coarse_dim: IVF only; > 0 chooses the lists in a PCA projection to that many dimensions (k-means
    with `kmeans_iters` iterations there), which makes the build several times cheaper at 1M vectors;
    distances within the visited lists stay exact in the full dimension. 0: a full-dimension flat
    quantizer (faiss's own k-means training).

    recall_target (default 0.95; None: no calibration), recall_k (10), calibration_queries (200): when an
    approximate index is built (the first `add`), `calibration_queries` of the vectors added, a seeded
    sample, are searched as queries, exactly (`exact_search`) and with the index. A query is a vector of
    the index, so its own id is removed from both neighbour lists (top k+1 minus itself): what remains is
    what a fresh query from the same data would get. IVF kinds: the recall at every nprobe at once, from
    the lists that hold each true neighbour and the order in which a query visits the lists (an IVF search
    returns a true neighbour exactly when its list is visited: distances in the lists are exact); the
    smallest nprobe (not below the one given) whose recall, minus RECALL_Z standard errors over the
    sampled queries, reaches the target. When the lists that needs hold more than EXACT_FALLBACK_FRACTION
    of the vectors per query (the time of an exact search, estimated from the calibration queries), the
    index visits every list: exact search over the same vectors. HNSW: efSearch doubled the same way,
    searched; exact (a flat index) when HNSW_EF_MAX is not enough or it computes more than
    HNSW_EXACT_FRACTION of the distances an exact search computes (faiss's count, per query).
    `calibration` records it all (measured recall, its standard error, k, target, the sampled ids, the
    setting chosen, the share of the vectors scanned, whether it searches exactly and why); vectors added
    later do not recalibrate (the record names the n it was measured on).
    """

    def __init__(self, dim: int, kind: str = "flat", metric: str = "ip", nlist: int = 1024,
                 nprobe: int = 16, hnsw_m: int = 32, ef_search: int = 128,
                 ef_construction: int = 200, use_gpu="auto", coarse_dim: int = 0, kmeans_iters: int = 10,
                 recall_target: float | None = 0.95, recall_k: int = 10,
                 calibration_queries: int = CALIBRATION_QUERIES):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if recall_target is not None and not 0 < float(recall_target) <= 1:
            raise ValueError(f"recall_target must be in (0, 1] or None, got {recall_target!r}")
        if int(recall_k) < 1 or int(calibration_queries) < 1:
            raise ValueError(f"recall_k and calibration_queries must be >= 1, got {recall_k}, {calibration_queries}")
        self.dim, self.kind, self.metric = int(dim), kind, metric
        self.nlist, self.nprobe = int(nlist), int(nprobe)
        self.hnsw_m, self.ef_search, self.ef_construction = int(hnsw_m), int(ef_search), int(ef_construction)
        if not 0 <= int(coarse_dim) <= self.dim:
            raise ValueError(f"coarse_dim must be in [0, {self.dim}], got {coarse_dim}")
        self.coarse_dim = int(coarse_dim) if int(coarse_dim) < self.dim else 0
        self.kmeans_iters = int(kmeans_iters)
        self.recall_target = None if recall_target is None else float(recall_target)
        self.recall_k, self.calibration_queries = int(recall_k), int(calibration_queries)
        self.calibration: dict | None = None  # filled by the first add (see the class docstring)
        want_gpu = faiss_gpu_available() if use_gpu == "auto" else bool(use_gpu)
        if want_gpu and not faiss_gpu_available():
            raise RuntimeError("use_gpu=True but faiss has no GPU support or no GPU is visible")
        # faiss's GPU IVF wants a flat coarse quantizer: the PCA-quantized IVF stays on the CPU, as ivf-gemm
        self.use_gpu = want_gpu and kind not in ("hnsw", "ivf-gemm") and not self.coarse_dim
        self._gpu_res = None
        self.index = None  # built lazily for IVF and auto (they depend on the data)
        if kind not in ("ivf", "ivf-gemm", "auto"):
            self.index = self._place(self._make_cpu(None))

    # construction ---------------------------------------------------------------------------
    def _metric_const(self):
        faiss = _faiss()
        return faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2

    def _make_cpu(self, n_train: int | None):
        faiss = _faiss()
        if self.kind == "flat":
            return faiss.IndexFlatIP(self.dim) if self.metric == "ip" else faiss.IndexFlatL2(self.dim)
        if self.kind == "hnsw":
            idx = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, self._metric_const())
            idx.hnsw.efConstruction = self.ef_construction
            idx.hnsw.efSearch = self.ef_search
            return idx
        nlist = max(1, min(self.nlist, (n_train or 0) // 39))
        self.nlist = nlist
        quant = faiss.IndexFlatIP(self.dim) if self.metric == "ip" else faiss.IndexFlatL2(self.dim)
        idx = faiss.IndexIVFFlat(quant, self.dim, nlist, self._metric_const())
        idx.nprobe = min(self.nprobe, nlist)
        self._quantizer = quant  # keep the quantizer alive as long as the index
        return idx

    def _coarse_quantizer(self, sample: np.ndarray):
        """A trained faiss index of `nlist` k-means centroids (trained on `sample` [S, dim] float32) that
        maps vectors to their lists. coarse_dim > 0: the centroids live in a PCA projection to coarse_dim
        dimensions, IndexPreTransform(PCAMatrix(dim -> coarse_dim), IndexFlatL2(coarse_dim)), so
        assigning N vectors costs N*dim*coarse_dim + N*coarse_dim*nlist multiply-adds instead of
        N*dim*nlist (1M x 256, 32-d, 256 lists: 4x fewer); 0: full-dimension centroids (spherical
        k-means for "ip"). Only the choice of lists uses the projection: distances stay exact."""
        faiss = _faiss()
        self.nlist = nlist = max(1, min(self.nlist, sample.shape[0] // 39))
        work = 2.0 * self.kmeans_iters * sample.shape[0] * nlist * (self.coarse_dim or self.dim)
        with _faiss_threads(1 if work < SMALL_TRAINING_FLOP else None):
            if not self.coarse_dim:
                km = faiss.Kmeans(self.dim, nlist, niter=self.kmeans_iters, seed=1234, spherical=self.metric == "ip")
                km.train(sample)
                quant = faiss.IndexFlatIP(self.dim) if self.metric == "ip" else faiss.IndexFlatL2(self.dim)
                quant.add(km.centroids)
                self._quantizer = quant
                return quant
            pca = faiss.PCAMatrix(self.dim, self.coarse_dim)
            pca.train(sample)
            km = faiss.Kmeans(self.coarse_dim, nlist, niter=self.kmeans_iters, seed=1234)
            km.train(pca.apply(sample))
        centres = faiss.IndexFlatL2(self.coarse_dim)
        centres.add(km.centroids)
        quant = faiss.IndexPreTransform(pca, centres)  # d = dim in, ntotal = nlist, trained
        self._quantizer = (pca, centres, quant)  # the python objects own them: alive as long as the index
        return quant

    def _make_ivf_coarse_pca(self, sample: np.ndarray):
        """faiss IndexIVFFlat over `_coarse_quantizer`'s PCA quantizer (the lists hold full vectors)."""
        quant = self._coarse_quantizer(sample)
        idx = _faiss().IndexIVFFlat(quant, self.dim, self.nlist, self._metric_const())
        if not idx.is_trained:  # the constructor takes a trained quantizer with nlist entries as trained
            raise RuntimeError("IVF with a PCA coarse quantizer did not come out trained")
        idx.nprobe = min(self.nprobe, self.nlist)
        return idx

    def _place(self, cpu_index):
        if not self.use_gpu:
            return cpu_index
        faiss = _faiss()
        if self._gpu_res is None:
            self._gpu_res = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(self._gpu_res, 0, cpu_index)

    # public API -------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    def add(self, x, chunk: int = 131072) -> "FeatureIndex":
        """Add vectors [N, dim] (any float dtype: float16 is converted `chunk` rows at a time, so no
        float32 copy of the whole array is made beside the index); ids are positions in the order added.
        The first add of an approximate index calibrates it (see the class docstring)."""
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"vectors have shape {x.shape}, index has dim {self.dim}")
        first = self.ntotal == 0 and self.calibration is None
        calibrate = self.recall_target is not None
        if self.index is None and self.kind == "auto":
            if x.shape[0] < AUTO_IVF_MIN:
                self.kind = "flat"
            elif self.use_gpu:
                self.kind, self.nlist = "ivf", auto_nlist(x.shape[0])
                self.nprobe = 1 if calibrate else AUTO_NPROBE
            else:
                self.kind, self.nlist = "ivf-gemm", auto_gemm_nlist(x.shape[0])
                self.nprobe = 1 if calibrate else AUTO_GEMM_NPROBE
                self.coarse_dim = AUTO_GEMM_COARSE_DIM if AUTO_GEMM_COARSE_DIM < self.dim else 0
        if self.index is None and self.kind == "ivf-gemm":
            quant = self._coarse_quantizer(self._train_sample(x))
            self.index = GemmIVF(quant, self.nlist, self.dim, self.metric, min(self.nprobe, self.nlist))
        if self.kind == "ivf-gemm":  # keeps a view of x (float32 or float16): no copy is written
            self.index.add(x)
        else:
            if self.index is None and self.kind == "ivf" and self.coarse_dim:
                self.index = self._place(self._make_ivf_coarse_pca(self._train_sample(x)))
            if self.index is None:  # IVF: train on the first batch added
                self.index = self._place(self._make_cpu(x.shape[0]))
            if not self.index.is_trained:
                self.index.train(self._train_sample(x))
            for s in range(0, x.shape[0], chunk):
                self.index.add(_as_f32(x[s:s + chunk]))
        if first:
            if self.kind == "flat":
                self.calibration = {"exact": True, "recall": 1.0, "reason": "flat index: exact search",
                                    "kind": "flat", "n": int(x.shape[0]), "k": self.recall_k}
            elif calibrate:
                self.calibrate(x)
        return self

    def _train_sample(self, x: np.ndarray) -> np.ndarray:
        """IVF_TRAIN_PER_LIST (ivf-gemm: GEMM_TRAIN_PER_LIST) * nlist rows of x drawn at random (seeded),
        float32 [S, dim]."""
        per = GEMM_TRAIN_PER_LIST if self.kind == "ivf-gemm" else IVF_TRAIN_PER_LIST
        n_train = min(x.shape[0], per * self.nlist)
        rows = np.sort(np.random.default_rng(0).choice(x.shape[0], n_train, replace=False))
        return _as_f32(x[rows] if n_train < x.shape[0] else x)

    def set_nprobe(self, nprobe: int) -> None:
        """IVF lists visited per query (no-op for other kinds)."""
        if self.kind == "ivf-gemm" and self.index is not None:
            self.nprobe = self.index.nprobe = min(int(nprobe), self.index.nlist)
        elif self.kind == "ivf" and self.index is not None:
            self.nprobe = int(nprobe)
            ivf = _faiss().extract_index_ivf(self.index) if not self.use_gpu else self.index
            ivf.nprobe = min(self.nprobe, ivf.nlist)

    # calibration -------------------------------------------------------------------------------
    @property
    def recall(self) -> float | None:
        """The measured recall@k of the setting in use (1.0 for exact search), None when not measured."""
        return None if self.calibration is None else self.calibration.get("recall")

    def calibrate(self, x) -> dict:
        """Measure this index's recall@k on `x`, the vectors it holds (as added), choose nprobe / efSearch
        for `recall_target` or exact search, and record it in `self.calibration` (class docstring)."""
        t0 = time.perf_counter()
        if self.recall_target is None:
            raise ValueError("calibrate needs a recall_target")
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        n = x.shape[0]
        if n != self.ntotal:
            raise ValueError(f"calibrate on the {self.ntotal} vectors the index holds, got {n}")
        k = min(self.recall_k, n - 1)
        rec = {"kind": self.kind, "n": int(n), "k": self.recall_k, "target": self.recall_target, "exact": False,
               "reason": "", "method": "indexed vectors as queries, each one's own id left out of both neighbour "
                                     "lists; pass: mean recall - 1.645 standard errors >= target"}
        if k < 1:
            self.calibration = {**rec, "exact": True, "recall": 1.0, "reason": "a single vector"}
            return self.calibration
        rows = np.sort(np.random.default_rng(CALIBRATION_SEED).choice(n, min(self.calibration_queries, n),
                                                                       replace=False))
        q = _as_f32(x[rows])
        t = time.perf_counter()
        truth = _drop_self(exact_search(x, q, k + 1, self.metric)[1], rows)  # [m, k]
        rec.update(queries=int(len(rows)), exact_search_s=round(time.perf_counter() - t, 4),
                   query_ids=rows.tolist())
        if self.kind == "ivf-gemm" or (self.kind == "ivf" and not self.use_gpu):
            rec.update(self._calibrate_lists(x, q, truth))
        else:
            rec.update(self._calibrate_by_search(x, q, rows, truth))
        rec["seconds"] = round(time.perf_counter() - t0, 4)
        self.calibration = rec
        return rec

    def _ivf_parts(self, x, ids: np.ndarray):
        """(coarse quantizer, list sizes [nlist], the list of each vector `ids`) of an IVF index on the CPU."""
        if self.kind == "ivf-gemm":
            return self.index.quantizer, self.index.list_sizes(), self.index.lists_of(ids)
        ivf = _faiss().extract_index_ivf(self.index)
        sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)], np.int64)
        return ivf.quantizer, sizes, ivf.quantizer.assign(_as_f32(x[ids]), 1)[:, 0]

    def _calibrate_lists(self, x, q: np.ndarray, truth: np.ndarray) -> dict:
        """IVF on the CPU: recall at every nprobe from the lists of the true neighbours and each query's
        order of visiting the lists; the smallest nprobe >= self.nprobe that passes, or every list."""
        m, k = truth.shape
        quant, sizes, lists = self._ivf_parts(x, truth.reshape(-1))
        nlist = len(sizes)
        probe = quant.search(q, nlist)[1]                               # [m, nlist] lists in visiting order
        valid = probe >= 0
        pos = np.full((m, nlist), nlist, np.int64)                       # [m, list] -> its visiting rank
        r_idx, c_idx = np.nonzero(valid)
        pos[r_idx, probe[r_idx, c_idx]] = c_idx
        rank = pos[np.arange(m)[:, None], lists.reshape(m, k)]          # [m, k] rank of each neighbour's list
        counts = np.zeros((m, nlist + 1))
        np.add.at(counts, (np.repeat(np.arange(m), k), rank.reshape(-1)), 1)
        curve = np.cumsum(counts[:, :nlist], 1) / k                      # [m, nprobe - 1]: recall per query
        scanned = np.cumsum(np.where(valid, sizes[np.clip(probe, 0, None)], 0), 1).mean(0) / max(1, sizes.sum())
        mean, lower, se = _lower_bound(curve)
        start = max(1, min(self.nprobe, nlist))
        passing = np.nonzero(lower[start - 1:] >= self.recall_target - 1e-12)[0]
        need = start + int(passing[0]) if len(passing) else nlist
        out = {"nlist": nlist, "nprobe_needed": need, "scanned_fraction_needed": round(float(scanned[need - 1]), 4),
               "recall_by_nprobe": [[p, round(float(mean[p - 1]), 4)] for p in _ladder(need) if p <= nlist]}
        use = need
        if scanned[need - 1] > EXACT_FALLBACK_FRACTION and need < nlist:
            use = nlist
            out.update(exact=True, reason=f"the recall target needs nprobe {need} of {nlist} lists, "
                                          f"{scanned[need - 1]:.0%} of the vectors per query: no faster than "
                                          "exact search, so every list is visited")
        elif use == nlist:
            out.update(exact=True, reason=f"nprobe {use} visits every list")
        self.set_nprobe(use)
        out.update(nprobe=int(use), recall=round(float(mean[use - 1]), 4), recall_se=round(float(se[use - 1]), 4),
                   recall_lower=round(float(lower[use - 1]), 4), scanned_fraction=round(float(scanned[use - 1]), 4))
        if self.coarse_dim:
            out["coarse_dim"] = self.coarse_dim
        return out

    def _calibrate_by_search(self, x, q: np.ndarray, rows: np.ndarray, truth: np.ndarray) -> dict:
        """HNSW (efSearch) and IVF on a GPU (nprobe): the setting doubled from the one given, each searched,
        until the recall passes. A flat index (exact search) instead where it does not pass by the largest
        setting (HNSW_EF_MAX; nlist, at most faiss's GPU limit of 2048) or is no faster than exact search
        (HNSW: more than HNSW_EXACT_FRACTION of n distances per query; IVF: nprobe / nlist above
        EXACT_FALLBACK_FRACTION)."""
        m, k = truth.shape
        hnsw = self.kind == "hnsw"
        key = "ef_search" if hnsw else "nprobe"
        nlist = 0 if hnsw else int(self.nlist)
        start, top = (max(self.ef_search, k + 1), HNSW_EF_MAX) if hnsw else (max(1, min(self.nprobe, nlist)),
                                                                             min(nlist, 2048))
        tried, v, stats = [], start, _faiss().cvar.hnsw_stats
        while True:
            self._set_breadth(v)
            stats.reset()
            t = time.perf_counter()
            found = self.search(q, k + 1)[1]
            s_time = time.perf_counter() - t
            scanned = stats.ndis / m / x.shape[0] if hnsw else min(1.0, v / max(1, nlist))
            per_query = recall_per_query(_drop_self(found, rows), truth)
            mean, lower, se = (float(a[0]) for a in _lower_bound(per_query[:, None]))
            tried.append([v, round(mean, 4)])
            if lower >= self.recall_target - 1e-12 or v >= top:
                break
            v = min(top, 2 * v)
        out = {key: int(v), "search_s": round(s_time, 4), f"recall_by_{key}": tried,
               "scanned_fraction": round(scanned, 4), **({} if hnsw else {"nlist": nlist})}
        met = lower >= self.recall_target - 1e-12
        if met and scanned <= (HNSW_EXACT_FRACTION if hnsw else EXACT_FALLBACK_FRACTION):
            return {**out, "recall": round(mean, 4), "recall_se": round(se, 4), "recall_lower": round(lower, 4)}
        name = "efSearch" if hnsw else "nprobe"
        why = (f"{name} {v} reached recall {mean:.3f} only" if not met else
               f"{name} {v} computed {scanned:.0%} of the distances of exact search per query" if hnsw else
               f"the recall target needs nprobe {v} of {nlist} lists: no faster than exact search")
        requested = self.kind
        self.kind = "flat"
        self.index = self._place(self._make_cpu(None))
        for s in range(0, x.shape[0], 131072):
            self.index.add(_as_f32(x[s:s + 131072]))
        return {**out, "exact": True, "recall": 1.0, "kind": "flat", "requested_kind": requested,
                "reason": f"{why}: a flat index (exact search) instead"}

    def _set_breadth(self, v: int) -> None:
        if self.kind == "hnsw":
            self.ef_search = int(v)
            _faiss().downcast_index(self.index).hnsw.efSearch = int(v)
        else:
            self.set_nprobe(v)

    def describe(self) -> str:
        """One line: the index, its settings, and its measured recall (or that it searches exactly)."""
        if self.kind in ("ivf", "ivf-gemm"):
            what = f"{self.kind}, {self.nlist} lists" + (f" ({self.coarse_dim}-d projection)" if self.coarse_dim
                                                         else "") + f", nprobe {self.nprobe}"
        elif self.kind == "hnsw":
            what = f"hnsw, M {self.hnsw_m}, efSearch {self.ef_search}"
        else:
            what = self.kind
        c = self.calibration
        if c is None:
            return f"{what}: recall not measured (no recall target)"
        if c.get("exact"):
            return f"{what}: exact search" + ("" if c.get("reason", "").startswith("flat index") else
                                                f" ({c['reason']})")
        said = (f"{what}: recall@{c['k']} {c['recall']:.3f} (+-{c.get('recall_se', 0):.3f}) measured on "
                f"{c['queries']} of its {c['n']:,} vectors, target {c['target']}")
        at = c.get("nprobe", c.get("ef_search"))
        now = self.ef_search if self.kind == "hnsw" else self.nprobe
        return said + (f" (measured at {at}, now {now})" if at is not None and at != now else "")

    def search(self, q, k: int, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Top-k for queries [M, dim] in batches -> (scores [M,k] float32, ids [M,k] int64)."""
        q = _as_f32(q)
        if self.ntotal == 0:
            raise ValueError("search on an empty index: add vectors first")
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dim {q.shape[1]}, index has dim {self.dim}")
        if self.kind == "ivf-gemm":
            if self.index.nprobe >= self.index.nlist:  # every list: exact search, without gathering the lists
                return exact_search(self.index.x.numpy(), q, k, self.metric)
            return self.index.search(q, k)  # all queries at once: the lists are read once per batch of queries
        order = self._list_order(q)
        if order is not None:  # IVF: queries that visit the same list one after the other (cache reuse)
            q = q[order]
        scores = np.empty((q.shape[0], k), np.float32)
        ids = np.empty((q.shape[0], k), np.int64)
        for s in range(0, q.shape[0], batch_size):  # loop over query batches
            d, i = self.index.search(q[s : s + batch_size], k)
            scores[s : s + batch_size], ids[s : s + batch_size] = d, i
        if order is not None:  # back to the caller's order (each query's result does not depend on the others)
            scores[order], ids[order] = scores.copy(), ids.copy()
        return scores, ids

    def _list_order(self, q: np.ndarray) -> np.ndarray | None:
        """For a CPU IVF index: the queries sorted by their nearest list. faiss scans each query's lists
        on its own; a list (4 MB-16 MB at 1M vectors) read by the previous query is still in cache, so
        grouped queries read memory once per list instead of once per query. None for other indexes."""
        if self.kind != "ivf" or self.use_gpu or q.shape[0] < 2:
            return None
        _, nearest = _faiss().extract_index_ivf(self.index).quantizer.search(q, 1)  # [M, 1] list ids
        return np.argsort(nearest[:, 0], kind="stable")

    def save(self, path) -> Path:
        """Write the index atomically (temp file + os.replace) as one .npz of plain arrays (loaded with
        allow_pickle=False): the faiss index serialised (faiss.serialize_index), or for ivf-gemm its faiss
        quantizer serialised, the vectors and the list layout; and the calibration record as JSON."""
        faiss = _faiss()
        path = Path(path)
        if self.index is None:
            raise ValueError("cannot save an IVF index before anything was added")
        record = np.array(json.dumps(self.calibration))
        if self.kind == "ivf-gemm":
            arrays = {**self.index.state(faiss.serialize_index(self.index.quantizer)), "calibration": record}
        else:
            cpu = faiss.index_gpu_to_cpu(self.index) if self.use_gpu else self.index
            arrays = {"format": np.array(FAISS_FORMAT), "index": faiss.serialize_index(cpu), "calibration": record}
        with atomic_target(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
        return path

    @staticmethod
    def _read_npz(path: Path) -> dict:
        try:
            with np.load(path, allow_pickle=False) as st:
                arrays = {k: st[k] for k in st.files}
            fmt = str(arrays["format"])
            if fmt not in (GEMM_FORMAT, FAISS_FORMAT):
                raise ValueError(f"unknown format {fmt!r}")
            arrays["calibration"] = json.loads(str(arrays["calibration"])) if "calibration" in arrays else None
            if arrays["calibration"] is not None and not isinstance(arrays["calibration"], dict):
                raise ValueError("calibration is not a JSON object")
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign .npz: one line naming the file
            raise CebenchError(f"{path}: not a readable cebench index ({type(exc).__name__}: {exc})") from None
        return arrays

    @classmethod
    def _load_gemm(cls, path: Path, arrays: dict) -> "FeatureIndex":
        try:
            quant = _faiss().deserialize_index(arrays["quantizer"])
            gemm = GemmIVF.from_state(arrays, quant)
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign .npz: one line naming the file
            raise CebenchError(f"{path}: not a readable ivf-gemm index ({type(exc).__name__}: {exc})") from None
        pre = _faiss().downcast_index(quant)
        coarse_dim = int(pre.index.d) if isinstance(pre, _faiss().IndexPreTransform) else 0
        obj = cls._restored(dim=gemm.dim, kind="ivf-gemm", metric=gemm.metric, nlist=gemm.nlist, nprobe=gemm.nprobe,
                            coarse_dim=coarse_dim, use_gpu=False, calibration=arrays["calibration"])
        obj.index, obj._quantizer = gemm, quant
        return obj

    @classmethod
    def _restored(cls, *, dim: int, kind: str, metric: str, nlist: int, nprobe: int, coarse_dim: int,
                  use_gpu: bool, calibration: dict | None = None, ef_search: int = 0) -> "FeatureIndex":
        """An instance for an index read from disk (its `index` set by the caller): the settings the file
        holds, its calibration record; the build-only ones (HNSW efConstruction, k-means iterations) are 0,
        as nothing is built again."""
        obj = cls.__new__(cls)
        obj.dim, obj.kind, obj.metric = int(dim), kind, metric
        obj.nlist, obj.nprobe, obj.coarse_dim = int(nlist), int(nprobe), int(coarse_dim)
        obj.hnsw_m, obj.ef_search, obj.ef_construction, obj.kmeans_iters = 0, int(ef_search), 0, 0
        obj.use_gpu, obj._gpu_res, obj.index = bool(use_gpu), None, None
        obj.calibration = calibration
        c = calibration or {}
        obj.recall_target, obj.recall_k = c.get("target"), int(c.get("k", 10))
        obj.calibration_queries = int(c.get("queries", CALIBRATION_QUERIES))
        return obj

    @classmethod
    def load(cls, path, use_gpu="auto") -> "FeatureIndex":
        """Read what `save` wrote (or a plain faiss index file); a damaged file is a CebenchError naming it."""
        faiss = _faiss()
        path = Path(path)
        if not path.is_file():
            raise CebenchError(f"{path}: index file not found")
        with open(path, "rb") as fh:
            is_zip = fh.read(2) == b"PK"
        calibration = None
        if is_zip:  # an .npz written by save
            arrays = cls._read_npz(path)
            if str(arrays["format"]) == GEMM_FORMAT:
                return cls._load_gemm(path, arrays)
            calibration = arrays["calibration"]
        try:
            cpu = faiss.deserialize_index(arrays["index"]) if is_zip else faiss.read_index(str(path))
        except RuntimeError as exc:
            raise CebenchError(f"{path}: not a readable faiss index ({str(exc).strip().splitlines()[-1]})") from None
        metric = "ip" if cpu.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"
        ef_search = hnsw_m = 0
        if isinstance(faiss.downcast_index(cpu), faiss.IndexHNSW):
            graph = faiss.downcast_index(cpu).hnsw
            kind, ef_search, hnsw_m = "hnsw", int(graph.efSearch), int(graph.nb_neighbors(1))
        elif faiss.try_extract_index_ivf(cpu) is not None:
            kind = "ivf"
        else:
            kind = "flat"
        coarse_dim, nlist, nprobe = 0, 0, 0
        if kind == "ivf":
            ivf = faiss.extract_index_ivf(cpu)
            nlist, nprobe = int(ivf.nlist), int(ivf.nprobe)
            quant = faiss.downcast_index(ivf.quantizer)
            if isinstance(quant, faiss.IndexPreTransform):
                coarse_dim = int(quant.index.d)
        want_gpu = faiss_gpu_available() if use_gpu == "auto" else bool(use_gpu)
        obj = cls._restored(dim=cpu.d, kind=kind, metric=metric, nlist=nlist, nprobe=nprobe, coarse_dim=coarse_dim,
                            use_gpu=want_gpu and kind != "hnsw", calibration=calibration, ef_search=ef_search)
        obj.hnsw_m = hnsw_m
        obj.index = obj._place(cpu)
        return obj
