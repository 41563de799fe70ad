"""Installing cebench: the version, the dependency ranges against the pins, and a built wheel that
works outside the repository.

The wheel goes into a fresh venv (made without pip). Its other packages, pip included, are this
interpreter's, seen through a folder of symlinks named in a .pth file (everything but the editable
cebench and .pth files), so no 5 GB torch is copied and nothing is downloaded (pip runs with
--no-index and no config file). pip never changes those packages: they lie outside the new venv's
prefix (pip refuses to uninstall there), each install is a --dry-run first whose install set must be
cebench alone, and the test checks that the torch distribution it links to is unchanged afterwards.
CEBENCH_WHEEL_FULL_INSTALL=1 installs every dependency into the venv from the package index instead
(minutes, ~6 GB), for a release check.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

import cebench

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None

REPO = Path(__file__).resolve().parents[1]
PINS = REPO / "requirements" / "pins.txt"
# pyproject's package-dir: source folder -> installed package
PACKAGE_DIRS = {"cebench": "cebench", "pretrain": "cebench.pretrain", "transfer": "cebench.transfer",
                "retrieval": "cebench.retrieval", "benchmarks": "cebench.benchmarks"}
_NOT_DEPS = re.compile(r"(cebench|\.pth$|^__pycache__$)", re.I)  # the editable cebench, path hooks, bytecode
FULL = os.environ.get("CEBENCH_WHEEL_FULL_INSTALL") == "1"


def _env(*, pip_config: bool = False, **extra) -> dict:
    """The environment of every command here; pip reads no config file (no machine's index, find-links
    or constraints) unless `pip_config`."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", CEBENCH_NO_PROGRESS="1", PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    if not pip_config:
        env["PIP_CONFIG_FILE"] = os.devnull
    return env


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=kw.pop("env", _env()), **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _pins() -> dict[str, str]:
    pins = {}
    for line in PINS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def _dependencies() -> list[Requirement]:
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    return [Requirement(r) for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]


# --------------------------------------------------------------------------------------------------
# fast checks
# --------------------------------------------------------------------------------------------------


def test_version_flag_and_metadata_agree():
    from importlib.metadata import version

    proc = _run([sys.executable, "-m", "cebench.benchmarks.cli", "--version"])
    assert proc.stdout.startswith(f"cebench {cebench.__version__} (torch {torch.__version__}, torchvision ")
    assert f"CUDA {torch.version.cuda or 'none (CPU build)'})" in proc.stdout
    assert version("cebench") == cebench.__version__


def test_import_cebench_is_light():
    code = ("import sys, cebench; heavy = [m for m in ('torch', 'cebench.benchmarks', 'cebench.pretrain') "
            "if m in sys.modules]; assert not heavy, heavy; print(callable(cebench.evaluate))")
    assert _run([sys.executable, "-c", code]).stdout.strip() == "True"


def test_machine_info_records_versions_cuda_and_cpu():
    from cebench.runtime import machine_info

    info = machine_info()
    assert info["cebench"] == cebench.__version__ and info["torch"] == torch.__version__
    assert info["torch_cuda"] == torch.version.cuda and "cuda" in info
    assert isinstance(info["cpu"], str) and info["cpu"]
    cpuinfo = Path("/proc/cpuinfo")
    names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
             if ln.startswith("model name")] if cpuinfo.is_file() else []
    if names:
        assert info["cpu"] == names[0]


def test_pins_pin_every_dependency_inside_its_range():
    pins = _pins()
    deps = _dependencies()
    for req in deps:
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{req.name} has no pin in {PINS.name}"
        assert req.specifier.contains(pins[name]), f"pin {name}=={pins[name]} is outside pyproject's {req}"
    ranges = {r.name: r for r in deps}
    for name in ("torch", "torchvision"):  # ranges, not pins; the oldest supported versions admitted
        assert not any(s.operator == "==" for s in ranges[name].specifier), ranges[name]
    assert ranges["torch"].specifier.contains("2.11.0") and ranges["torchvision"].specifier.contains("0.26.0")


def test_setup_script_installs_with_the_pins():
    text = (REPO / "scripts" / "setup.sh").read_text()
    installs = [ln for ln in text.splitlines() if "pip install" in ln and not ln.lstrip().startswith("#")]
    assert installs and all('-c "$PINS"' in ln for ln in installs), installs
    assert "PINS=requirements/pins.txt" in text


# --------------------------------------------------------------------------------------------------
# the built wheel
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel` of a copy of the source tree (no build isolation: setuptools of this venv, offline)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    top = {".git", ".venv", "runs", "data", "out", "build", "dist", "results", "tests", ".pytest_cache"}

    def ignore(folder, names):  # the repo's outputs and caches (top level), bytecode and egg-info anywhere
        return [n for n in names if (Path(folder) == REPO and n in top) or n == "__pycache__"
                or n.endswith(".egg-info")]

    shutil.copytree(REPO, src, ignore=ignore)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", root / "dist", src])
    (whl,) = sorted((root / "dist").glob("cebench-*.whl"))
    return whl


def _expected_files() -> set[str]:
    out = set()
    for folder, package in PACKAGE_DIRS.items():
        for py in (REPO / folder).rglob("*.py"):
            rel = py.relative_to(REPO / folder)
            if "__pycache__" not in rel.parts:
                out.add("/".join([*package.split("."), *rel.parts]))
    out |= {f"cebench/benchmarks/configs/{p.name}" for p in (REPO / "benchmarks" / "configs").glob("*.yaml")}
    return out


def test_wheel_holds_every_module_and_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(_expected_files() - names)
    assert not missing, f"not in the wheel (add the package to pyproject's packages?): {missing}"
    tops = {n.split("/")[0] for n in names}
    assert tops == {"cebench", f"cebench-{cebench.__version__}.dist-info"}, f"top-level names in the wheel: {tops}"
    meta = zipfile.ZipFile(wheel).read(f"cebench-{cebench.__version__}.dist-info/METADATA").decode()
    requires = [ln.split(":", 1)[1].strip() for ln in meta.splitlines() if ln.startswith("Requires-Dist:")]
    torch_req = next(Requirement(r) for r in requires if Requirement(r).name == "torch")
    assert torch_req.specifier.contains("2.11.0") and torch_req.specifier.contains("2.14.1")


def _site_packages(python: Path) -> Path:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(_run([python, "-c", code]).stdout.strip())


def _link_deps(target: Path, *, skip=()) -> Path:
    """A folder of symlinks to this interpreter's installed packages (pip and setuptools included), cebench
    and .pth files left out."""
    target.mkdir(parents=True)
    here = {Path(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")}
    for site in here:
        for entry in site.iterdir():
            if _NOT_DEPS.search(entry.name) or any(entry.name.lower().startswith(s) for s in skip):
                continue
            if not (target / entry.name).exists():
                (target / entry.name).symlink_to(entry)
    return target


def _fake_dist(site: Path, name: str, version: str, requires=()) -> None:
    """Installed-distribution metadata only: what pip's resolver reads of an installed package."""
    d = site / f"{name}-{version}.dist-info"
    d.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
             *[f"Requires-Dist: {r}" for r in requires]]
    (d / "METADATA").write_text("\n".join(lines) + "\n")
    (d / "INSTALLER").write_text("pip\n")
    (d / "RECORD").write_text("")


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("venv")
    # pip (like torch's setuptools>=77) comes through the linked folder, unless the full install wants its own
    _run([sys.executable, "-m", "venv", *([] if FULL else ["--without-pip"]), root / "venv"])
    python = root / "venv" / "bin" / "python"
    deps = {"current": _link_deps(root / "deps-current"),
            # torch 2.11 / torchvision 0.26 as a cluster's environment has them (their metadata: the
            # versions and torchvision's exact torch requirement), beside the same other packages
            "torch-2.11": _link_deps(root / "deps-211", skip=("torch", "torchvision", "functorch", "torchgen"))}
    _fake_dist(deps["torch-2.11"], "torch", "2.11.0", ["filelock", "typing-extensions>=4.10.0", "sympy>=1.13.3",
                                                       "networkx>=2.5.1", "jinja2", "fsspec>=0.8.5"])
    _fake_dist(deps["torch-2.11"], "torchvision", "0.26.0", ["numpy", "torch==2.11.0", "pillow!=8.3.*,>=5.3.0"])
    return {"python": python, "site": _site_packages(python), "deps": deps, "root": root}


def _use(venv: dict, which: str) -> None:
    (venv["site"] / "cebench-test-deps.pth").write_text(f"{venv['deps'][which]}\n")


def _install_set(venv: dict, *args) -> subprocess.CompletedProcess:
    report = venv["root"] / "report.json"
    return subprocess.run([str(venv["python"]), "-m", "pip", "install", "--dry-run", "--no-index",
                           "--report", str(report), *map(str, args)], capture_output=True, text=True, env=_env())


def _names(venv: dict) -> dict[str, str]:
    report = json.loads((venv["root"] / "report.json").read_text())
    return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in report["install"]}


def test_an_installed_torch_is_kept_current_or_2_11(venv, wheel):
    for which, torch_version in (("current", torch.__version__.split("+")[0]), ("torch-2.11", "2.11.0")):
        _use(venv, which)
        seen = _run([venv["python"], "-c", "import importlib.metadata as m; print(m.version('torch'))"]).stdout
        assert seen.strip().split("+")[0] == torch_version
        proc = _install_set(venv, wheel)  # the ranges alone: what a user's `pip install cebench` resolves
        assert proc.returncode == 0, f"{which}: {proc.stderr[-2000:]}"
        assert _names(venv) == {"cebench": cebench.__version__}, f"{which}: would install {_names(venv)}"
    # the check can fail: the tested pins ask for torch 2.14.1, which the 2.11 environment lacks
    proc = _install_set(venv, "-c", PINS, wheel)
    assert proc.returncode != 0 and "The conflict is caused by" in proc.stdout + proc.stderr, proc.stderr[-2000:]
    assert re.search(r"torch==2\.14\.1|torchvision==0\.29\.1", proc.stdout + proc.stderr), proc.stderr[-2000:]


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_runs_the_tiny_pipeline_from_another_folder(venv, wheel):
    python, bindir = venv["python"], venv["python"].parent
    torch_dist = next(Path(torch.__file__).parents[1].glob(f"torch-{torch.__version__.split('+')[0]}*.dist-info"))
    before = {p.name: p.stat().st_mtime_ns for p in torch_dist.iterdir()}
    if FULL:
        (venv["site"] / "cebench-test-deps.pth").unlink(missing_ok=True)
        _run([python, "-m", "pip", "install", "--quiet", "-c", PINS, wheel], timeout=1800, env=_env(pip_config=True))
    else:
        _use(venv, "current")
        proc = _install_set(venv, "-c", PINS, wheel)
        assert proc.returncode == 0 and _names(venv) == {"cebench": cebench.__version__}, proc.stderr[-2000:]
        _run([python, "-m", "pip", "install", "--no-index", "--quiet", "-c", PINS, wheel])
    assert {p.name: p.stat().st_mtime_ns for p in torch_dist.iterdir()} == before, "the project's torch changed"

    work = venv["root"] / "elsewhere"
    work.mkdir()
    assert REPO not in work.parents
    where = _run([python, "-c", "import cebench, cebench.benchmarks.cli as c; print(cebench.__file__); "
                  "print(c.resolve_config('tiny'))"], cwd=work).stdout.split()
    assert all(Path(p).is_relative_to(venv["site"]) for p in where), where  # the wheel's files, not the repo's
    version = _run([bindir / "cebench", "--version"], cwd=work).stdout
    assert version.startswith(f"cebench {cebench.__version__} (torch ")

    # every stage runs from the installed package (its configs, entry point and modules): the wiring, so one
    # pretrained row (ce) beside random, one seed, grid proposals and a few steps keep it short (the tiny
    # config's own numbers are tests/test_pipeline.py's)
    small = ["run.methods=[ce]", "pretrain.steps=2", "inpaint.train.steps=2", "transfer.seeds=[0]",
             "transfer.cls.iterations=4", "transfer.seg.iterations=4", "transfer.det.iterations=4",
             "transfer.det.proposals.method=grid", "transfer.svm.layers=[conv5]", "retrieval.max_queries=20"]
    proc = _run([bindir / "cebench", "run", "--config", "tiny", "--out", "run", *small], cwd=work,
                timeout=900, env=_env(PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"))
    assert "[run] report:" in proc.stdout
    rep = work / "run" / "report"
    for name in ("results.md", "table1.csv", "table2.csv", "paired.csv", "per_seed.csv", "svm.csv", "retrieval.csv",
                 "run.json", "fig_inpainting.png", "fig_retrieval.png", "fig_curves.png", "fig_detections.png"):
        assert (rep / name).is_file() and (rep / name).stat().st_size > 0, name
    import pandas as pd

    t2 = pd.read_csv(rep / "table2.csv")
    assert set(t2["init"]) == {"random", "context encoder"} and set(t2["task"]) == {"cls", "seg", "det"}
    assert t2["mean"].between(0, 100).all()
    info = json.loads((rep / "run.json").read_text())
    assert all(job["status"] == "done" for job in info["jobs"].values()), info["jobs"]
    m = info["machine"]
    assert m["cebench"] == cebench.__version__ and m["torch"] == torch.__version__ and m["cpu"]
    assert "torch_cuda" in m and "cuda" in m
    assert Path(info["config"]).is_relative_to(venv["site"]), info["config"]  # configs are package data
    assert str(REPO) not in (rep / "results.md").read_text()
