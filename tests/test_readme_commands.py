"""Every `cebench ...` command in the README is valid as written.

Each command of the README's bash blocks is parsed by the real `cebench` parser (subcommand, flags),
and every `cebench run` command is planned with `--dry-run` (its config resolves and every
`key=value` override is a known key), with the data paths the README leaves to the user replaced
by placeholders. The plug-in example is run by tests/test_api_plugin.py.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from cebench.benchmarks.cli import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"
PLACEHOLDER_DATA = "data.root=DATA/VOCdevkit data.seg_root=DATA/VOCdevkit/VOC2012 data.pretrain_images=DATA/images"


def readme_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            line = re.sub(r"^(CUDA_VISIBLE_DEVICES=\S+\s+)", "", line)
            if re.match(r"^(\.venv/bin/)?cebench\s", line):
                cmds.append(line)
    return cmds


def to_argv(cmd: str, tmp_path: Path) -> list[str]:
    cmd = cmd.replace("$DATA", PLACEHOLDER_DATA)
    argv = shlex.split(cmd)[1:]
    return [a.replace("/shared/runs/", f"{tmp_path}/runs/").replace("runs/", f"{tmp_path}/runs/", 1)
            if a.startswith(("runs/", "/shared/runs/")) else a for a in argv]


def test_readme_has_commands():
    cmds = readme_commands()
    assert len(cmds) >= 8, cmds
    assert any(c.split()[1] == "run" for c in cmds)


@pytest.mark.parametrize("cmd", readme_commands())
def test_readme_command_parses(cmd, tmp_path):
    argv = to_argv(cmd, tmp_path)
    args = build_parser().parse_args(argv)  # SystemExit (argparse's error) fails the test
    assert callable(args.func)


@pytest.mark.parametrize("cmd", [c for c in readme_commands() if c.split()[1] == "run"])
def test_readme_run_command_plans(cmd, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CEBENCH_FAKE_GPUS", "4")  # the README's GPU commands plan on a fake 4-GPU machine
    argv = to_argv(cmd, tmp_path)
    if "--config" not in argv:
        argv += ["--config", "demo"]
    rc = main(argv + ["--dry-run"])
    err = capsys.readouterr().err
    assert rc == 0, err
