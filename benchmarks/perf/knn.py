"""`cebench bench knn [--n 1000000]`: nearest-neighbour search at scale, build included, on several kinds of data.

For each data distribution: N L2-normalised vectors (default 200,000; the committed numbers use
--n 1000000), 1,000 test queries, k = 10, inner product (= cosine). Every method is timed build + search
in this one process, one after the other, beside scikit-learn's brute-force `NearestNeighbors` (fit +
kneighbors), and its recall@10 is measured against the exact neighbours (scikit-learn's), by ids and
tie-aware (`recall_with_ties`: a neighbour as near as the 10th exact one counts too). Methods:

- FAISS flat (exact): `FeatureIndex(kind="flat")`;
- FAISS IVF-Flat, k-means trained on a sample (`FeatureIndex(kind="ivf")`, a few nlist values):
  nprobe is the smallest of 1, 2, 3, 4, 6, ... whose recall@10 reaches 0.95 on a separate set of 200
  validation queries (never the test queries), the selection untimed and reported;
- FAISS HNSW (M 16, efConstruction 40, efSearch chosen on the validation queries the same way) up to
  `hnsw_max_n` vectors (its build grows fastest);
- FAISS IVF-Flat whose lists are chosen in a 32-d PCA projection (`FeatureIndex(coarse_dim=32)`),
  nprobe chosen the same way;
- `FeatureIndex(kind="ivf-gemm")` (`cebench.features.gemm_ivf`): the same kind of coarse quantizer,
  the lists as ids over the database array (the build writes no copy) and the search as one matrix
  product per visited list for all the queries that visit it; nprobe chosen the same way, and once at
  the fixed setting the default index used before it calibrated itself (512 lists, 16-d, nprobe 3);
- FAISS IVF256 with 8-bit scalar-quantised lists and exact re-ranking of the top 40 (first data only);
- `FeatureIndex(kind="auto")`: the default of `cebench retrieve` / `retrieval-bench`; it calibrates itself
  to recall 0.95 on its own vectors at build time (that calibration is timed as part of its build, and its
  record is written beside the row). The validation-chosen rows above see the validation queries; auto
  sees nothing but the data it indexes.

Data (`DISTRIBUTIONS`; the rows above are run on each):
- `mixture1000`: 1,000 Gaussian clusters with a decaying spectrum (1/sqrt(i)), fresh samples as queries
  (what earlier versions of this benchmark used alone; every method runs on it);
- `gauss200`, `gauss2000`: 200 / 2,000 clusters, centres N(0, I), per-dimension noise 0.5; queries are
  database points plus per-dimension noise 0.05 (before normalisation);
- `relu32`: ReLU codes of a 32-d subspace, relu(z W) + noise 0.1 per dimension, z ~ N(0, I_32), W [32, dim]
  Gaussian / sqrt(32) (like CNN features: sparse, non-negative, low intrinsic dimension); queries as above;
- `hog`, `cnn`: real patch features of the Tiny ImageNet photos in `../shared/data` (absent: skipped with a
  note): HOG (9 orientations, 8 px cells, 2x2 blocks, L2-Hys) of the 32 px windows of each 64 px photo every
  8 px (25 windows of 324-d, the 3x3 blocks of the photo's dense HOG, as a sliding-window detector takes
  them), and CNN features (a randomly initialised demo AlexNet, seed 0: conv5 is 64 x 8 x 8 at 64 px, a
  window = 2x2 cells, 49 windows of 256-d per photo). Database windows from a seeded sample of the train
  photos, queries from the val photos (held out). Enough photos for 1M windows are there; if fewer, the
  windows are replicated with per-dimension noise 0.01 (recorded).

Times move with the machine's load: only the ratios within one run mean anything.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from cebench.cache import cache_root, files_key
from cebench.errors import CebenchError
from cebench.features.hog import hog
from cebench.features.index import FeatureIndex, recall_per_query
from cebench.images import normalize, open_rgb
from cebench.io import atomic_target, atomic_write_json
from cebench.pretrain.models import AlexNetConfig, build_encoder
from cebench.retrieval.patches import pil_to_uint8

from .timing import timed

DISTRIBUTIONS = ("mixture1000", "gauss200", "gauss2000", "relu32", "hog", "cnn")
REAL = ("hog", "cnn")
GEN_CHUNK = 100_000


def default_real_root() -> Path:
    """`../shared/data` beside the repository (the project's layout; absent in an installed package)."""
    return Path(__file__).resolve().parents[3] / "shared" / "data"  # benchmarks/perf/knn.py -> ../shared


# --------------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def clustered_vectors(n: int, dim: int, rng, centres: np.ndarray) -> np.ndarray:
    """n unit vectors [n, dim] from the spectrum-1/sqrt(i) cluster mixture `centres` [C, dim] (float32)."""
    spec = (1.0 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, GEN_CHUNK):  # chunks: keep the temporaries small at 1M
        m = min(GEN_CHUNK, n - s)
        x = centres[rng.integers(0, len(centres), m)] + rng.standard_normal((m, dim), dtype=np.float32) * spec
        out[s:s + m] = _unit(x)
    return out


def make_data(n: int, dim: int = 256, n_queries: int = 1000, n_val: int = 200, seed: int = 0):
    """`mixture1000`: (database, test queries, validation queries), queries fresh samples of the mixture."""
    rng = np.random.default_rng(seed)
    spec = (1.0 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)
    centres = rng.standard_normal((1000, dim), dtype=np.float32) * spec * 3
    return (clustered_vectors(n, dim, rng, centres), clustered_vectors(n_queries, dim, rng, centres),
            clustered_vectors(n_val, dim, rng, centres))


def _perturbed(raw, n: int, dim: int, n_queries: int, n_val: int, rng, query_noise: float):
    """Database [n, dim] of unit vectors from `raw(m) -> [m, dim]` raw rows, and queries that are raw
    database rows plus N(0, query_noise^2) per dimension, normalised: (db, test queries, validation)."""
    ids = rng.choice(n, n_queries + n_val, replace=False)
    order = np.argsort(ids)
    picked = np.empty((len(ids), dim), np.float32)
    db = np.empty((n, dim), np.float32)
    sorted_ids = ids[order]
    for s in range(0, n, GEN_CHUNK):
        m = min(GEN_CHUNK, n - s)
        r = raw(m)
        lo, hi = np.searchsorted(sorted_ids, [s, s + m])
        picked[order[lo:hi]] = r[sorted_ids[lo:hi] - s]
        db[s:s + m] = _unit(r)
    q = _unit(picked + query_noise * rng.standard_normal(picked.shape, dtype=np.float32))
    return db, q[:n_queries], q[n_queries:]


def gaussian_clusters(n: int, dim: int = 256, n_queries: int = 1000, n_val: int = 200, *, clusters: int = 200,
                      noise: float = 0.5, query_noise: float = 0.05, seed: int = 0):
    """`clusters` centres ~ N(0, I); a vector = its centre + N(0, noise^2) per dimension, normalised; queries:
    database vectors + N(0, query_noise^2) per dimension (before normalisation)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)

    def raw(m):
        return centres[rng.integers(0, clusters, m)] + noise * rng.standard_normal((m, dim), dtype=np.float32)
    return _perturbed(raw, n, dim, n_queries, n_val, rng, query_noise)


def relu_codes(n: int, dim: int = 256, n_queries: int = 1000, n_val: int = 200, *, rank: int = 32,
               noise: float = 0.1, query_noise: float = 0.05, seed: int = 0):
    """relu(z W) + N(0, noise^2) per dimension, z ~ N(0, I_rank), W [rank, dim] ~ N(0, 1/rank), normalised;
    queries as in `gaussian_clusters`."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rank, dim), dtype=np.float32) / np.float32(math.sqrt(rank))

    def raw(m):
        z = rng.standard_normal((m, rank), dtype=np.float32)
        return np.maximum(z @ w, 0) + noise * rng.standard_normal((m, dim), dtype=np.float32)
    return _perturbed(raw, n, dim, n_queries, n_val, rng, query_noise)


def synthetic(name: str, n: int, dim: int = 256, n_queries: int = 1000, n_val: int = 200, seed: int = 0):
    """(db, queries, validation queries, description) of one synthetic distribution by name."""
    if name == "mixture1000":
        return (*make_data(n, dim, n_queries, n_val, seed),
                "1000-cluster Gaussian mixture, spectrum 1/sqrt(i), L2-normalised; fresh queries")
    if name in ("gauss200", "gauss2000"):
        c = int(name[5:])
        return (*gaussian_clusters(n, dim, n_queries, n_val, clusters=c, seed=seed),
                f"{c:,} Gaussian clusters, centres N(0, I), noise 0.5 per dimension, L2-normalised; queries = "
                "database points + noise 0.05 per dimension")
    if name == "relu32":
        return (*relu_codes(n, dim, n_queries, n_val, seed=seed),
                "ReLU codes of a 32-d subspace + noise 0.1 per dimension, L2-normalised; queries = database "
                "points + noise 0.05 per dimension")
    raise ValueError(f"unknown synthetic distribution {name!r}")


# --------------------------------------------------------------------------------------------------
# Real patch features (Tiny ImageNet photos)
# --------------------------------------------------------------------------------------------------

HOG_WINDOWS, CNN_WINDOWS = 25, 49  # windows per 64 px photo


def _photos(paths: list[Path]):
    """uint8 [B, 3, 64, 64] of 64 px photos (others are resized)."""
    out = []
    for p in paths:
        img = open_rgb(p)
        if img.size != (64, 64):
            img = img.resize((64, 64))
        out.append(pil_to_uint8(img))
    return torch.stack(out)


def window_features(kind: str, paths: list[Path], batch: int = 256) -> np.ndarray:
    """float32 [len(paths) * windows, D] unit vectors of the windows of each photo (module docstring)."""
    torch.manual_seed(0)
    enc = build_encoder(AlexNetConfig.demo()).eval() if kind == "cnn" else None
    out = []
    with torch.no_grad():
        for s in range(0, len(paths), batch):
            x = _photos(paths[s:s + batch]).float() / 255.0                       # [B, 3, 64, 64]
            if kind == "hog":
                blocks = hog(x, 9, (8, 8), (2, 2), "L2-Hys", feature_vector=False)  # [B, 7, 7, 2, 2, 9]
                w = blocks.unfold(1, 3, 1).unfold(2, 3, 1)                         # [B, 5, 5, 2, 2, 9, 3, 3]
                f = w.permute(0, 1, 2, 6, 7, 3, 4, 5).reshape(-1, 324)             # hog's own vector order
            else:
                c5 = enc.forward_intermediates(normalize(x), ["conv5"])["conv5"]  # [B, 64, 8, 8]
                w = c5.unfold(2, 2, 1).unfold(3, 2, 1)                             # [B, 64, 7, 7, 2, 2]
                f = w.permute(0, 2, 3, 1, 4, 5).reshape(-1, 64 * 4)
            out.append(torch.nn.functional.normalize(f.float(), dim=1).numpy())
    return np.concatenate(out)


def real_features(kind: str, root: Path, n: int, n_queries: int = 1000, n_val: int = 200, seed: int = 0,
                  cache: Path | None = None):
    """(db [n, D], queries, validation queries, description, info) of Tiny ImageNet windows (module
    docstring), cached as float16 under `cache` (default: the user's cebench cache) keyed by the photos
    and settings."""
    tiny = Path(root) / "tiny-imagenet-200"
    train = sorted((tiny / "train").glob("*/images/*.JPEG"))
    val = sorted((tiny / "val" / "images").glob("*.JPEG"))
    if not train or not val:
        raise CebenchError(f"{tiny}: no Tiny ImageNet train/val photos (train/<wnid>/images/*.JPEG, val/images/*.JPEG)")
    per = HOG_WINDOWS if kind == "hog" else CNN_WINDOWS
    rng = np.random.default_rng(seed)
    n_photos = min(len(train), -(-n // per))
    db_paths = [train[i] for i in np.sort(rng.choice(len(train), n_photos, replace=False))]
    q_paths = [val[i] for i in np.sort(rng.choice(len(val), min(len(val), n_queries + n_val), replace=False))]
    key = files_key(db_paths + q_paths, kind, n, n_queries, n_val, seed, "v1")
    path = Path(cache or cache_root(None)) / "knn-real" / f"{kind}-{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                db, qv = z["db"].astype(np.float32), z["q"].astype(np.float32)
        except (OSError, ValueError, KeyError) as exc:
            raise CebenchError(f"{path}: damaged feature cache ({type(exc).__name__}: {exc}); delete it") from None
        print(f"[knn] {kind}: features from {path}", flush=True)
    else:
        # every window of the query photos; one picked per photo below
        (db, qf), seconds = timed(lambda: (window_features(kind, db_paths), window_features(kind, q_paths)))
        pick = np.arange(len(q_paths)) * per + rng.integers(0, per, len(q_paths))
        qv = qf[pick]
        print(f"[knn] {kind}: {len(db):,} database and {len(qv):,} query windows in {seconds:.1f}s", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_target(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, db=db.astype(np.float16), q=qv.astype(np.float16))
        db, qv = db.astype(np.float16).astype(np.float32), qv.astype(np.float16).astype(np.float32)
    # unit length again after float16 (norms 1 +- 1e-3 there): scikit-learn ranks by Euclidean distance, the
    # indexes by inner product, and the two orders agree only for unit vectors
    db, qv = _unit(db), _unit(qv)
    distinct = len(db)
    if distinct < n:  # fewer windows than wanted: noisy copies (said in the description and the info)
        extra = db[rng.integers(0, distinct, n - distinct)] + 0.01 * rng.standard_normal((n - distinct, db.shape[1]),
                                                                                          dtype=np.float32)
        db = np.concatenate([db, _unit(extra)])
    db = np.ascontiguousarray(db[:n])
    what = ("HOG (9 orientations, 8 px cells, 2x2 blocks, L2-Hys) of 32 px windows every 8 px" if kind == "hog"
            else "demo AlexNet (random init, seed 0) conv5 2x2-cell windows")
    desc = (f"real: {what} of Tiny ImageNet train photos ({n_photos:,} photos, {min(distinct, n):,} distinct "
            f"vectors{'' if distinct >= n else f', replicated with noise 0.01 to {n:,}'}), {db.shape[1]}-d, "
            "L2-normalised; queries: one window of each of held-out val photos")
    info = {"photos": n_photos, "distinct_vectors": int(min(distinct, n)), "replicated": bool(distinct < n)}
    return db, np.ascontiguousarray(qv[:n_queries]), np.ascontiguousarray(qv[n_queries:]), desc, info


# --------------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------------


def recall_at_k(ids: np.ndarray, ref: np.ndarray) -> float:
    """Mean over queries of |found top-k & exact top-k| / k: the benchmarks' recall@k, the mean of the
    per-query recall the index's own calibration measures (`features.index.recall_per_query`)."""
    return float(recall_per_query(ids, ref).mean())


def recall_with_ties(ids: np.ndarray, ref: np.ndarray, db: np.ndarray, q: np.ndarray, tol: float = 1e-5) -> float:
    """recall@k where a found neighbour also counts when it is as near as the k-th exact one (inner product
    with the query, in float64, at least the k-th's minus `tol`): on data with equal or float-equal vectors
    (HOG of flat windows) several ids are equally right, and an exact search scores below 1 by ids alone
    (the tie-aware recall of ann-benchmarks)."""
    k = ref.shape[1]
    qd = q.astype(np.float64)
    kth = np.einsum("ij,ij->i", qd, db[ref[:, -1]].astype(np.float64))                       # [M]
    found = np.einsum("mkd,md->mk", db[np.clip(ids[:, :k], 0, None)].astype(np.float64), qd)  # [M, k]
    return float((((found >= kth[:, None] - tol) & (ids[:, :k] >= 0)).sum(1)).mean() / k)


def _pick(search, values, val_q, val_ref, target: float):
    """Smallest setting of `values` whose validation recall reaches `target` (else the last)."""
    tried = {}
    for v in values:
        tried[v] = recall_at_k(search(val_q, v), val_ref)
        if tried[v] >= target:
            return v, tried
    return values[-1], tried


NPROBES = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256]


def _bench_one(db, q, val, *, k: int, target: float, nlists, coarse_dims, pca_nlists, gemm, hnsw_max_n: int,
               sq: bool, full: bool) -> dict:
    """Every method on one data set -> {"methods": {...}, "auto_resolved": {...}, "auto_calibration": {...}}."""
    import faiss
    from sklearn.neighbors import NearestNeighbors

    n, dim = db.shape
    out: dict = {"methods": {}}
    methods = out["methods"]
    # scikit-learn brute force: the speed reference and the exact neighbours
    (_, ref), t_sk = timed(lambda: NearestNeighbors(n_neighbors=k, algorithm="brute").fit(db).kneighbors(q))
    methods["sklearn brute"] = {"build_s": 0.0, "search_s": round(t_sk, 3), "total_s": round(t_sk, 3),
                                "recall_at_10": 1.0, "recall_at_10_ties": 1.0, "speedup_vs_sklearn": 1.0}
    print(f"[knn] sklearn brute: {t_sk:.2f}s ({n:,} x {dim}, {len(q)} queries)", flush=True)
    val_ref = FeatureIndex(dim, kind="flat", use_gpu=False).add(db).search(val, k)[1]  # untimed: for nprobe

    def record(name, build, params=None):
        index, t_b = timed(build)
        (_, ids), t_s = timed(lambda: index.search(q, k))
        row = {"build_s": round(t_b, 3), "search_s": round(t_s, 3), "total_s": round(t_b + t_s, 3),
               "recall_at_10": round(recall_at_k(ids, ref), 4),
               "recall_at_10_ties": round(recall_with_ties(ids, ref, db, q), 4),
               "speedup_vs_sklearn": round(t_sk / (t_b + t_s), 2)}
        methods[name] = {**row, **(params or {})}
        print(f"[knn] {name}: build {t_b:.2f}s search {t_s:.2f}s recall {row['recall_at_10']:.3f} "
              f"(ties {row['recall_at_10_ties']:.3f}) x{row['speedup_vs_sklearn']} vs sklearn", flush=True)
        return index

    def fixed(**kw):  # an index at exactly these settings: no calibration
        return lambda: FeatureIndex(dim, use_gpu=False, recall_target=None, **kw).add(db)

    record("faiss flat", fixed(kind="flat"))
    ivfs = [("ivf", nl, 0) for nl in nlists]
    ivfs += [("ivf", nl, cd) for cd in coarse_dims for nl in pca_nlists]
    ivfs += [("ivf-gemm", nl, cd) for nl, cd in gemm]
    for kind, nlist, cd in ivfs:
        ix = fixed(kind=kind, nlist=nlist, coarse_dim=cd)()  # untimed: nprobe on the validation queries

        def s_np(x, v, ix=ix):
            ix.set_nprobe(v)
            return ix.search(x, k)[1]

        nprobe, tried = _pick(s_np, [p for p in NPROBES if p <= ix.nlist], val, val_ref, target)
        del ix
        name = ("faiss ivf" if kind == "ivf" else "ivf-gemm") + f"{nlist}" + (f" coarse-pca{cd}" if cd else "")
        record(name, fixed(kind=kind, nlist=nlist, nprobe=nprobe, coarse_dim=cd),
               {"nlist": nlist, "nprobe": nprobe, "coarse_dim": cd, "val_recall_by_nprobe": tried})
    if full and n <= hnsw_max_n:
        ix = fixed(kind="hnsw", hnsw_m=16, ef_construction=40)()

        def s_ef(x, v, ix=ix):
            ix.index.hnsw.efSearch = v
            return ix.search(x, k)[1]

        ef, tried = _pick(s_ef, [16, 32, 64, 128, 256], val, val_ref, target)
        del ix
        record("faiss hnsw16", fixed(kind="hnsw", hnsw_m=16, ef_construction=40, ef_search=ef),
               {"ef_search": ef, "val_recall_by_ef": tried})
    elif full:
        methods["faiss hnsw16"] = {"skipped": f"n > hnsw_max_n={hnsw_max_n}: its build alone exceeds "
                                              "scikit-learn's whole search here"}
    if sq and full:
        def build_sq(nlist=256):
            idx = faiss.index_factory(dim, f"IVF{nlist},SQ8,RFlat", faiss.METRIC_INNER_PRODUCT)
            rows = np.sort(np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False))
            idx.train(db[rows])
            idx.add(db)
            faiss.extract_index_ivf(idx).nprobe = 2
            faiss.downcast_index(idx).k_factor = 4
            return idx

        record("faiss ivf256-sq8+refine", build_sq, {"nlist": 256, "nprobe": 2, "refine_k_factor": 4})
    if n >= 100_000:  # the default index of earlier versions: fixed lists and nprobe, no calibration
        record("ivf-gemm512 coarse-pca16 nprobe 3 (the previous auto, fixed)",
               fixed(kind="ivf-gemm", nlist=512, nprobe=3, coarse_dim=16),
               {"nlist": 512, "nprobe": 3, "coarse_dim": 16})
    auto = record("FeatureIndex auto", lambda: FeatureIndex(dim, kind="auto", use_gpu=False).add(db))
    out["auto_resolved"] = {"kind": auto.kind, "nlist": auto.nlist, "nprobe": auto.nprobe,
                            "coarse_dim": auto.coarse_dim}
    out["auto_calibration"] = {key: v for key, v in (auto.calibration or {}).items() if key != "query_ids"}
    methods["FeatureIndex auto"].update(auto_recall_measured_at_build=auto.recall, settings=auto.describe())
    print(f"[knn] auto: {auto.describe()}", flush=True)
    del auto
    # scikit-learn again at the end: the machine's load drifts during a run; the speed-ups above use
    # the first measurement, and this one says how far the load moved
    _, t_sk2 = timed(lambda: NearestNeighbors(n_neighbors=k, algorithm="brute").fit(db).kneighbors(q))
    methods["sklearn brute"]["total_s_again_at_end"] = round(t_sk2, 3)
    print(f"[knn] sklearn brute again: {t_sk2:.2f}s", flush=True)
    return out


def bench_knn(out_path=None, *, n: int = 200_000, dim: int = 256, n_queries: int = 1000, k: int = 10,
              nlists=None, threads: int = 2, target: float = 0.95, hnsw_max_n: int = 300_000,
              sq: bool = True, quick: bool = False, coarse_dims=(32,), pca_nlists=None,
              gemm=None, distributions=None, real_root=None) -> dict:
    """Run the benchmark on each of `distributions` (default: all of DISTRIBUTIONS; quick: the first only,
    20,000 vectors) and write the results as JSON. The top-level "data", "methods", "auto_resolved" are
    those of the first distribution (the layout of earlier versions); "distributions" holds every one."""
    import faiss

    if quick:
        n, n_queries, sq = min(n, 20_000), min(n_queries, 200), False
    names = list(distributions or (DISTRIBUTIONS[:1] if quick else DISTRIBUTIONS))
    unknown = [d for d in names if d not in DISTRIBUTIONS]
    if unknown:
        raise CebenchError(f"unknown kNN data {unknown}; choose from {', '.join(DISTRIBUTIONS)}")
    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)
    root = Path(real_root) if real_root else default_real_root()
    res: dict = {"n": n, "dim": dim, "queries": n_queries, "k": k, "threads": threads, "target_recall": target,
                 "distributions": {}}
    for i, name in enumerate(names):
        print(f"[knn] data {name} ...", flush=True)
        info = {}
        if name in REAL:
            if not (root / "tiny-imagenet-200").is_dir():
                res["distributions"][name] = {"skipped": f"no Tiny ImageNet photos under {root.name}/ (the "
                                                         "project's ../shared/data)"}
                print(f"[knn] {name}: skipped (no photos)", flush=True)
                continue
            db, q, val, desc, info = real_features(name, root, n, n_queries)
        else:
            db, q, val, desc = synthetic(name, n, dim, n_queries)
        full = i == 0  # every method on the first data; the main ones on the others
        if quick:
            sizes = dict(nlists=(32,), pca_nlists=(32,), gemm=((32, 8),))
        elif full:
            sizes = dict(nlists=(128, 256, 512), pca_nlists=(256, 512),
                         gemm=((512, 16), (512, 20), (512, 24), (1024, 16)))
        else:
            sizes = dict(nlists=(256,), pca_nlists=(512,), gemm=((512, 16),))
        part = _bench_one(db, q, val, k=k, target=target, nlists=nlists or sizes["nlists"], coarse_dims=coarse_dims,
                          pca_nlists=pca_nlists or sizes["pca_nlists"], gemm=gemm or sizes["gemm"],
                          hnsw_max_n=hnsw_max_n, sq=sq, full=full)
        res["distributions"][name] = {"data": desc, "n": int(db.shape[0]), "dim": int(db.shape[1]), **info, **part}
        if i == 0:  # the layout of earlier versions: the first distribution at the top
            res.update(data=desc, methods=part["methods"], auto_resolved=part["auto_resolved"])
        del db, q, val
    if out_path is not None:
        atomic_write_json(Path(out_path), res)
    return res
