"""FAISS index wrapper shared by retrieval and the nearest-neighbour inpainting baseline.

`FeatureIndex(dim, kind="flat"|"ivf"|"ivf-gemm"|"hnsw"|"auto", metric="ip"|"l2")`: exact search by default, IVF or
HNSW for millions of vectors; "auto" picks flat below `AUTO_IVF_MIN` vectors and from there ivf-gemm
(`gemm_ivf.GemmIVF`; faiss IVF when a GPU is used) -- the winner of `cebench bench knn` at each size
(results/bench_knn.json). On a machine where faiss has GPU support and a GPU is visible,
flat and IVF indexes run on the GPU (`use_gpu="auto"`); HNSW always runs on the CPU (faiss has no
GPU HNSW). Scores: inner products (higher is nearer) for "ip", squared L2 distances (lower is
nearer) for "l2", as faiss returns them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cebench.errors import CebenchError
from cebench.io import atomic_target

from .gemm_ivf import GemmIVF

KINDS = ("flat", "ivf", "ivf-gemm", "hnsw", "auto")
# "auto": exact search below AUTO_IVF_MIN vectors; from there ivf-gemm on the CPU (faiss IVF on a GPU), with
# the settings that won `cebench bench knn --n 1000000` build included (results/bench_knn.json): nlist
# `auto_gemm_nlist(n)` (512 at 1M), lists chosen in a 16-d PCA projection, nprobe 3. Chosen on the
# validation queries only (2-core Xeon, 2026-12-06): among the ivf-gemm settings whose validation
# recall@10 reached 0.975 (a margin over the 0.95 goal: 200 validation queries; 16-d at nprobe 2 gave
# 0.966 on validation and 0.953 on the test queries of an earlier run), the one with the cheapest build:
# 512 lists / 16-d / nprobe 3 (0.98; build ~0.26 s) against 24-d / nprobe 2 (0.976; ~0.35 s); the
# search (~0.15 s) reads the visited lists once and hardly depends on nprobe.
AUTO_IVF_MIN = 500_000
AUTO_NPROBE = 4     # faiss IVF (GPU): 1M vectors, nlist 256: nprobe 2 gave recall@10 0.986; 4 for margin
AUTO_GEMM_NPROBE = 3
AUTO_GEMM_COARSE_DIM = 16
IVF_TRAIN_PER_LIST = 64  # k-means sample: 64 points per list (faiss wants >= 39), drawn at random
# ivf-gemm: 40 per list (just over faiss's 39; the k-means runs in the PCA projection): at 1M x 256 the
# quantizer's training is then ~0.1 s of a ~0.6 s build + search (knn_scale.py)
GEMM_TRAIN_PER_LIST = 40
METRICS = ("ip", "l2")


def _faiss():
    import faiss  # imported lazily: the package must import without it

    return faiss


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


class FeatureIndex:
    """A FAISS index over float32 vectors.

    kind: "flat" (exact), "ivf-gemm" (`gemm_ivf.GemmIVF`: a faiss coarse quantizer, the lists as ids over
    the caller's array, searched with matrix products; keeps a view of the array added, which the caller
    must not change), "ivf" (IndexIVFFlat; k-means trained on a random sample of
    IVF_TRAIN_PER_LIST * nlist vectors of the first `add`, nlist reduced so each list gets >= 39
    training points), "hnsw" (IndexHNSWFlat with `hnsw_m` links), "auto" (flat, ivf-gemm or, on a GPU,
    ivf by the size of the first `add`, see AUTO_IVF_MIN; `kind` holds the resolved one afterwards).
    nprobe: IVF lists visited per query; ef_search: HNSW search breadth.
    coarse_dim: IVF only; > 0 chooses the lists in a PCA projection to that many dimensions (k-means
    with `kmeans_iters` iterations there), which makes the build several times cheaper at 1M vectors;
    distances within the visited lists stay exact in the full dimension. 0: a full-dimension flat
    quantizer (faiss's own k-means training).
    """

    def __init__(self, dim: int, kind: str = "flat", metric: str = "ip", nlist: int = 1024,
                 nprobe: int = 16, hnsw_m: int = 32, ef_search: int = 128,
                 ef_construction: int = 200, use_gpu="auto", coarse_dim: int = 0, kmeans_iters: int = 10):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.dim, self.kind, self.metric = int(dim), kind, metric
        self.nlist, self.nprobe = int(nlist), int(nprobe)
        self.hnsw_m, self.ef_search, self.ef_construction = int(hnsw_m), int(ef_search), int(ef_construction)
        if not 0 <= int(coarse_dim) <= self.dim:
            raise ValueError(f"coarse_dim must be in [0, {self.dim}], got {coarse_dim}")
        self.coarse_dim = int(coarse_dim) if int(coarse_dim) < self.dim else 0
        self.kmeans_iters = int(kmeans_iters)
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
        float32 copy of the whole array is made beside the index); ids are positions in the order added."""
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"vectors have shape {x.shape}, index has dim {self.dim}")
        if self.index is None and self.kind == "auto":
            if x.shape[0] < AUTO_IVF_MIN:
                self.kind = "flat"
            elif self.use_gpu:
                self.kind, self.nlist, self.nprobe = "ivf", auto_nlist(x.shape[0]), AUTO_NPROBE
            else:
                self.kind, self.nlist, self.nprobe = "ivf-gemm", auto_gemm_nlist(x.shape[0]), AUTO_GEMM_NPROBE
                self.coarse_dim = AUTO_GEMM_COARSE_DIM if AUTO_GEMM_COARSE_DIM < self.dim else 0
        if self.index is None and self.kind == "ivf-gemm":
            quant = self._coarse_quantizer(self._train_sample(x))
            self.index = GemmIVF(quant, self.nlist, self.dim, self.metric, min(self.nprobe, self.nlist))
        if self.kind == "ivf-gemm":  # keeps a view of x (float32 or float16): no copy is written
            self.index.add(x)
            return self
        if self.index is None and self.kind == "ivf" and self.coarse_dim:
            self.index = self._place(self._make_ivf_coarse_pca(self._train_sample(x)))
        if self.index is None:  # IVF: train on the first batch added
            self.index = self._place(self._make_cpu(x.shape[0]))
        if not self.index.is_trained:
            self.index.train(self._train_sample(x))
        for s in range(0, x.shape[0], chunk):
            self.index.add(_as_f32(x[s:s + chunk]))
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

    def search(self, q, k: int, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Top-k for queries [M, dim] in batches -> (scores [M,k] float32, ids [M,k] int64)."""
        q = _as_f32(q)
        if self.ntotal == 0:
            raise ValueError("search on an empty index: add vectors first")
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dim {q.shape[1]}, index has dim {self.dim}")
        if self.kind == "ivf-gemm":  # all queries at once: the lists are read once per batch of queries
            return self.index.search(q, k)
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
        """Write the index atomically (temp file + os.replace): faiss.write_index, or for ivf-gemm an
        .npz of plain arrays (its faiss quantizer serialised, the vectors, the list layout)."""
        faiss = _faiss()
        path = Path(path)
        if self.index is None:
            raise ValueError("cannot save an IVF index before anything was added")
        with atomic_target(path) as tmp:
            if self.kind == "ivf-gemm":
                with open(tmp, "wb") as fh:
                    np.savez(fh, **self.index.state(faiss.serialize_index(self.index.quantizer)))
            else:
                faiss.write_index(faiss.index_gpu_to_cpu(self.index) if self.use_gpu else self.index, tmp)
        return path

    @classmethod
    def _load_gemm(cls, path: Path) -> "FeatureIndex":
        try:
            with np.load(path, allow_pickle=False) as st:
                if str(st["format"]) != "cebench-ivf-gemm-1":
                    raise ValueError(f"unknown format {st['format']}")
                arrays = {k: st[k] for k in st.files}
            quant = _faiss().deserialize_index(arrays["quantizer"])
            gemm = GemmIVF.from_state(arrays, quant)
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign .npz: one line naming the file
            raise CebenchError(f"{path}: not a readable ivf-gemm index ({type(exc).__name__}: {exc})") from None
        pre = _faiss().downcast_index(quant)
        coarse_dim = int(pre.index.d) if isinstance(pre, _faiss().IndexPreTransform) else 0
        obj = cls._restored(dim=gemm.dim, kind="ivf-gemm", metric=gemm.metric, nlist=gemm.nlist, nprobe=gemm.nprobe,
                            coarse_dim=coarse_dim, use_gpu=False)
        obj.index, obj._quantizer = gemm, quant
        return obj

    @classmethod
    def _restored(cls, *, dim: int, kind: str, metric: str, nlist: int, nprobe: int, coarse_dim: int,
                  use_gpu: bool) -> "FeatureIndex":
        """An instance for an index read from disk (its `index` set by the caller): the settings the file
        holds; the build-only ones (HNSW breadths, k-means iterations) are 0, as nothing is built again."""
        obj = cls.__new__(cls)
        obj.dim, obj.kind, obj.metric = int(dim), kind, metric
        obj.nlist, obj.nprobe, obj.coarse_dim = int(nlist), int(nprobe), int(coarse_dim)
        obj.hnsw_m, obj.ef_search, obj.ef_construction, obj.kmeans_iters = 0, 0, 0, 0
        obj.use_gpu, obj._gpu_res, obj.index = bool(use_gpu), None, None
        return obj

    @classmethod
    def load(cls, path, use_gpu="auto") -> "FeatureIndex":
        faiss = _faiss()
        path = Path(path)
        if not path.is_file():
            raise CebenchError(f"{path}: index file not found")
        with open(path, "rb") as fh:
            if fh.read(2) == b"PK":  # a zip: the .npz of an ivf-gemm index
                return cls._load_gemm(path)
        try:
            cpu = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise CebenchError(f"{path}: not a readable faiss index ({str(exc).strip().splitlines()[-1]})") from None
        metric = "ip" if cpu.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"
        if isinstance(cpu, faiss.IndexHNSW):
            kind = "hnsw"
        elif faiss.try_extract_index_ivf(cpu) is not None:
            kind = "ivf"
        else:
            kind = "flat"
        coarse_dim = 0
        if kind == "ivf":
            ivf = faiss.extract_index_ivf(cpu)
            quant = faiss.downcast_index(ivf.quantizer)
            if isinstance(quant, faiss.IndexPreTransform):
                coarse_dim = int(quant.index.d)
        want_gpu = faiss_gpu_available() if use_gpu == "auto" else bool(use_gpu)
        obj = cls._restored(dim=cpu.d, kind=kind, metric=metric, nlist=getattr(cpu, "nlist", 0),
                            nprobe=getattr(cpu, "nprobe", 0), coarse_dim=coarse_dim,
                            use_gpu=want_gpu and kind != "hnsw")
        obj.index = obj._place(cpu)
        return obj
