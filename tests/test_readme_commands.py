"""Every `cebench ...` command in README.md, CONTRIBUTING.md and docs/*.md is valid as written.

Commands are read from the shell code blocks (```bash, ```sh or a bare ```) and from inline code
spans in the prose:

- every command is parsed by the real `cebench` parser (subcommand, flags, choices); a code-block
  command must be complete (required arguments given), an inline span may name a command without
  them (`cebench retrieve` in a sentence), but whatever it gives must be accepted;
- an inline synopsis (`cebench transfer cls|seg|svm|det --init NAME[=CKPT] ...`) is checked for every
  alternative it lists, its optional parts included;
- every concrete `cebench run` command is planned with `--dry-run` (its config resolves, every
  `key=value` override is a known key); a stage command's overrides are loaded into its own config
  section and data section, as the command itself loads them;
- `$DATA` is the value the same document gives it (`DATA="..."`); absolute output folders are moved
  into a temporary folder, and data paths the docs leave to the user stay placeholders (a dry run
  plans data that lives on another machine).

The plug-in example (a python block) is run by tests/test_api_plugin.py.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import itertools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from cebench.benchmarks.cli import build_parser, main
from cebench.cliutil import split_overrides
from cebench.config import load_config
from cebench.data.cli import _parse_overrides as demo_overrides
from cebench.data.sources import DataConfig
from cebench.pretrain.config import PretrainConfig
from cebench.pretrain.inpaint_eval import InpaintEvalConfig
from cebench.retrieval.evaluate import RetrievalConfig
from cebench.transfer.config import TransferConfig

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = [*sorted(REPO.glob("*.md")), *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.S | re.M)
SHELL_BLOCKS = ("", "bash", "sh", "shell", "console")
# `cebench ARGS`, `.venv/bin/cebench ARGS`, `VAR=x cebench ARGS`, `torchrun ... -m cebench.benchmarks.cli ARGS`
ENTRY = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(?:\.venv/bin/)?"
                   r"(?:cebench|(?:torchrun|python3?)\s.*?-m\s+cebench\.benchmarks\.cli)\s+(.*)$")
# the config section and dataclass a stage command loads its own overrides into (data.* go to `data`)
STAGE_SECTIONS = {"pretrain": (PretrainConfig, "pretrain"), "inpaint-eval": (InpaintEvalConfig, "inpaint"),
                  "transfer": (TransferConfig, "transfer"), "retrieval-bench": (RetrievalConfig, "retrieval")}


@dataclass(frozen=True)
class DocCommand:
    where: str          # docs/x.md:LINE
    text: str           # the arguments after `cebench`, continuation lines joined
    inline: bool        # from a code span in the prose (else from a code block)
    data: str | None    # the document's $DATA

    @property
    def synopsis(self) -> bool:
        """A usage line (`a|b`, `[optional]`, `...`), not a command to type."""
        return "|" in self.text or "..." in self.text or re.search(r"(^|\s)\[", self.text) is not None

    def argvs(self) -> list[list[str]]:
        """The command line(s) it stands for: one, or one per alternative of a synopsis."""
        text = self.text
        if "$DATA" in text:
            assert self.data is not None, f"{self.where}: uses $DATA, which the document never defines"
            text = text.replace("$DATA", self.data)
        if not self.synopsis:
            return [shlex.split(text)]
        text = text.replace("\\|", "|").replace("[", " ").replace("]", " ")
        tokens = [t for t in shlex.split(text) if t not in ("...", "&")]
        return [list(p) for p in itertools.product(*(t.split("|") for t in tokens))]


def _doc_commands(doc: Path) -> list[DocCommand]:
    text = doc.read_text(encoding="utf-8")
    name = doc.relative_to(REPO).as_posix()
    defined = re.search(r'\bDATA="([^"]*)"', text)
    data = defined.group(1) if defined else None
    cmds = []
    for m in FENCE.finditer(text):
        if m.group(1) not in SHELL_BLOCKS:
            continue
        first = text.count("\n", 0, m.start(2)) + 1
        lines = m.group(2).split("\n")
        i = 0
        while i < len(lines):
            start, line = i, lines[i]
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            i += 1
            line = re.sub(r"\s+#.*$", "", line).strip()
            entry = ENTRY.match(line)
            if entry:
                cmds.append(DocCommand(f"{name}:{first + start}", entry.group(1), False, data))
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)  # line numbers kept
    for m in re.finditer(r"`(cebench\s[^`]+)`", prose):
        line = prose.count("\n", 0, m.start()) + 1
        cmds.append(DocCommand(f"{name}:{line}", re.sub(r"\s+", " ", m.group(1))[len("cebench "):], True, data))
    return cmds


def _first_of_each(cmds, key):
    seen: dict = {}
    for c in cmds:
        seen.setdefault(key(c), c)
    return list(seen.values())


# a command written several times (the same text, form and $DATA) is checked once, where it first stands
COMMANDS = _first_of_each([c for doc in DOCS for c in _doc_commands(doc)], lambda c: (c.text, c.inline, c.data))
RUN_PLANS = _first_of_each([c for c in COMMANDS if not c.synopsis and c.text.split()[0] == "run"
                            and "--help" not in c.text], lambda c: (c.text, c.data))


def _ids(cmds):
    return [f"{c.where} {c.text[:60]}" for c in cmds]


def _lenient(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The parser with every argument optional (for a command named in a sentence without them)."""
    for action in parser._actions:
        action.required = False
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _lenient(sub)
    return parser


@functools.cache
def _parser(lenient: bool) -> argparse.ArgumentParser:
    return _lenient(build_parser()) if lenient else build_parser()


def _parse(argv: list[str], *, lenient: bool):
    """The parsed namespace; None for `--help` / `--version` (argparse exits 0 after printing)."""
    parser = _parser(lenient)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parser.parse_args(argv)
    except SystemExit as exc:
        assert exc.code == 0, f"cebench {' '.join(argv)}: {err.getvalue().strip().splitlines()[-1]}"
        return None


def _check_overrides(argv: list[str], args) -> None:
    """A stage command's `key=value` overrides load into its config section and the data section."""
    overrides = getattr(args, "overrides", None)
    if not overrides or argv[0] == "run":  # run: planned below
        return
    if argv[0] == "data":  # `cebench data demo`: fields of the demo generator
        demo_overrides(overrides)
        return
    cls, section = STAGE_SECTIONS[argv[0]]
    config = args.config if Path(args.config).is_file() else None  # a run's config.yaml: not here
    ov = split_overrides(overrides, "data")
    load_config(cls, config, ov[""], section=section if config else None)
    load_config(DataConfig, config, ov["data"], section="data" if config else None)


def _redirect_outputs(argv: list[str], tmp_path: Path) -> list[str]:
    """Absolute output folders (`--out /shared/runs/paper`) go under tmp_path; relative ones are
    already there (the tests run in tmp_path)."""
    out = list(argv)
    for i, a in enumerate(out[:-1]):
        if a in ("--out", "--cache") and out[i + 1].startswith("/"):
            out[i + 1] = str(tmp_path / out[i + 1].lstrip("/"))
    return out


def test_docs_have_commands():
    readme = [c for c in COMMANDS if c.where.startswith("README.md:")]
    assert len([c for c in readme if not c.inline]) >= 8, readme
    assert any(c.text.split()[0] == "run" for c in readme if not c.inline)
    in_docs = [c for c in COMMANDS if c.where.startswith("docs/") and not c.inline]
    assert len(in_docs) >= 10, in_docs  # the extraction finds the docs' code blocks
    assert len({c.where.split(":")[0] for c in RUN_PLANS}) >= 3  # run commands of several documents


@pytest.mark.parametrize("cmd", COMMANDS, ids=_ids(COMMANDS))
def test_doc_command_parses(cmd):
    for argv in cmd.argvs():
        args = _parse(argv, lenient=cmd.inline)
        if args is not None and not cmd.synopsis:
            _check_overrides(argv, args)


@pytest.mark.parametrize("cmd", RUN_PLANS, ids=_ids(RUN_PLANS))
def test_doc_run_command_plans(cmd, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CEBENCH_FAKE_GPUS", "4")  # the GPU commands plan on a fake 4-GPU machine
    (argv,) = cmd.argvs()
    argv = _redirect_outputs(argv, tmp_path)
    if "--dry-run" not in argv:
        argv.append("--dry-run")
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert ": cebench " in out  # the plan lists its jobs
