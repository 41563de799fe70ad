"""`cebench data demo`, `cebench data check` and `cebench data prepare sysu-shapes`."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time

from cebench.data.check import check_dataset, format_report
from cebench.data.demo import DemoDataConfig, demo_config, generate_demo, paper_layout_paths
from cebench.data.sysu import SysuConfig, prepare_sysu
from cebench.data.sysu import format_report as format_prepare_report
from cebench.data.voc import VOCIndex
from cebench.errors import ConfigError
from cebench.images import list_images


def _parse_overrides(items: list[str]) -> dict:
    """`key=value` overrides for DemoDataConfig fields (ints, floats, comma tuples)."""
    fields = {f.name: f for f in dataclasses.fields(DemoDataConfig)}
    defaults = DemoDataConfig()
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ConfigError(f"bad override {item!r}; valid keys: {', '.join(fields)}")
        current = getattr(defaults, key)
        try:
            if isinstance(current, tuple):
                kind = type(current[0])
                out[key] = tuple(kind(v) for v in value.split(","))
            else:
                out[key] = type(current)(value)
        except ValueError:
            raise ConfigError(f"bad value in override {item!r}") from None
    return out


def cmd_demo(args) -> int:
    overrides = _parse_overrides(getattr(args, "overrides", None) or [])
    if args.seed is not None:
        overrides["seed"] = args.seed
    cfg = demo_config(args.size, **overrides)
    t0 = time.perf_counter()
    voc = generate_demo(args.out, cfg, force=args.force)
    seconds = time.perf_counter() - t0
    print(f"VOC root: {voc}")
    splits = ("trainval", "train", "val", "test")
    if cfg.layout != "paper":  # the rehearsal's pretraining images are a folder, not a split
        splits = ("pretrain", *splits)
    counts = {s: len(VOCIndex(voc, s).ids) for s in splits}
    print("images: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if cfg.layout == "paper":  # the rehearsal of the paper protocol: what --config paper reads
        extra = paper_layout_paths(voc.parent.parent)
        seg = {s: len(VOCIndex(extra["voc2012"], s, kind="segmentation").ids) for s in ("train", "val")}
        print(f"VOC2012 (segmentation): {extra['voc2012']}: " + ", ".join(f"{k} {v}" for k, v in seg.items()))
        print(f"pretraining images: {extra['pretrain_images']}: {len(list_images(extra['pretrain_images']))}")
        print(f"proposals (Fast R-CNN .mat format, not selective search): {extra['selective_search_data']}")
    print(f"classes ({len(cfg.classes)}): {', '.join(cfg.classes)}")
    print(f"took {seconds:.1f} s")
    return 0


def cmd_check(args) -> int:
    classes = [c for c in (getattr(args, "classes", None) or "").split(",") if c.strip()] or None
    report = check_dataset(args.root, classes=classes)
    print(format_report(report, max_issues=args.max_issues))
    return 0 if report.ok else 1


def cmd_prepare_sysu(args) -> int:
    cfg = SysuConfig(seed=args.seed, test_frac=args.test_frac, val_frac=args.val_frac, void_px=args.void_px,
                     limit_per_class=args.limit_per_class, strict=args.strict, origin=args.origin)
    command = "cebench data prepare sysu-shapes " + " ".join(shlex.quote(a) for a in (
        args.src, "--out", args.out, "--seed", str(args.seed), "--test-frac", f"{args.test_frac:g}",
        "--val-frac", f"{args.val_frac:g}", "--void-px", str(args.void_px), "--origin", args.origin,
        *(["--limit-per-class", str(args.limit_per_class)] if args.limit_per_class else []),
        *(["--strict"] if args.strict else [])))
    report = prepare_sysu(args.src, args.out, cfg, force=args.force, command=command)
    for path, problem in report.skipped:
        print(f"warning: {path}: {problem} (skipped)", file=sys.stderr)
    print(format_prepare_report(report))
    return 0


def register(subparsers, common: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add `data demo`, `data check` and `data prepare` (they take their own options, not the common ones)."""
    p = subparsers.add_parser("data", help="built-in demo data, dataset checks, conversion of published layouts")
    sub = p.add_subparsers(dest="data_command", required=True)

    d = sub.add_parser("demo", help="write the built-in demo data as a VOC tree (reused when present)")
    d.add_argument("--out", required=True, help="folder that receives VOCdevkit/VOC2007")
    d.add_argument("--size", default="demo", choices=["tiny", "demo", "large", "voc"],
                   help="voc: the paper-protocol rehearsal (VOC2007 + VOC2012 trees at VOC sizes, 20 VOC classes, "
                        "an image folder)")
    d.add_argument("--seed", type=int, default=None)
    d.add_argument("--force", action="store_true", help="regenerate even when an identical tree exists")
    d.add_argument("overrides", nargs="*", help="DemoDataConfig fields as key=value")
    d.set_defaults(func=cmd_demo)

    c = sub.add_parser("check", help="check a VOC tree or an image folder; exit 1 if problems are found")
    c.add_argument("root", help="VOCyyyy folder, the VOCdevkit above it, its parent, or a folder of images")
    c.add_argument("--max-issues", type=int, default=200, help="list at most this many of each kind")
    c.add_argument("--classes", default=None, metavar="NAMES_OR_FILE",
                   help="the class list, as data.classes: comma-separated names or a file with one name a line "
                        "(default: classes.txt at the VOC root, else the VOC classes or those the annotations use)")
    c.set_defaults(func=cmd_check)

    prep = sub.add_parser("prepare", help="convert a data set in its published layout into a VOC tree")
    kinds = prep.add_subparsers(dest="prepare_kind", required=True)
    s = kinds.add_parser("sysu-shapes", help="SYSU-Shapes (<class>/images/*.jpg, <class>/annotations/*.mat) "
                                             "-> a VOC tree with boxes, outline masks and stratified splits")
    s.add_argument("src", help="the SYSU-Shapes folder (read only; nothing is written into it)")
    s.add_argument("--out", required=True, help="the VOC root to write (data.root=OUT); reused when it holds a "
                                                "conversion with the same settings and source")
    s.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    s.add_argument("--test-frac", type=float, default=0.4, help="test share of each class (default 0.4)")
    s.add_argument("--val-frac", type=float, default=0.25, help="val share of each class's trainval (default 0.25)")
    s.add_argument("--void-px", type=int, default=5,
                   help="width of the void (255) band along each outline in the masks (default 5, 0: none)")
    s.add_argument("--limit-per-class", type=int, default=0,
                   help="only this many images of each class folder, chosen by a hash of the name (default: all)")
    s.add_argument("--origin", default="auto", choices=["auto", "0", "1"],
                   help="pixel-coordinate origin of the annotations: auto = 1 for the Caltech-101 photos (101_*, "
                        "MATLAB), 0 for the VOC photos (LabelMe), as the image edges show (default auto)")
    s.add_argument("--strict", action="store_true", help="stop at the first damaged file instead of skipping it")
    s.add_argument("--force", action="store_true", help="replace an earlier conversion with other settings at --out")
    s.set_defaults(func=cmd_prepare_sysu)
    return p


def main(argv=None) -> int:
    """Stand-alone entry (`python -m cebench.data.cli demo --out DIR`) until benchmarks/cli.py wires it."""
    parser = argparse.ArgumentParser(prog="cebench")
    register(parser.add_subparsers(dest="command", required=True), None)
    args = parser.parse_args(["data", *(argv if argv is not None else __import__("sys").argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
