"""The `cebench` console command.

Each stage package contributes its subcommands through `register(subparsers, common)`; this module
only builds the parser, resolves `--config` names to the bundled YAML files and turns a
`CebenchError` into one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib.resources
import sys
from pathlib import Path

import torch
import torchvision

from cebench import __version__
from cebench.data import cli as data_cli
from cebench.errors import CebenchError
from cebench.pretrain import cli as pretrain_cli
from cebench.retrieval import cli as retrieval_cli
from cebench.transfer import cli as transfer_cli

from . import bench as bench_cli
from . import pipeline_cli, replicates

CONFIG_NAMES = ("tiny", "demo", "real", "paper", "rehearsal")


def resolve_config(value: str) -> Path:
    """`tiny` / `demo` / `paper` -> bundled YAML; anything else is a path to a YAML file, checked where it
    is read (`cebench.config.read_yaml`: one line naming the file, for a missing file, a folder, bytes
    that are not YAML or an empty file)."""
    if value in CONFIG_NAMES:
        return Path(str(importlib.resources.files("cebench.benchmarks") / "configs" / f"{value}.yaml"))
    return Path(value)


def common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=resolve_config, default=resolve_config("demo"),
                        help="tiny | demo | real | paper | rehearsal, or a YAML file (default: demo)")
    common.add_argument("--out", default=None, help="output folder")
    common.add_argument("--data", default=None,
                        help="VOC root (VOCdevkit, VOCyyyy or its parent); default: the demo tree")
    common.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    common.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. lr=3e-3 data.demo=tiny")
    return common


def version_line() -> str:
    """`cebench X.Y.Z (torch ..., torchvision ..., CUDA ...)`: what a bug report needs."""
    return (f"cebench {__version__} (torch {torch.__version__}, torchvision {torchvision.__version__}, "
            f"CUDA {torch.version.cuda or 'none (CPU build)'})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cebench",
        description="Context Encoders benchmark suite: pretrain by inpainting, evaluate inpainting, "
        "transfer, retrieval, and the paper's tables reproduced.",
    )
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = common_parser()
    for module in (pipeline_cli, replicates, data_cli, pretrain_cli, transfer_cli, retrieval_cli, bench_cli):
        module.register(sub, common)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CebenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
