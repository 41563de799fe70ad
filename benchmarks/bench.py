"""`cebench bench [pretrain|transfer|retrieval|all]`: every stage's performance benchmark.

Each stage owns its benchmark function (`bench_pretrain`, `bench_transfer`, `bench_retrieval`),
which measures throughput/memory and returns a dict; this module runs them, merges the numbers into
`results/bench.json` (one key per stage, so running one stage keeps the others) and writes a short
markdown summary beside it. GPU numbers are recorded when a GPU is at hand.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch
import torchvision

from cebench import __version__
from cebench.io import atomic_write_json, atomic_write_text
from cebench.pretrain.throughput import bench_pretrain
from cebench.pretrain.training_throughput import bench_training
from cebench.retrieval.throughput import bench_retrieval
from cebench.transfer.throughput import bench_transfer


def _benches():
    # the one mapping from a benchmark name to the function that runs it
    return {"pretrain": bench_pretrain, "transfer": bench_transfer, "retrieval": bench_retrieval,
            "training": bench_training}


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cebench": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,  # the CUDA torch was built with (None: a CPU build)
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,  # the GPU in use
    }
    try:
        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    return info


def _flatten(prefix, obj, rows):
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, rows)
    else:
        rows.append((prefix, obj))


def training_markdown(t: dict) -> list[str]:
    """The throughput goals as a table: value, goal, met, and the part that limits."""
    v = t.get("verdict", {})
    where = t.get("gpu") or t.get("device", "?")
    scope = "" if v.get("applies") else " (not this device: shown for reference)"
    lines = [f"## Pretraining throughput on {where}", "", f"Goals are for one H100/H200{scope}.",
             "", "| measurement | img/s | goal | met | limited by |", "|---|---|---|---|---|"]
    names = {"ce_step": f"AlexNet CE 227 px training step (batch {t.get('ce_step', {}).get('batch')})",
             "ce_end_to_end": "AlexNet CE end to end from JPEG files",
             "inpaint_step": "inpainting CE 128 px + discriminator step"}
    for key, label in names.items():
        g = v.get(key)
        if not g:
            continue
        extra = f" ({g['pipeline']})" if "pipeline" in g else ""
        met = "yes" if g["met"] else "no"
        lines.append(f"| {label}{extra} | {g['value']:.4g} | {g['goal']:.0f} | {met} | {g['limit']} |")
    j = t.get("jpeg", {})
    if j:
        lines += ["", f"JPEG input ({j.get('jpeg_size')} px files, {j.get('workers')} workers, batch "
                  f"{j.get('batch')}), img/s: DataLoader+PIL decode {j['loader_decode_img_per_s']:.0f}, "
                  f"+ augmentation {j['loader_decode_augment_img_per_s']:.0f}, end to end "
                  f"{j['loader_end_to_end_img_per_s']:.0f}; decode_jpeg on {t.get('device')} "
                  f"{j['device_decode_img_per_s']:.0f}, + augmentation {j['device_decode_augment_img_per_s']:.0f}, "
                  f"end to end {j['device_end_to_end_img_per_s']:.0f}."]
    if "paper_pretraining_hours" in v:
        lines.append(f"The paper's 100k steps x 64 images at the end-to-end rate: "
                     f"{v['paper_pretraining_hours']:.2f} h.")
    return lines


def summary_markdown(data: dict) -> str:
    lines = ["# cebench performance benchmarks", ""]
    m = data.get("machine", {})
    lines.append(f"Machine: {m.get('cpu')} ({m.get('cpu_count')} cores), GPU: {m.get('cuda') or 'none'}, "
                 f"torch {m.get('torch')}, Python {m.get('python')}")
    if "training" in data:
        lines += ["", *training_markdown(data["training"])]
    for stage in ("pretrain", "transfer", "retrieval", "training"):
        if stage not in data:
            continue
        lines += ["", f"## {stage}", "", "| measurement | value |", "|---|---|"]
        rows: list = []
        _flatten("", data[stage], rows)
        for k, v in rows:
            if isinstance(v, float):
                v = f"{v:.4g}"
            lines.append(f"| {k} | {v} |")
    return "\n".join(lines) + "\n"


def run_bench(which: str, out_dir: Path, device: str = "auto", quick: bool = False) -> dict:
    benches = _benches()
    names = list(benches) if which == "all" else [which]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "bench.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    for name in names:
        t0 = time.time()
        print(f"[bench] {name} ...", flush=True)
        data[name] = benches[name](out_dir / f"bench_{name}.json", device=device, quick=quick)
        print(f"[bench] {name} done in {time.time() - t0:.1f}s", flush=True)
    data["machine"] = machine_info()
    data["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    atomic_write_json(path, data)
    atomic_write_text(out_dir / "bench.md", summary_markdown(data))
    print(f"[bench] wrote {path} and {out_dir / 'bench.md'}")
    return data


def _cmd(args) -> int:
    run_bench(args.which, Path(args.out or "results"), device=args.device, quick=args.quick)
    return 0


def register(subparsers, common) -> None:
    p = subparsers.add_parser("bench", help="performance benchmarks of every stage (writes results/bench.json)",
                              description=__doc__)
    p.add_argument("which", nargs="?", default="all", choices=["all", "pretrain", "transfer", "retrieval", "training"])
    p.add_argument("--out", default=None, help="output folder (default: results)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="fewer repetitions (used by the tests)")
    p.set_defaults(func=_cmd)
