"""`cebench retrieve` (neighbours of a query in a folder of the user's own images) and `cebench
retrieval-bench` (the quantitative table on labelled data)."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from cebench.cache import ENV as CACHE_ENV
from cebench.cache import cache_root, file_stamp
from cebench.cliutil import split_overrides
from cebench.config import load_config
from cebench.data.sources import DataConfig, record_sources
from cebench.data.sources import voc_root as resolve
from cebench.errors import CebenchError
from cebench.features.extract import extract_features
from cebench.features.index import FeatureIndex
from cebench.images import open_rgb, require_images
from cebench.io import atomic_write_json
from cebench.pretrain.loading import imagenet_alexnet_encoder, load_encoder
from cebench.pretrain.models import AlexNetConfig, build_encoder
from cebench.runtime import autocast_context, init_runtime

from .evaluate import HOGFeatures, RetrievalConfig, feature_variants, main
from .figure import retrieval_figure
from .folder import PatchGrid, entry_dir, folder_features, load_image
from .patches import pil_to_uint8


def _hog(args):
    return HOGFeatures(9, max(4, args.patch_size // 8), 2)


def _checkpoint_encoder(args):
    if not args.checkpoint:
        raise CebenchError("--features ce needs --checkpoint CKPT (a cebench checkpoint); hog works without one")
    return load_encoder(args.checkpoint)


def _imagenet(args):
    return imagenet_alexnet_encoder()


def _random(args):
    torch.manual_seed(0)
    return build_encoder(AlexNetConfig.demo()).eval()


# Method names of `cebench retrieve --features` -> constructors (one plain dict).
FEATURES = {"hog": _hog, "ce": _checkpoint_encoder, "alexnet": _imagenet, "random": _random}


# --------------------------------------------------------------------------------------------------
# cebench retrieve
# --------------------------------------------------------------------------------------------------


def parse_query(text: str) -> tuple[Path, tuple[int, int, int, int] | None]:
    """IMAGE or IMAGE:x,y,w,h."""
    head, sep, tail = text.rpartition(":")
    if sep and tail.count(",") == 3:
        try:
            box = tuple(int(v) for v in tail.split(","))
        except ValueError:
            raise CebenchError(f"--query {text!r}: box must be four integers x,y,w,h") from None
        if box[2] <= 0 or box[3] <= 0:
            raise CebenchError(f"--query {text!r}: box width and height must be positive")
        return Path(head), box
    return Path(text), None


def _load_uint8(path: Path, min_side: int) -> torch.Tensor:
    img = open_rgb(path)
    if min(img.size) < min_side:  # small images are upscaled so at least one patch fits
        s = min_side / min(img.size)
        img = img.resize((max(min_side, round(img.width * s)), max(min_side, round(img.height * s))))
    return pil_to_uint8(img)


def _query_patch(path: Path, box, size: int) -> torch.Tensor:
    img = _load_uint8(path, 1)
    if box is not None:
        x, y, w, h = box
        H, W = img.shape[1:]
        if x < 0 or y < 0 or x + w > W or y + h > H:
            raise CebenchError(f"{path}: query box {x},{y},{w},{h} lies outside the {W}x{H} image")
        img = img[:, y : y + h, x : x + w]
    x = F.interpolate(img[None].float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8)


def retrieve(images_dir, queries: list[str], features: list[str], out_png, *, checkpoint=None, k: int = 8,
             patch_size: int = 64, stride: int | None = None, layer: str = "pool5", mask: bool = False,
             cache_dir=None, device: str = "auto", index_kind: str = "auto", max_side: int = 640,
             workers: int = 2, on_chunk=None, amp: str = "auto", recall_target: float | None = 0.95) -> Path:
    """Extract (or reuse from the cache) the features of every grid patch of a folder of images, per
    feature type, and write the neighbour grid of the query patches as a PNG. CNN features run under
    the runtime's precision (`amp`: auto = bf16 on CUDA and on a CPU whose start-up probe finds native
    bf16 faster; HOG is always fp32); their cache entry names the precision. The index of each feature
    type (an approximate one calibrated to `recall_target` at build) is printed with its measured
    recall@k and recorded in `<png stem>_index.json` beside the PNG."""
    images_dir = Path(images_dir)
    images = require_images(images_dir)
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise CebenchError(f"unknown feature type(s) {unknown}; choose from {', '.join(FEATURES)}")
    grid = PatchGrid(patch_size, stride or patch_size // 2, max_side)
    rt = init_runtime(device, amp)  # device and precision chosen once
    dev = rt.device
    qpatches = torch.cat([_query_patch(*parse_query(q), patch_size) for q in queries])
    root = cache_root(cache_dir, out_dir=Path(out_png).parent)
    cfg = RetrievalConfig(layers=[layer], masked=[mask])
    args = SimpleNamespace(checkpoint=checkpoint, patch_size=patch_size)
    neighbours, indexes = {}, {}
    for name in features:
        obj = FEATURES[name](args)
        if hasattr(obj, "to"):
            obj.to(dev)
        ck = file_stamp(checkpoint) if name == "ce" else None
        hog = isinstance(obj, HOGFeatures)
        precision = "fp32" if hog or rt.amp_dtype is None else "bf16"
        entry = entry_dir(root, images, images_dir, name, dict(ckpt=ck, grid=tuple(asdict(grid).values()),
                                                                 layer=layer, mask=mask,
                                                                 **({} if precision == "fp32" else {"amp": precision})))
        fn = feature_variants(name, obj, cfg)[0][3]
        if not hog:
            fn = _under_autocast(fn, rt)
        feats, boxes = folder_features(fn, images, entry, grid, device=dev, desc=f"{name} features",
                                       hog_params=obj if isinstance(obj, HOGFeatures) else None, workers=workers,
                                       on_chunk=on_chunk)
        index = FeatureIndex(feats.shape[1], kind=index_kind, metric="ip", recall_target=recall_target,
                             recall_k=k).add(feats)  # float16 in chunks
        print(f"[retrieve] {name}: {index.ntotal:,} patches, index {index.describe()}", flush=True)
        indexes[name] = {"patches": index.ntotal, "index": index.describe(), "recall_at_k": index.recall,
                         "calibration": index.calibration}
        qf = extract_features(fn, [(qpatches, torch.arange(len(qpatches)))], device=dev).feats
        _, ids = index.search(qf, min(k, index.ntotal))
        del index
        rows = []
        for qi in range(len(qpatches)):  # re-crop the k neighbours of each query from their images
            crops = []
            for j in ids[qi]:
                im, x, y = boxes[j]
                img = load_image(images[im], grid)
                crops.append(img[:, y : y + patch_size, x : x + patch_size])
            rows.append(torch.stack(crops))
        neighbours[name if name != "ce" else f"ce ({Path(checkpoint).name})"] = torch.stack(rows)
        if hasattr(obj, "cpu"):
            obj.cpu()
    out = retrieval_figure(qpatches, neighbours, out_png)
    atomic_write_json(index_record_path(out), indexes)
    return out


def index_record_path(png) -> Path:
    """Where `retrieve` records the index of each feature type: `<png stem>_index.json` beside the PNG."""
    png = Path(png)
    return png.with_name(f"{png.stem}_index.json")


def _under_autocast(fn, rt):
    """fn run under the runtime's autocast, its output back in fp32 (the cache stores float16 anyway)."""
    def run(x):
        with autocast_context(rt):
            return fn(x).float()
    return run


def _cmd_retrieve(args) -> int:
    out = Path(args.out or "retrieval_grid.png")
    if out.suffix.lower() != ".png":
        out = out / "retrieval_grid.png"
    feats = [f.strip() for f in args.features.split(",") if f.strip()]
    path = retrieve(args.images, args.query, feats, out, checkpoint=args.checkpoint, k=args.k,
                    patch_size=args.patch_size, stride=args.stride, layer=args.layer, mask=args.mask,
                    cache_dir=args.cache, device=args.device, index_kind=args.index, max_side=args.max_side,
                    amp=args.amp, recall_target=args.recall_target)
    print(f"wrote {path} and {index_record_path(path).name} (the index of each feature type, its recall)")
    return 0


def _cmd_retrieval(args) -> int:
    ov = split_overrides(args.overrides, "data")
    cfg = load_config(RetrievalConfig, args.config, ov[""], section="retrieval")
    if args.out:
        cfg.out_dir = args.out
    if args.device and args.device != "auto":
        cfg.device = args.device
    data_cfg = load_config(DataConfig, args.config, ov["data"], section="data")
    voc_root = None
    if args.data or not cfg.data_root:  # labelled patches need segmentation masks: the seg source
        voc_root = resolve(data_cfg, args.data, segmentation=True)
    for item in args.checkpoint or []:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise CebenchError(f"--checkpoint {item!r}: expected LABEL=PATH")
        cfg.checkpoints[label] = path
    df = main(cfg, voc_root)
    record_sources(cfg.out_dir or "results/retrieval", data_cfg, voc=str(voc_root or cfg.data_root),
                   split=cfg.split, patch_size=cfg.patch_size)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"index_recall: recall@{cfg.k} of the nearest-neighbour index each row used, measured on its own "
          "database at build (1 = exact search)")
    return 0


def _recall_target(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value


def register(subparsers, common) -> None:
    p = subparsers.add_parser("retrieve", parents=[common],
                              help="nearest-neighbour patches for a query in a folder of your images (Fig. 7 grid)")
    p.add_argument("--images", required=True, help="folder of images (any sizes, PNG or JPEG)")
    p.add_argument("--query", required=True, action="append",
                   help="IMAGE or IMAGE:x,y,w,h (repeat for several queries)")
    p.add_argument("--features", default="hog", help=f"comma list of {', '.join(FEATURES)} (default: hog)")
    p.add_argument("--checkpoint", default=None, help="cebench checkpoint for --features ce")
    p.add_argument("--k", type=int, default=8, help="neighbours shown per method")
    p.add_argument("--patch-size", type=int, default=64, help="database patch side in px")
    p.add_argument("--stride", type=int, default=None, help="database grid step (default: patch size / 2)")
    p.add_argument("--layer", default="pool5", help="encoder layer (conv3, conv4, conv5, pool5)")
    p.add_argument("--mask", action="store_true", help="mask the patch centre for encoders (as CE training)")
    p.add_argument("--max-side", type=int, default=640,
                   help="scale images whose longer side exceeds this down first (default 640; 0 = native size)")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "none"),
                   help="precision of CNN features (auto: bf16 on CUDA and on CPUs where it is native and faster)")
    p.add_argument("--index", default="auto", choices=("auto", "flat", "ivf", "ivf-gemm", "hnsw"),
                   help="auto (default): exact below 500k patches, IVF from there on, calibrated to --recall-target")
    p.add_argument("--recall-target", type=_recall_target, default=0.95, metavar="R",
                   help="an approximate index raises nprobe at build until its recall@k, measured on its own "
                        "patches, reaches R (default 0.95), or searches exactly; printed and recorded")
    p.add_argument("--cache", default=None,
                   help=f"feature cache folder (default: ${CACHE_ENV}, else a 'cache' folder beside the output PNG)")
    p.set_defaults(func=_cmd_retrieve)
    t = subparsers.add_parser("retrieval-bench", parents=[common],
                              help="retrieval table (precision@1/@10, mAP in %%) on labelled data + Fig. 7")
    t.add_argument("--checkpoint", action="append", default=[], metavar="LABEL=PATH",
                   help="an encoder checkpoint to compare (repeat), e.g. 'context encoder=ce.pt'")
    t.set_defaults(func=_cmd_retrieval)
