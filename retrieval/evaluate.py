"""Quantitative nearest-neighbour retrieval (the paper's Fig. 7 made measurable).

On labelled data (the demo tree, VOC) a patch's label is the class under its centre; for each
feature type we report precision@1, precision@10 and mean average precision of object-centred
queries against a database of patches from other images, and chance (the expected precision of
a random ranking), as a CSV table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, TensorDataset

from cebench.config import save_config
from cebench.data.sources import DataConfig
from cebench.data.sources import voc_root as resolve
from cebench.errors import CebenchError, CheckpointError, ConfigError
from cebench.features.extract import extract_features
from cebench.features.hog import hog
from cebench.features.index import FeatureIndex
from cebench.io import atomic_write_csv, atomic_write_text
from cebench.pretrain.loading import imagenet_alexnet_encoder, load_encoder
from cebench.pretrain.models import AlexNetConfig, build_encoder
from cebench.runtime import autocast_context, init_runtime, to_channels_last

from .figure import retrieval_figure
from .patches import encoder_inputs, open_voc, split_queries, voc_patches


@dataclass
class RetrievalConfig:
    split: str = "test"                  # VOC split whose images are sampled
    patch_size: int = 32                 # patch side in image pixels
    patch_mode: str = "grid"             # grid | random
    patch_stride: int = 16               # grid step (px)
    patches_per_image: int = 16          # random mode: patches per image
    ignore: str = "skip"                 # void (255) centre: skip | background
    max_images: int = 0                  # 0 = all images of the split
    query_fraction: float = 0.2          # share of images whose object patches are queries
    max_queries: int = 1000              # 0 = all
    layers: list = field(default_factory=lambda: ["conv3", "pool5"])  # encoder layers compared
    pool: str | None = None              # None (flatten) | avg | max | avgmax
    masked: list = field(default_factory=lambda: [False, True])  # encoder input with centre masked
    mask_fraction: float = 0.5           # masked square side / input side (1/4 of the area)
    k: int = 10                          # neighbours for precision@k (also reports @1)
    map_k: int = 0                       # mAP over the top map_k (0 = over the whole database)
    index: str = "auto"                  # auto (exact below 500k patches, IVF above) | flat | ivf | ivf-gemm | hnsw
    recall_target: float = 0.95          # approximate indexes calibrate nprobe to this recall@k at build
    nlist: int = 1024
    nprobe: int = 16
    hnsw_m: int = 32
    hog_orientations: int = 9
    hog_cell: int = 8
    hog_block: int = 2
    batch_size: int = 256
    methods: list = field(default_factory=lambda: ["hog", "random", "imagenet"])  # built-in rows
    random_arch: str = "demo"            # the random row's AlexNet: demo | paper (as the paper's encoders) | caffenet
    checkpoints: dict = field(default_factory=dict)  # label -> checkpoint path (context encoder, autoencoder, ...)
    figure_queries: int = 6              # Fig. 7: number of query rows
    figure_k: int = 8                    # Fig. 7: neighbours shown per method
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"                    # auto: bf16 autocast on CUDA, fp32 elsewhere | bf16 | none
    data_root: str = ""                  # VOC root; "" = the demo tree of the data section
    out_dir: str = ""


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def precision_at_k(neighbour_labels: np.ndarray, query_labels: np.ndarray, k: int) -> float:
    """Mean over queries of the share of the first k neighbours with the query's label."""
    hits = neighbour_labels[:, :k] == query_labels[:, None]
    return float(hits.mean()) if hits.size else float("nan")


def average_precision(ranked_relevance: np.ndarray, n_relevant: np.ndarray | None = None) -> np.ndarray:
    """AP per query from relevance [Q, K] in ranked order. n_relevant: relevant items in the whole
    database (default: those in the ranking); for a truncated ranking AP@K divides by min(n_rel, K)."""
    rel = ranked_relevance.astype(np.float64)
    ranks = np.arange(1, rel.shape[1] + 1)
    prec = np.cumsum(rel, axis=1) / ranks
    denom = rel.sum(1) if n_relevant is None else np.minimum(n_relevant, rel.shape[1])
    return np.where(denom > 0, (prec * rel).sum(1) / np.maximum(denom, 1), 0.0)


def retrieval_metrics(q_feats, q_labels, db_feats, db_labels, *, k: int = 10, map_k: int = 0,
                      index_kind: str = "auto", nlist: int = 1024, nprobe: int = 16,
                      hnsw_m: int = 32, recall_target: float | None = 0.95) -> tuple[dict, np.ndarray]:
    """p@1, p@k, mAP and chance (in %) for L2-normalised features (inner-product search), and the index
    used: `index` (its kind and setting) and `index_recall` (its recall@k measured at build, 1.0 for exact
    search, NaN when not measured); also returns the neighbour ids [Q, max(k, map_k or N)] for figures."""
    q_labels, db_labels = np.asarray(q_labels), np.asarray(db_labels)
    n_db = len(db_labels)
    depth = n_db if map_k <= 0 else min(map_k, n_db)
    depth = max(depth, min(k, n_db))
    index = FeatureIndex(db_feats.shape[1], kind=index_kind, metric="ip", nlist=nlist, nprobe=nprobe,
                         hnsw_m=hnsw_m, recall_target=recall_target, recall_k=k)
    if depth > 2048 and index.use_gpu:  # faiss GPU caps k at 2048
        depth = 2048
    index.add(db_feats)
    _, ids = index.search(q_feats, depth)
    nl = np.where(ids >= 0, db_labels[np.clip(ids, 0, None)], -2)
    n_rel = (db_labels[None, :] == q_labels[:, None]).sum(1)
    # full ranking: AP over every relevant item; truncated: AP@depth over min(n_rel, depth)
    ap = average_precision(nl == q_labels[:, None], n_rel)
    chance = float((n_rel / max(n_db, 1)).mean())
    # percentages, as the report tables
    recall = index.recall
    return dict(p_at_1=100 * precision_at_k(nl, q_labels, 1), p_at_10=100 * precision_at_k(nl, q_labels, k),
                map=100 * float(ap.mean()), chance=100 * chance, index=index_label(index),
                index_recall=float("nan") if recall is None else recall), ids


def index_label(index: FeatureIndex) -> str:
    """The index's kind and search setting, e.g. "flat" or "ivf-gemm nprobe 12 (exact)"."""
    if index.kind in ("ivf", "ivf-gemm"):
        label = f"{index.kind} nprobe {index.nprobe}/{index.nlist}"
    elif index.kind == "hnsw":
        label = f"hnsw efSearch {index.ef_search}"
    else:
        label = index.kind
    exact = (index.calibration or {}).get("exact") and index.kind != "flat"
    return label + (" (exact)" if exact else "")


# --------------------------------------------------------------------------------------------------
# Feature functions
# --------------------------------------------------------------------------------------------------


def is_encoder(obj) -> bool:
    return hasattr(obj, "forward_intermediates")


def encoder_input_size(enc) -> int:
    cfg = getattr(enc, "cfg", None)
    return int(getattr(cfg, "input_size", 0) or getattr(enc, "input_size", 64))


def feature_variants(name: str, obj, cfg: RetrievalConfig) -> list[tuple[str, str, bool, callable]]:
    """(method, layer, masked, fn(uint8 patches [B,3,s,s]) -> [B, ...]) for one entry of `encoders`.
    An encoder gives one variant per layer and mask setting; any other callable is used as it is
    (it receives the patches as float in [0, 1])."""
    if not is_encoder(obj):
        return [(name, getattr(obj, "layer", "-"), False, lambda x, f=obj: f(x.float() / 255.0))]
    size = encoder_input_size(obj)
    out = []
    for layer in cfg.layers:
        for masked in cfg.masked:
            def fn(x, enc=obj, layer=layer, masked=masked):
                inp = encoder_inputs(x, size, mask_centre=masked, mask_fraction=cfg.mask_fraction)
                return enc.forward_intermediates(inp, [layer])[layer]
            out.append((name, layer, bool(masked), fn))
    return out


class HOGFeatures:
    """HOG on [0,1] patches, as a plain callable for `run_retrieval`."""

    layer = "hog"

    def __init__(self, orientations=9, cell=8, block=2):
        self.orientations, self.cell, self.block = orientations, cell, block

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return hog(x, self.orientations, (self.cell, self.cell), (self.block, self.block), "L2-Hys")


def _features(fn, patches: torch.Tensor, rt, batch_size: int, pool) -> np.ndarray:
    ds = TensorDataset(patches, torch.arange(len(patches)))
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False)
    return extract_features(fn, loader, device=rt.device, pool=pool, amp_context=lambda: autocast_context(rt)).feats


# --------------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------------


def run_retrieval(cfg: RetrievalConfig, voc_root, encoders: dict, out_dir, *,
                  figure: bool = True) -> pd.DataFrame:
    """Retrieval table over `encoders` (name -> encoder with forward_intermediates, or a callable on
    [0,1] patches such as HOGFeatures). Writes retrieval.csv (and fig_retrieval.png) to out_dir."""
    out_dir = Path(out_dir)
    rt = init_runtime(cfg.device, cfg.amp)  # the shared runtime: device and AMP chosen once
    device = rt.device
    voc = open_voc(voc_root, cfg.split)
    ps = voc_patches(voc, cfg.patch_size, mode=cfg.patch_mode, stride=cfg.patch_stride,
                     count=cfg.patches_per_image, ignore=cfg.ignore, max_images=cfg.max_images, seed=cfg.seed)
    queries, db = split_queries(ps, cfg.query_fraction, cfg.max_queries, cfg.seed)
    if len(queries) == 0 or len(db) == 0:
        raise CebenchError(f"{voc_root}: no object-centred query patches or no database patches "
                           f"(split {cfg.split!r}, patch size {cfg.patch_size})")
    rows, neighbours = [], {}
    for name, obj in encoders.items():
        if is_encoder(obj):
            obj.to(device).eval()
            if device.type == "cuda":  # NHWC for cuDNN (on the CPU the reference numbers stay as they were)
                to_channels_last(obj, rt)
        for method, layer, masked, fn in feature_variants(name, obj, cfg):
            qf = _features(fn, queries.patches, rt, cfg.batch_size, cfg.pool)
            dbf = _features(fn, db.patches, rt, cfg.batch_size, cfg.pool)
            m, ids = retrieval_metrics(qf, queries.labels.numpy(), dbf, db.labels.numpy(), k=cfg.k,
                                       map_k=cfg.map_k, index_kind=cfg.index, nlist=cfg.nlist,
                                       nprobe=cfg.nprobe, hnsw_m=cfg.hnsw_m, recall_target=cfg.recall_target)
            rows.append(dict(method=method, layer=layer, masked=masked, **m, dim=qf.shape[1],
                             n_queries=len(queries), n_database=len(db)))
            neighbours[(method, layer, masked)] = ids[:, : cfg.figure_k]
        if is_encoder(obj):
            obj.cpu()
    df = pd.DataFrame(rows, columns=["method", "layer", "masked", "p_at_1", "p_at_10", "map", "chance",
                                     "dim", "n_queries", "n_database", "index", "index_recall"])
    atomic_write_csv(out_dir / "retrieval.csv", df, float_format="%.4f")
    if figure and len(df):
        best = _figure_rows(df)
        retrieval_figure(queries.patches[: cfg.figure_queries],
                         {_label(k): db.patches[torch.from_numpy(neighbours[k][: cfg.figure_queries])]
                          for k in best},
                         out_dir / "fig_retrieval.png")
    return df


def _label(key) -> str:
    method, layer, masked = key
    return f"{method} {layer}" + (" masked" if masked else "") if layer not in ("-", "hog") else method


def _figure_rows(df: pd.DataFrame) -> list:
    """One row per method in the figure: its best variant by precision@10."""
    best = df.sort_values("p_at_10", ascending=False).drop_duplicates("method", keep="first")
    order = {m: i for i, m in enumerate(df["method"].drop_duplicates())}
    best = best.sort_values("method", key=lambda s: s.map(order))
    return [(r.method, r.layer, bool(r.masked)) for r in best.itertuples()]


def build_encoders(cfg: RetrievalConfig) -> tuple[dict, list[str]]:
    """name -> feature source for cfg.methods; returns (encoders, notes on unavailable rows)."""
    encoders, notes = {}, []
    for name in cfg.methods:
        if name in cfg.checkpoints:
            continue
        if name == "hog":
            encoders[name] = HOGFeatures(cfg.hog_orientations, cfg.hog_cell, cfg.hog_block)
        elif name == "random":
            presets = {"demo": AlexNetConfig.demo, "paper": AlexNetConfig.paper, "caffenet": AlexNetConfig.caffenet}
            if cfg.random_arch not in presets:
                raise ConfigError(f"retrieval.random_arch must be one of {', '.join(presets)}, "
                                  f"got {cfg.random_arch!r}")
            torch.manual_seed(cfg.seed)
            encoders[name] = build_encoder(presets[cfg.random_arch]()).eval()
        elif name == "imagenet":
            try:
                encoders[name] = imagenet_alexnet_encoder()
            except CheckpointError as exc:
                notes.append(f"imagenet: unavailable ({exc})")
        else:
            notes.append(f"{name}: no checkpoint given (--checkpoint '{name}=PATH')")
    for label, path in cfg.checkpoints.items():
        encoders[label] = load_encoder(path)
    return encoders, notes


def main(cfg: RetrievalConfig, voc_root=None) -> pd.DataFrame:
    """Wire: data root, encoders, the table, the figure, the resolved config."""
    out_dir = Path(cfg.out_dir or "results/retrieval")
    if voc_root is None:
        if cfg.data_root:
            voc_root = cfg.data_root
        else:
            voc_root = resolve(DataConfig(), segmentation=True)
    encoders, notes = build_encoders(cfg)
    df = run_retrieval(cfg, voc_root, encoders, out_dir)
    save_config(cfg, out_dir)
    if notes:
        atomic_write_text(out_dir / "retrieval_notes.txt", "\n".join(notes) + "\n")
    return df
