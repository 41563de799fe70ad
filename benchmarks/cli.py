"""The `cebench` console command.

Each stage package contributes its subcommands through `register(subparsers, common)`; this module
only builds the parser, resolves `--config` names to the bundled YAML files and turns a
`CebenchError` into one line on stderr with exit status 2. `cebench bench` is registered here and its
package (`cebench.benchmarks.perf`) imported only when that command runs: no other command imports it.

A command imports only the stage that owns it (`COMMANDS`): the pipeline starts one `cebench` process per
job, and a fine-tuning job that imported the pretraining, retrieval and data CLIs (and a pretraining job the
transfer statistics' SciPy) paid for them at every start. `cebench --help`, a bad command or an option
before the command build the whole parser.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.resources
import sys
from pathlib import Path

import torch
import torchvision

from cebench import __version__
from cebench.errors import CebenchError

CONFIG_NAMES = ("tiny", "demo", "real", "paper", "rehearsal")
PERF = "cebench.benchmarks.perf.bench"  # `cebench bench`: imported when the command runs
# each command -> the module whose `register` adds it (imported when that command runs; in this order in --help)
COMMANDS = {
    "run": "cebench.benchmarks.pipeline_cli",
    "replicates": "cebench.benchmarks.replicates",
    "data": "cebench.data.cli",
    "pretrain": "cebench.pretrain.cli",
    "inpaint-eval": "cebench.pretrain.cli",
    "imagenet-weights": "cebench.pretrain.cli",
    "inpaint": "cebench.pretrain.cli",
    "transfer": "cebench.transfer.cli",
    "retrieve": "cebench.retrieval.cli",
    "retrieval-bench": "cebench.retrieval.cli",
}


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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `cebench` parser: with `command` (a key of `COMMANDS`), only the module that registers it is
    imported and registered (with `bench`); without, every command."""
    parser = argparse.ArgumentParser(
        prog="cebench",
        description="Context Encoders benchmark suite: pretrain by inpainting, evaluate inpainting, "
        "transfer, retrieval, and the paper's tables reproduced.",
    )
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = common_parser()
    modules = [COMMANDS[command]] if command in COMMANDS else dict.fromkeys(COMMANDS.values())
    for name in modules:
        importlib.import_module(name).register(sub, common)
    register_bench(sub)
    return parser


class _BenchNames:
    """The benchmark names as argparse `choices`, read from the perf package's table (`BENCHES`) only
    when a `bench` command is parsed or its help printed."""

    def _names(self):
        return importlib.import_module(PERF).NAMES

    def __contains__(self, name) -> bool:
        return name in self._names()

    def __iter__(self):
        return iter(self._names())


def register_bench(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="performance benchmarks of every stage (writes results/bench.json and bench.md)",
        description="Measure each stage's speed with the code that trains; merge the numbers into OUT/bench.json "
        "(one key per benchmark) and write OUT/bench.md. `all` runs every benchmark but profile, demo, and "
        "reference without --compare-reference. The modules: benchmarks/perf/ (one per name).")
    p.add_argument("which", nargs="?", default="all", choices=_BenchNames(), metavar="NAME",
                   help="%(choices)s (default: all)")
    p.add_argument("--out", default=None, help="output folder (default: results)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="fewer repetitions (used by the tests)")
    p.add_argument("--compare-reference", default=None, metavar="PATH",
                   help="the PyTorch port's model.py (github.com/BoyuanJiang/context_encoder_pytorch): time its "
                        "inpainting training step and ours alternately in one process (with pretrain/reference/all)")
    p.add_argument("--n", type=int, default=200_000, help="knn: database vectors (committed numbers: 1000000)")
    p.add_argument("--photos", type=int, default=1000, help="folder: photos in the generated folder")
    p.add_argument("--old", default=None, metavar="REPORT",
                   help="demo: the report folder (or run.json) of the earlier run of the command")
    p.add_argument("--new", default=None, metavar="REPORT", help="demo: the report of the run after it")
    p.set_defaults(func=lambda args: importlib.import_module(PERF).main(args))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv[0] if argv else None)
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
