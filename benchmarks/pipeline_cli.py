"""`cebench run`: registration of the pipeline command."""

from __future__ import annotations

from pathlib import Path

from cebench.cliutil import add_cache_arg
from cebench.errors import ConfigError

from .pipeline import main


def data_overrides(data: str | None, overrides) -> list[str]:
    """`cebench run --data DIR` is `data.root=DIR` (the VOC2007 tree; segmentation still reads
    data.seg_root when set); refused when it contradicts a data.root override."""
    overrides = list(overrides)
    if not data:
        return overrides
    given = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].strip() == "data.root"]
    if any(g != data for g in given):
        raise ConfigError(f"--data {data} and data.root={given[0]} disagree: give the VOC2007 root once "
                          "(--data DIR is data.root=DIR; segmentation reads data.seg_root)")
    return overrides if given else [*overrides, f"data.root={data}"]


def _cmd(args) -> int:
    main(args.config, data_overrides(args.data, args.overrides), Path(args.out or f"runs/{args.config.stem}"),
         device=args.device, force=tuple(args.force), dry_run=args.dry_run, cache=args.cache)
    return 0


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "run", parents=[common], help="run the whole benchmark pipeline (default: demo config, built-in data)",
        description="Run every stage (data, pretraining, inpainting evaluation, transfer, SVMs, retrieval, "
        "report) with caching: a second run skips finished stages; an interrupted run resumes. "
        "Overrides are SECTION.key=value (e.g. pretrain.steps=500), plus encoder.checkpoint=PATH name=NAME "
        "to add your own learner to every table. --data DIR is data.root=DIR (VOC2007); segmentation reads "
        "data.seg_root (VOC2012) and pretraining data.pretrain_images.")
    p.add_argument("--force", action="append", default=[], metavar="STAGE",
                   help="rerun a stage even if cached: pretrain, inpaint, transfer, svm, retrieval")
    p.add_argument("--dry-run", action="store_true", help="print the jobs and their commands, run nothing")
    add_cache_arg(p)
    p.set_defaults(func=_cmd)
