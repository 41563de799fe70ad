"""The prepared GPU check (`scripts/gpu_check.sh` runs `python -m cebench.benchmarks.perf.gpu_check`).

On a machine with an NVIDIA GPU and no network: checks what is importable, runs every performance
benchmark (`cebench bench all`) and the paper protocol's full-size rehearsal (`cebench run --config
rehearsal`) on the GPU, and writes `results/bench_gpu.json` and `results/bench_gpu.md`. Everything
else it writes goes under `--work` (default runs/gpu-check). `--device cpu --quick` runs the same
path on a CPU at small sizes (the tests do), which says nothing about a GPU.
Exit status: 0 when the benchmarks and the rehearsal ran, 1 when the rehearsal failed or ran out of
time, 2 when something it needs is missing (no CUDA device, the rehearsal config, a package).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.resources
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from cebench.io import atomic_write_json, atomic_write_text
from cebench.runtime import machine_info

from . import bench
from .tables import training_markdown

REQUIRED = ("numpy", "PIL", "yaml", "tqdm", "pandas", "matplotlib", "scipy", "sklearn", "skimage", "cv2", "torchvision")
OPTIONAL = ("faiss", "submitit")
REHEARSAL = "rehearsal"  # benchmarks/configs/rehearsal.yaml: the paper protocol at full size, a few iterations


def missing_modules(names) -> list[str]:
    out = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - an import that fails for any reason is missing here
            out.append(name)
    return out


def rehearsal_config(name: str) -> Path | None:
    """A bundled config name (rehearsal, tiny, ...) or a YAML path; None when it does not exist."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.parent != Path("."):
        return path if path.is_file() else None
    bundled = Path(str(importlib.resources.files("cebench.benchmarks") / "configs" / f"{name}.yaml"))
    return bundled if bundled.is_file() else None


def run_rehearsal(config: Path, device: str, out: Path, overrides, timeout_s: float) -> dict:
    """`cebench run --config CONFIG --device DEVICE` into a fresh folder; statuses and wall time."""
    if out.exists():
        shutil.rmtree(out)  # a check measures a run from scratch, not a cached one
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "cebench.benchmarks.cli", "run", "--config", str(config), "--device", device,
           "--out", str(out), *overrides]
    t0 = time.time()
    with open(out.parent / f"{out.name}.log", "w") as log:
        try:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=max(timeout_s, 1)).returncode
        except subprocess.TimeoutExpired:
            rc = None
    res = {"config": str(config), "command": "cebench " + " ".join(cmd[3:]),
           "minutes": round((time.time() - t0) / 60, 2),
           "log": str(out.parent / f"{out.name}.log")}
    res["status"] = "ok" if rc == 0 else ("timeout" if rc is None else f"failed (exit {rc})")
    run_json = out / "report" / "run.json"
    if run_json.is_file():
        info = json.loads(run_json.read_text())
        res["jobs"] = {n: j["status"] for n, j in info.get("jobs", {}).items()}
        res["job_seconds"] = {n: j["seconds"] for n, j in info.get("jobs", {}).items()}
    return res


def gpu_markdown(data: dict) -> str:
    """results/bench_gpu.md: the training goals, each architecture's GPU step, the rehearsal."""
    m = data["machine"]
    lines = ["# cebench GPU check", "",
             f"GPU: {m.get('cuda') or 'none'} ({data['device']}), torch {m.get('torch')}, torchvision "
             f"{m.get('torchvision')}, CPU: {m.get('cpu')} ({m.get('cpu_count')} cores), {data['date']}; "
             f"the check took {data['minutes']:.1f} min.", ""]
    if data.get("missing_optional"):
        lines += [f"Optional packages not installed: {', '.join(data['missing_optional'])}.", ""]
    numbers = data.get("bench", {})
    if "training" in numbers:
        lines += [*training_markdown(numbers["training"]), ""]
    pre = numbers.get("pretrain", {}).get("results", {})
    gpu_rows = {k: v for k, v in pre.items() if not k.endswith(("@cpu", "@cpu-bf16"))}
    if gpu_rows:
        lines += ["## Training step per architecture (synthetic inputs)", "", "| net | img/s | batch | peak MB |",
                  "|---|---|---|---|"]
        lines += [f"| {k} | {v['img_per_s']:.0f} | {v['batch']} | {v['peak_mem_mb']:.0f} |"
                  for k, v in gpu_rows.items()]
        lines.append("")
    reh = data.get("rehearsal", {})
    lines += ["## Rehearsal", ""]
    if reh.get("status") == "missing":
        lines.append(f"Not run: {reh['note']}")
    elif reh.get("status") == "skipped":
        lines.append("Not run (--no-rehearsal).")
    else:
        jobs = reh.get("jobs", {})
        counts = {s: sum(v == s for v in jobs.values()) for s in sorted(set(jobs.values()))}
        done = ", ".join(f"{n} {s}" for s, n in counts.items()) or "none recorded"
        lines.append(f"`{reh.get('command')}`: {reh.get('status')} in {reh.get('minutes')} min; jobs: {done} "
                     f"(log {reh.get('log')}).")
    lines += ["", "Full numbers: bench_gpu.json (every benchmark, each job's seconds)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cebench.benchmarks.perf.gpu_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) | cuda:N | cpu (a dry run of the same path)")
    ap.add_argument("--out", default="results", help="where bench_gpu.json and bench_gpu.md go (default: results)")
    ap.add_argument("--work", default="runs/gpu-check", help="benchmark files, the rehearsal run and its log")
    ap.add_argument("--bench", default="all", help="which benchmarks (as `cebench bench`; default all)")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (tests)")
    ap.add_argument("--rehearsal", default=REHEARSAL, help="config of the pipeline run (default: rehearsal)")
    ap.add_argument("--no-rehearsal", action="store_true", help="benchmarks only")
    ap.add_argument("--budget-min", type=float, default=7.5,
                    help="the rehearsal is stopped when the whole check reaches this many minutes (default 7.5)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for the rehearsal run")
    args = ap.parse_args(argv)
    t0 = time.time()
    missing = missing_modules(REQUIRED)
    if missing:
        print(f"error: missing Python packages: {', '.join(missing)}; this machine has no network: install "
              "them from wheels carried with the repository (pip install --no-index --no-deps WHEEL)", file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device {args.device}: no CUDA device visible to torch {torch.__version__} "
              "(check nvidia-smi and CUDA_VISIBLE_DEVICES)", file=sys.stderr)
        return 2
    config = None if args.no_rehearsal else rehearsal_config(args.rehearsal)
    if not args.no_rehearsal and config is None:
        # said before the benchmarks run, and again at the end
        print(f"gpu_check: rehearsal config {args.rehearsal!r} not found (benchmarks/configs/{args.rehearsal}.yaml "
              "comes with the paper-protocol issue); the benchmarks run, the rehearsal does not", file=sys.stderr)
    work = Path(args.work)
    gpu = machine_info().get("cuda") or "no GPU"
    print(f"[gpu-check] {gpu}: cebench bench {args.bench} --device {args.device}",
          flush=True)
    numbers = bench.run_bench(args.bench, work / "bench", bench.Options(device=args.device, quick=args.quick))
    data = {"device": args.device, "machine": numbers.get("machine", machine_info()),
            "missing_optional": missing_modules(OPTIONAL),
            "bench": {k: v for k, v in numbers.items() if k not in ("machine", "date")}}
    rc = 0
    if args.no_rehearsal:
        data["rehearsal"] = {"status": "skipped"}
    elif config is None:
        data["rehearsal"] = {"status": "missing", "note": f"config {args.rehearsal!r} not found "
                             f"(benchmarks/configs/{args.rehearsal}.yaml); merge the paper-protocol work first"}
        rc = 2
    else:
        left = args.budget_min * 60 - (time.time() - t0)
        print(f"[gpu-check] rehearsal: cebench run --config {config} --device {args.device} "
              f"({left / 60:.1f} min left)", flush=True)
        data["rehearsal"] = run_rehearsal(config, args.device, work / "rehearsal", args.overrides, left)
        rc = 0 if data["rehearsal"]["status"] == "ok" else 1
        print(f"[gpu-check] rehearsal {data['rehearsal']['status']} in {data['rehearsal']['minutes']} min", flush=True)
    data["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    data["minutes"] = round((time.time() - t0) / 60, 2)
    out = Path(args.out)
    atomic_write_json(out / "bench_gpu.json", data)
    atomic_write_text(out / "bench_gpu.md", gpu_markdown(data))
    print(f"[gpu-check] wrote {out / 'bench_gpu.json'} and {out / 'bench_gpu.md'} ({data['minutes']:.1f} min)",
          flush=True)
    if rc == 2 and config is None:
        print(f"error: rehearsal config {args.rehearsal!r} not found: benchmark numbers written, rehearsal not run",
              file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
