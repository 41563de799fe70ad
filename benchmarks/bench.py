"""`cebench bench [pretrain|transfer|retrieval|training|knn|folder|reference|profile|demo|all]`: benchmarks.

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
from cebench.benchmarks.demo_timing import compare_demo_runs, demo_markdown
from cebench.benchmarks.profile import bench_profile
from cebench.errors import CebenchError
from cebench.io import atomic_write_json, atomic_write_text
from cebench.pretrain.reference import compare_reference
from cebench.pretrain.throughput import bench_pretrain
from cebench.pretrain.training_throughput import bench_training
from cebench.retrieval.folder_bench import bench_folder
from cebench.retrieval.knn_scale import bench_knn, knn_markdown
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


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int) and abs(v) >= 10000:
        return f"{v:,}"
    return str(v)


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return out


def _reference_rows(ref: dict) -> list[list]:
    rows = []
    for mode, r in (ref.get("modes") or {}).items():
        rows.append([f"inpainting CE step, 128 px, 4000-d, D on the centre ({mode})", r.get("cebench_img_per_s"),
                     r.get("port_img_per_s"), f"**{r.get('ratio')}x** ({r.get('ratio_min')}-{r.get('ratio_max')})",
                     f"{r.get('cpu_ratio')}x", ref.get("batch"), f"cpu, {ref.get('threads')} threads",
                     f"{r.get('rounds')} alternating rounds"])
    return rows


def _pretrain_rows(pre: dict) -> list[list]:
    rows = []
    for name, r in (pre.get("results") or {}).items():
        arch, _, dev = name.partition("@")
        rows.append([arch, r.get("img_per_s"), r.get("batch"), f"{_fmt(r.get('peak_mem_mb'))} MB ({r.get('memory')})",
                     f"{dev}, {r.get('threads')} thread(s)", _fmt(r.get("params"))])
    return rows


def _transfer_rows(tr: dict) -> list[list]:
    rows = []
    for name, r in tr.items():
        if not isinstance(r, dict) or "train_images_per_s" not in r:
            continue
        what = {"cls": "classification fine-tuning", "seg": "segmentation (FCN, pool5)",
                "seg_conv5": "segmentation (FCN, conv5)", "det": "detection (Fast R-CNN, 128 px)"}.get(name, name)
        size = r.get("input") or r.get("image") or (r.get("demo_128px") or {}).get("image")
        batch = r.get("batch") or r.get("images_per_batch") or (r.get("demo_128px") or {}).get("images_per_batch")
        rows.append([what, r.get("train_images_per_s"), r.get("infer_images_per_s"), batch, size,
                     f"{tr.get('device')}, {tr.get('threads')} threads"])
    return rows


def _retrieval_rows(rt: dict) -> list[list]:
    rows = []
    if "hog_ours_exact_img_s" in rt:
        rows.append([f"HOG, {rt.get('patch_size')} px patches (ours, exact)", rt["hog_ours_exact_img_s"],
                     f"{_fmt(rt.get('hog_speedup_vs_skimage'))}x scikit-image", rt.get("n_patches")])
    for layer in ("conv3", "pool5"):
        k = f"random_alexnet_demo_{layer}_img_s"
        if k in rt:
            rows.append([f"demo AlexNet features, {layer}", rt[k], "-", rt.get("n_patches")])
    return rows


def _knn_rows(kn: dict) -> list[list]:
    rows = []
    for name, r in (kn.get("methods") or {}).items():
        if "skipped" in r:
            rows.append([name, "-", "-", "-", "-", "-", r["skipped"]])
            continue
        settings = ", ".join(f"{k} {r[k]}" for k in ("nlist", "coarse_dim", "nprobe", "ef_search", "refine_k_factor")
                             if k in r and (k != "coarse_dim" or r[k]))
        rows.append([name, r.get("build_s"), r.get("search_s"), r.get("total_s"), r.get("recall_at_10"),
                     f"**{r.get('speedup_vs_sklearn')}x**" if name != "sklearn brute" else "1x", settings])
    return rows


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
    """results/bench.md: one readable table per kind of benchmark (one row per measurement), the
    side-by-side ratios first; every number of bench.json is also listed at the end."""
    m = data.get("machine", {})
    lines = ["# cebench performance benchmarks", "",
             f"Last written {data.get('date', '-')} by `cebench bench` on {m.get('cpu')} ({m.get('cpu_count')} "
             f"cores), GPU: {m.get('cuda') or 'none'}, torch {m.get('torch')}, Python {m.get('python')}. The "
             "sections come from runs on different days and CPUs: each names its own machine where it was "
             "recorded.",
             "", "This machine is shared and its speed changes 2-4x from hour to hour: compare ratios measured "
             "side by side in one run (the ratio columns), not absolute times across rows of different runs."]
    on = data.get("measured_on", {})

    def measured(name: str) -> list[str]:
        where = on.get(name)
        return [f"Measured on {where['cpu']}, {where['date']}.", ""] if where else []
    if data.get("demo"):
        lines += ["", *demo_markdown(data["demo"], _table)]
    ref = data.get("reference")
    if ref:
        lines += ["", "## Side by side: the inpainting context encoder's training step vs the PyTorch port",
                  "", f"`cebench bench reference --compare-reference PATH/model.py`; the port is "
                  f"{ref.get('reference')}, {_fmt(ref.get('g_params'))} G parameters. Ratio: median of the "
                  "per-round ratios (range); CPU ratio: CPU time per image, port / cebench.", "",
                  *measured("reference")]
        lines += _table(["what", "cebench img/s", "port img/s", "ratio", "CPU-time ratio", "batch", "device",
                         "rounds"], _reference_rows(ref))
    if "training" in data:
        lines += ["", *training_markdown(data["training"])]
    if data.get("knn"):
        kn = data["knn"]
        lines += ["", f"## Nearest neighbours at scale: {_fmt(kn.get('n'))} x {kn.get('dim')} vectors, "
                  f"{kn.get('queries')} queries, k {kn.get('k')}, {kn.get('threads')} threads", "",
                  f"`cebench bench knn --n {kn.get('n')}`; data: {kn.get('data')}. Speed-up = scikit-learn's "
                  "brute force time / (build + search); recall@10 against the exact neighbours; nprobe and "
                  "efSearch chosen on separate validation queries for recall >= "
                  f"{kn.get('target_recall')}. FeatureIndex auto resolved to {kn.get('auto_resolved')}.", "",
                  *measured("knn")]
        lines += _table(["method", "build s", "search s", "total s", "recall@10", "vs sklearn", "settings"],
                        _knn_rows(kn))
        lines += knn_markdown(kn, _table)  # the other data distributions (knn_scale.py)
    if data.get("folder"):
        f = data["folder"]
        lines += ["", "## `cebench retrieve` over a folder of photos", "",
                  f"`cebench bench folder --photos {f.get('photos')}`: the command as a user runs it (a fresh "
                  f"process), HOG, {f.get('patch')} px patches every {f.get('stride')} px, photos scaled to "
                  f"{f.get('max_side')} px first.", "", *measured("folder")]
        lines += _table(["photos (long side px)", "patches", "empty cache s", "filled cache s", "cache on disk",
                         "peak RSS", "float16 vs float32 recall@10", "device"],
                        [[f"{f.get('photos')} ({f.get('long_side_px')})", f.get("patches"), f.get("fresh_s"),
                          f.get("cached_s"), f"{_fmt(f.get('cache_mb'))} MB", f"{_fmt(f.get('peak_rss_mb'))} MB",
                          f.get("float16_recall_at_10_vs_float32"), f"cpu, {f.get('cpu_count')} cores"]])
        cnn = f.get("cnn")
        if cnn:
            lines += ["", f"With CNN features ({cnn['features']}), empty cache: "
                      + ", ".join(f"{'fp32' if k.endswith('none') else k.removeprefix('fresh_s_')} {v} s"
                                  for k, v in cnn.items() if k.startswith("fresh_s_"))
                      + f" (amp=auto chose {cnn['auto_precision']})."]
    if data.get("pretrain"):
        lines += ["", "## Pretraining steps (forward, backward, optimiser; synthetic input)", "", *measured("pretrain")]
        lines += _table(["architecture", "img/s", "batch", "memory", "device", "parameters"],
                        _pretrain_rows(data["pretrain"]))
    if data.get("transfer"):
        lines += ["", "## Transfer tasks", "", *measured("transfer")]
        lines += _table(["task", "train img/s", "inference img/s", "batch", "input", "device"],
                        _transfer_rows(data["transfer"]))
    if data.get("retrieval"):
        lines += ["", "## Retrieval features", "", *measured("retrieval")]
        lines += _table(["extractor", "patches/s", "vs reference", "patches"], _retrieval_rows(data["retrieval"]))
    lines += ["", "<details><summary>Every number in bench.json</summary>", ""]
    for stage in [k for k in data if k not in ("machine", "date", "measured_on")]:
        rows: list = []
        _flatten("", data[stage], rows)
        lines += ["", f"### {stage}", ""] + _table(["measurement", "value"], [[k, v] for k, v in rows
                                                                             if "raw" not in k.split(".")])
    lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def run_bench(which: str, out_dir: Path, device: str = "auto", quick: bool = False, *, reference=None,
              knn_n: int = 200_000, photos: int = 1000, demo_runs=None) -> dict:
    """Run one benchmark (or "all") and merge its numbers into out_dir/bench.json and bench.md.
    reference: the port's model.py for the side-by-side inpainting step (`reference`, and `all` when given)."""
    benches = _benches()
    benches["knn"] = lambda out, device, quick: bench_knn(out, n=knn_n, quick=quick)
    benches["folder"] = lambda out, device, quick: bench_folder(out, n_photos=photos, quick=quick)
    benches["reference"] = lambda out, device, quick: compare_reference(reference, out, quick=quick)
    benches["profile"] = lambda out, device, quick: bench_profile(out, quick=quick)
    benches["demo"] = lambda out, device, quick: compare_demo_runs(*demo_runs, out)
    if which == "reference" and not reference:
        raise CebenchError("bench reference needs --compare-reference PATH (the port's model.py)")
    if which == "demo" and not (demo_runs and all(demo_runs)):
        raise CebenchError("bench demo needs --old REPORT --new REPORT (two `cebench run` reports of one command)")
    # "all": every benchmark but the profile (minutes of its own), the reference (needs the port's path) and the
    # demo comparison (reads two finished runs)
    names = ([n for n in benches if n not in ("profile", "demo") and (n != "reference" or reference)]
             if which == "all" else [which])
    if which == "pretrain" and reference:
        names.append("reference")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "bench.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    machine = machine_info()  # read once: every section of this run names it, and the file's header
    for name in names:
        t0 = time.time()
        print(f"[bench] {name} ...", flush=True)
        data[name] = benches[name](out_dir / f"bench_{name}.json", device=device, quick=quick)
        print(f"[bench] {name} done in {time.time() - t0:.1f}s", flush=True)
        # each section keeps the machine and date it ran on: bench.json merges runs of several days and CPUs
        data.setdefault("measured_on", {})[name] = {"cpu": machine.get("cpu"), "date": time.strftime("%Y-%m-%d")}
    data["machine"] = machine
    data["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    atomic_write_json(path, data)
    atomic_write_text(out_dir / "bench.md", summary_markdown(data))
    print(f"[bench] wrote {path} and {out_dir / 'bench.md'}")
    return data


def _cmd(args) -> int:
    run_bench(args.which, Path(args.out or "results"), device=args.device, quick=args.quick,
              reference=args.compare_reference, knn_n=args.n, photos=args.photos, demo_runs=(args.old, args.new))
    return 0


def register(subparsers, common) -> None:
    p = subparsers.add_parser("bench", help="performance benchmarks of every stage (writes results/bench.json)",
                              description=__doc__)
    p.add_argument("which", nargs="?", default="all",
                   choices=["all", "pretrain", "transfer", "retrieval", "training", "knn", "folder", "reference",
                            "profile", "demo"])
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
    p.set_defaults(func=_cmd)
