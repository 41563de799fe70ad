"""The Python entry point: score your own encoder with the benchmark, from your training script.

`evaluate(encoder, name=..., config=..., tasks=...)` saves the encoder in the suite's checkpoint
format (named by a digest of its weights), then runs the same cached pipeline as `cebench run` with
`encoder.checkpoint=<that file> name=<name>` and returns the report's tables as pandas DataFrames.
Baseline rows already computed in the same output folder (e.g. by an earlier `cebench run`) are
reused from the cache; only the new encoder's jobs run.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

from cebench.config import read_yaml
from cebench.errors import ConfigError
from cebench.pretrain.compat import save_encoder, state_digest, to_alexnet_encoder
from cebench.pretrain.loading import load_encoder, save_encoder_checkpoint
from cebench.pretrain.methods import METHODS
from cebench.transfer.inits import INITS, canonical_name

from . import pipeline
from .cli import resolve_config

__all__ = ["evaluate", "save_encoder", "load_encoder", "TASKS", "TABLES"]

FINETUNE_TASKS = ("cls", "det", "seg")
TASKS = (*FINETUNE_TASKS, "svm", "retrieval")
# report file -> key of the dict `evaluate` returns
TABLES = {"table2": "table2.csv", "per_seed": "per_seed.csv", "paired": "paired.csv", "svm": "svm.csv",
          "retrieval": "retrieval.csv", "table1": "table1.csv"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._+()-]{0,63}$")


def _quote(value: str) -> str:
    """A YAML single-quoted scalar: the override parser reads it back as exactly this string."""
    return "'" + str(value).replace("'", "''") + "'"


def _config_path(config) -> Path:
    try:
        path = resolve_config(str(config))
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(str(exc)) from None
    read_yaml(path)  # a missing, empty or unreadable file: one ConfigError naming it, before any work
    return path


def _check_name(name: str) -> str:
    name = str(name or "").strip()
    if not _NAME.match(name):
        raise ConfigError(f"evaluate: name {name!r} must be 1-64 letters, digits, spaces or ._+()- "
                          "(it names the table rows and the job folders)")
    if canonical_name(name) in INITS:
        raise ConfigError(f"evaluate: name {name!r} is a built-in row ({canonical_name(name)}); choose another")
    return name


def run_overrides(*, tasks, baselines, checkpoint: Path, name: str) -> list[str]:
    """The `cebench run` overrides that add this encoder as a row and select the tasks."""
    tasks = tuple(tasks)
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise ConfigError(f"evaluate: tasks {list(bad) or '()'} unknown or empty; choose from {', '.join(TASKS)}")
    fine = [t for t in FINETUNE_TASKS if t in tasks]
    out = [f"run.tasks=[{', '.join(fine)}]", f"run.svm={'true' if 'svm' in tasks else 'false'}",
           f"run.retrieval={'true' if 'retrieval' in tasks else 'false'}",
           "run.inpaint=false",  # Table 1 scores the inpainting nets, not the plugged-in encoder
           f"encoder.checkpoint={_quote(checkpoint)}", f"name={_quote(name)}"]
    if baselines is not None:
        baselines = tuple(baselines)
        unknown = [b for b in baselines if b not in METHODS]
        if unknown:
            raise ConfigError(f"evaluate: baselines {unknown} unknown; pretraining methods: {', '.join(METHODS)}")
        out.append(f"run.methods=[{', '.join(baselines)}]")
    return out


def read_tables(report_dir: Path) -> dict[str, pd.DataFrame]:
    """The report's CSV tables (an empty frame for a table this run did not produce)."""
    tables = {}
    for key, fname in TABLES.items():
        path = Path(report_dir) / fname
        try:
            tables[key] = pd.read_csv(path) if path.is_file() else pd.DataFrame()
        except pd.errors.EmptyDataError:
            tables[key] = pd.DataFrame()
    return tables


def evaluate(encoder, *, name: str, config="demo", tasks=TASKS, baselines=None, out=None, overrides=(),
             device: str = "auto") -> dict[str, pd.DataFrame]:
    """Run the benchmark on `encoder` (an AlexNet-compatible module, see `cebench.AlexNetLike`).

    name: the row's name in every table. config: "tiny" | "demo" | "paper" or a YAML file.
    tasks: any of "cls", "det", "seg" (fine-tuning), "svm" (frozen features), "retrieval".
    baselines: pretraining methods to compare against (default: the config's run.methods; random
    is always a row). out: the output folder (default runs/<config>, the folder `cebench run` uses,
    so its cached rows are reused). overrides: further `SECTION.key=value` strings, applied last.
    Returns {"table2", "per_seed", "paired", "svm", "retrieval", "table1"} -> DataFrame, the CSVs
    written to `<out>/report/` (table2: one row per init and fine-tuning task, in %).
    """
    config_path = _config_path(config)
    name = _check_name(name)
    out = Path(out) if out is not None else Path("runs") / config_path.stem
    enc = to_alexnet_encoder(encoder)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")
    ckpt = (out / "plugins" / f"{slug}-{state_digest(enc)[:12]}.pt").resolve()
    ov = run_overrides(tasks=tasks, baselines=baselines, checkpoint=ckpt, name=name) + [str(o) for o in overrides]
    if not ckpt.is_file():  # new weights get a new file name, so every stage of this row reruns
        save_encoder_checkpoint(ckpt, enc, method="plugin", config={"name": name})
    report_dir = pipeline.main(config_path, ov, out, device=device)
    return read_tables(report_dir)
