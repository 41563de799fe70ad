"""The suite runs on two pytest-xdist workers with `--dist loadgroup` (scripts/test.sh), and the tests that read
the session's shared tiny run (`tiny_run`, tests/conftest.py) carry `xdist_group("tiny_run")` so that one worker
computes it once. Both halves are checked here: every test taking the fixture is marked, and the installed
pytest + pytest-xdist honour the mark (pytest 9.2 with xdist 3.8 silently does not: pytest-xdist issue 1386,
hence the pytest pin in requirements/pins.txt)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def _marked_groups(fn: ast.FunctionDef) -> set[str]:
    out = set()
    for d in fn.decorator_list:
        if (isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "xdist_group"
                and d.args and isinstance(d.args[0], ast.Constant)):
            out.add(d.args[0].value)
    return out


def test_every_test_of_the_shared_tiny_run_is_in_its_group():
    users = []
    for path in sorted(TESTS.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_") and \
                    "tiny_run" in {a.arg for a in node.args.args}:
                users.append(f"{path.name}::{node.name}")
                assert "tiny_run" in _marked_groups(node), f"{path.name}::{node.name} lacks xdist_group('tiny_run')"
    assert len(users) >= 3, users  # test_pipeline (2) and test_data_readonly read it


def test_loadgroup_keeps_a_group_on_one_worker(tmp_path):
    pytest.importorskip("xdist")
    (tmp_path / "conftest.py").write_text(
        "import os, pytest\n"
        "@pytest.fixture(autouse=True)\n"
        "def _where(request):\n"
        "    with open('where.txt', 'a') as f:\n"
        "        f.write(f\"{request.node.name} {os.environ.get('PYTEST_XDIST_WORKER')}\\n\")\n")
    for m in range(3):  # three modules, two grouped tests and two free ones each
        (tmp_path / f"test_m{m}.py").write_text(
            "import pytest\n"
            + "".join(f"@pytest.mark.xdist_group('shared')\ndef test_g{m}{i}(): pass\n" for i in range(2))
            + "".join(f"def test_f{m}{i}(): pass\n" for i in range(2)))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "2",
                           "--dist", "loadgroup", "--rootdir", str(tmp_path),
                           str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    where = dict(line.split() for line in (tmp_path / "where.txt").read_text().splitlines())
    grouped = {name: w for name, w in where.items() if re.fullmatch(r"test_g\d\d", name)}
    assert len(grouped) == 6 and len(where) == 12, where
    assert len(set(grouped.values())) == 1, f"the xdist_group was split over workers: {grouped}"
    assert set(where.values()) == {"gw0", "gw1"}, where  # and the free tests did use both workers
