"""Subcommands of the pretrain stage: `pretrain`, `inpaint-eval`, `inpaint` (wiring only; the methods
are `methods.METHODS`)."""

from __future__ import annotations

from cebench.cliutil import out_dir, split_overrides
from cebench.config import load_config
from cebench.data.sources import DataConfig

from . import inpaint_eval, train
from .config import PretrainConfig
from .inpaint import inpaint_file
from .loading import fetch_imagenet_weights, imagenet_weights_help, imagenet_weights_path
from .methods import METHODS


def _load(args, cls, section):
    ov = split_overrides(args.overrides, "data")
    cfg = load_config(cls, args.config, ov[""], section=section)
    data_cfg = load_config(DataConfig, args.config, ov["data"], section="data")
    return cfg, data_cfg


def cmd_pretrain(args) -> int:
    cfg, data_cfg = _load(args, PretrainConfig, "pretrain")
    if args.method:
        cfg.method = args.method
    out = out_dir(args, f"runs/pretrain-{cfg.method}")
    path = train.main(cfg, data_cfg, out, device=args.device, data_override=args.data)
    print(path)
    return 0


def cmd_inpaint_eval(args) -> int:
    cfg, data_cfg = _load(args, inpaint_eval.InpaintEvalConfig, "inpaint")
    out = out_dir(args, "runs/inpaint-eval")
    table = inpaint_eval.main(cfg, data_cfg, out, device=args.device, data_override=args.data, images=args.images,
                 ce=args.ce, ce_adv=args.ce_adv)
    print(table.to_string(index=False))
    return 0


def cmd_inpaint(args) -> int:
    path = inpaint_file(args.image, args.checkpoint, args.out_image, mask=args.mask, device=args.device,
                        mode=args.mode)
    print(path)
    return 0


def cmd_imagenet_weights(args) -> int:
    path = imagenet_weights_path()
    if args.download:
        path = fetch_imagenet_weights(timeout=args.timeout)
    elif not path.is_file():
        print(f"ImageNet AlexNet weights not found: {imagenet_weights_help(path)}")
        return 1
    print(f"ImageNet AlexNet weights: {path}")
    return 0


def register(subparsers, common) -> None:
    p = subparsers.add_parser("pretrain", parents=[common],
                              help="pretrain an encoder (context encoder, autoencoder, supervised, context "
                                   "prediction, jigsaw, colorization, rotation, the inpainting nets)",
                              description="Train one method; resumes from OUT/checkpoints/last.pt.")
    p.add_argument("--method", choices=list(METHODS), default=None, help="overrides pretrain.method")
    p.set_defaults(func=cmd_pretrain)

    p = subparsers.add_parser("inpaint-eval", parents=[common],
                              help="Table 1: inpainting L1/L2/PSNR vs NN and Telea baselines")
    p.add_argument("--images", default=None,
                   help="folder of held-out images (default: inpaint.heldout: the VOC test split, or pretrain-val: "
                        "the val split of data.pretrain_images)")
    p.add_argument("--ce", default=None, help="trained inpainting checkpoint, L2 (default: train per config)")
    p.add_argument("--ce-adv", dest="ce_adv", default=None, help="trained inpainting checkpoint, L2+adv")
    p.set_defaults(func=cmd_inpaint_eval)

    p = subparsers.add_parser("imagenet-weights",
                              help="where the ImageNet AlexNet weights are; --download fetches them",
                              description="torchvision's AlexNet_Weights.IMAGENET1K_V1 (the imagenet row of Table 2, "
                              "the SVM table and retrieval) in the torch hub cache ($TORCH_HOME/hub/checkpoints). "
                              "Nothing downloads unless --download is given.")
    p.add_argument("--download", action="store_true", help="download them (about 233 MB) if absent")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the server before giving up")
    p.set_defaults(func=cmd_imagenet_weights)

    p = subparsers.add_parser("inpaint", help="fill the centre (or a masked region) of an image",
                              description="Inpaint IMAGE with a trained inpainting checkpoint.")
    p.add_argument("image")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--mask", default=None, help="mask image, white = missing (default: the centre square)")
    p.add_argument("--out", dest="out_image", required=True, help="output PNG")
    p.add_argument("--mode", choices=("resize", "tile"), default="resize",
                   help="resize: the image is resized to the net's size and the fill resized back; "
                   "tile: (centre mask only) the net runs on the image's central square at its size")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_inpaint)
