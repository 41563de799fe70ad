"""`cebench bench profile`: where the time of one demo-sized job goes (results/profile.md).

Each job runs as its own `cebench` command in a fresh process under `python -m cProfile` (one thread,
as the demo's jobs run), shortened (cls/seg/det iterations, pretraining steps) so it takes seconds.
Its wall time is split by the functions it spends it in: process start-up (interpreter and imports,
until the command's main runs), data (decoding, the split caches, the demo tree, proposals),
initialisation (building the net, data-dependent init), the training loop's forward, backward,
optimiser and batch preparation (the rest of the loop), evaluation, checkpoints/figures, and the rest.
The per-iteration share scales to the demo's real iteration counts (the `demo_estimate` columns).

A pretraining step is split with torch.profiler by the labels `pretrain.engine.train_step` records
(forward, the discriminator's update, the adversarial forward, backward, optimiser) and by operator
kind, for the demo CE (64 px, batch 64, one thread), the paper-size AlexNet CE (227 px) and the
inpainting net (128 px, 4000-d, 2 threads); on synthetic inputs, so data loading is not in them.
"""

from __future__ import annotations

import importlib.resources
import os
import pstats
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from cebench.config import load_config
from cebench.data.sources import DataConfig, voc_root
from cebench.io import atomic_write_json, atomic_write_text
from cebench.runtime import Runtime

from .pretrain import configs, trainer_step
from .timing import timed

# (label, function name, file suffix) whose cumulative time is a phase; the first match wins for each
# label, and "train loop" is the parent whose remainder is batch preparation
PHASES = {
    "start-up (interpreter, imports)": [],
    "data (decode, split caches)": [("load_split", "transfer/data.py"), ("voc_root", "cebench/data/sources.py"),
                                    ("_dataset", "pretrain/train.py"), ("__init__", "transfer/det/data.py")],
    "proposals (det; shared by the demo's det jobs)": [("load_proposals", "transfer/det/proposals.py")],
    "init": [("encoder_for_job", "transfer/common.py"), ("build_model", "transfer/det/train.py"),
             ("build_ce", "pretrain/methods.py"), ("nets_and_optimizers", "pretrain/train.py")],
    "train loop": [("train_one_epoch", "transfer/engine.py"), ("train_one_epoch", "pretrain/engine.py")],
    "forward": [("loss_fn", "transfer/classification.py"), ("loss_fn", "transfer/segmentation.py"),
                ("loss_fn", "transfer/det/train.py")],
    "backward": [("backward", "torch/_tensor.py")],
    "optimizer": [("step", "torch/optim/adam.py"), ("step", "torch/optim/sgd.py"), ("step", "torch/optim/adamw.py"),
                  ("clip_grad_norm_", "torch/nn/utils/clip_grad.py"), ("step", "torch/optim/lr_scheduler.py")],
    "evaluation": [("evaluate", "transfer/classification.py"), ("evaluate", "transfer/segmentation.py"),
                   ("evaluate", "transfer/det/train.py"), ("evaluate", "pretrain/engine.py")],
    "checkpoints, samples, figures": [("save_checkpoint", "cebench/checkpoint.py"),
                                      ("_save_samples", "pretrain/train.py"), ("save_figure", "")],
}
# pretraining's train_step covers forward, backward and optimizer together
STEP = ("train_step", "pretrain/engine.py")

JOBS = {  # name: (command and options, overrides, the key of the iteration count, the demo's count)
    "cls": (["transfer", "cls", "--init", "random", "--seeds", "0"],
            ["cls.lrs=[0.001]", "select_seeds=[]", "workers=1", "threads=1"], "cls.iterations", 600),
    "seg": (["transfer", "seg", "--init", "random", "--seeds", "0"],
            ["seg.lrs=[0.01]", "select_seeds=[]", "workers=1", "threads=1"], "seg.iterations", 600),
    "det": (["transfer", "det", "--init", "random", "--seeds", "0"],
            ["det.lrs=[0.001]", "select_seeds=[]", "workers=1", "threads=1"], "det.iterations", 900),
    "pretrain": (["pretrain"], ["method=ce", "threads=1", "eval_images=64"], "steps", 700),
}


def _cum(stats: pstats.Stats, name: str, suffix: str) -> float:
    """Cumulative seconds of the function `name` defined in a file ending with `suffix`."""
    return sum(v[3] for (f, _, n), v in stats.stats.items() if n == name and f.replace(os.sep, "/").endswith(suffix))


def phases_of(stats: pstats.Stats, total: float) -> dict:
    """The job's seconds by phase (see PHASES); "other" is what no phase covers."""
    out = {label: sum(_cum(stats, n, s) for n, s in fns) for label, fns in PHASES.items()}
    out["start-up (interpreter, imports)"] = max(total - _cum(stats, "main", "benchmarks/cli.py"), 0.0)
    loop = out.pop("train loop")
    step = _cum(stats, *STEP)
    if step:  # pretraining: the step function holds forward + backward + optimizer
        out["forward"] = max(step - out["backward"] - out["optimizer"], 0.0)
        inner = step
    else:
        inner = out["forward"] + out["backward"] + out["optimizer"]
    out["batches (augmentation, masks, loop rest)"] = max(loop - inner, 0.0)
    out["other"] = max(total - sum(out.values()), 0.0)
    return out


LOOP = ("forward", "backward", "optimizer", "batches (augmentation, masks, loop rest)")


def profile_job(name: str, work: Path, iterations: int, config: str = "demo") -> dict:
    """Run one shortened job as `python -m cProfile -m cebench.benchmarks.cli ...` and split its time."""
    cmd, overrides, key, full = JOBS[name]
    argv = [*cmd, "--config", config, "--out", str(work / name), *overrides, f"{key}={iterations}"]
    env = {**os.environ, "CEBENCH_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    stats_file = work / f"{name}.prof"
    proc, wall = timed(lambda: subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(stats_file), "-m", "cebench.benchmarks.cli", *argv], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    if proc.returncode or "error:" in proc.stderr:  # (cProfile exits 0 when the command called sys.exit)
        raise RuntimeError(f"profiled job {name} failed: {proc.stderr.strip().splitlines()[-1:]}")
    stats = pstats.Stats(str(stats_file))
    ph = phases_of(stats, stats.total_tt)
    per_iter = sum(ph[k] for k in LOOP) / max(iterations, 1)
    fixed = sum(v for k, v in ph.items() if k not in LOOP)
    return {"iterations": iterations, "demo_iterations": full, "wall_s": round(wall, 2),
            "profiled_s": round(stats.total_tt, 2), "phases_s": {k: round(v, 3) for k, v in ph.items()},
            "demo_estimate_s": round(fixed + per_iter * full, 1)}


def profile_steps(steps: int = 3) -> dict:
    """torch.profiler split of a pretraining step by train_step's labels and by operator kind."""
    cases = {  # label: (the net of `cebench bench pretrain`, batch, threads)
        "ce demo 64 px (batch 64, 1 thread)": ("alexnet-ce-demo-64", 64, 1),
        "ce paper AlexNet 227 px (batch 32, 2 threads)": ("alexnet-ce-paper-227", 32, 2),
        "inpaint paper 128 px, 4000-d, D (batch 64, 2 threads)": ("inpaint-ce-paper-128", 64, 2),
    }
    kinds = (("convolution backward", ("convolution_backward",)),
             ("convolution forward", ("mkldnn_convolution", "aten::convolution", "aten::_convolution")),
             ("matrix products", ("aten::mm", "aten::bmm", "aten::addmm", "aten::linear")),
             ("batch norm", ("batch_norm",)), ("optimizer", ("_fused_adam", "Optimizer.step")))

    def kind_of(key: str) -> str:  # each operator counted once, under the first kind it matches
        return next((k for k, pats in kinds if any(p in key for p in pats)), "element-wise, copies, other")

    out = {}
    old = torch.get_num_threads()
    for name, (net, batch, threads) in cases.items():
        torch.set_num_threads(threads)
        step = trainer_step(configs()[net], Runtime(torch.device("cpu"), channels_last=True), batch)
        step.run()  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            _, wall = timed(step.run, repeat=steps)
        ev = prof.key_averages()
        labels = {e.key[5:]: e.cpu_time_total / 1e6 / steps for e in ev if e.key.startswith("step.")}
        ops = [e for e in ev if not e.key.startswith("step.") and not e.key.startswith("Optimizer.zero_grad")]
        by_kind: dict = {}
        for e in ops:
            by_kind[kind_of(e.key)] = by_kind.get(kind_of(e.key), 0.0) + e.self_cpu_time_total / 1e6 / steps
        total_self = sum(by_kind.values())
        out[name] = {"img_per_s": round(batch * steps / wall, 2), "step_s": round(wall / steps, 3),
                     "by_phase_s": {k: round(v, 3) for k, v in labels.items()},
                     "by_operator_kind_share": {k: round(v / max(total_self, 1e-9), 3) for k, v in by_kind.items()},
                     "top_operators_share": {
                         e.key: round(e.self_cpu_time_total / 1e6 / steps / max(total_self, 1e-9), 3)
                         for e in sorted(ops, key=lambda e: -e.self_cpu_time_total)[:6]},
                     "params": sum(p.numel() for p in step.objective.parameters()), "threads": threads,
                     "batch": batch}
        del step
    torch.set_num_threads(old)
    return out


def startup_s(repeat: int = 3) -> dict:
    """Seconds to start a process and import what a `cebench` command imports (median of `repeat`)."""
    res = {}
    for what, code in (("python + torch", "import torch"), ("python + cebench CLI", "import cebench.benchmarks.cli")):
        ts = [timed(lambda code=code: subprocess.run([sys.executable, "-c", code], check=True))[1]
              for _ in range(repeat)]
        res[what] = round(sorted(ts)[len(ts) // 2], 2)
    return res


def markdown(res: dict) -> str:
    lines = ["# Where the time goes", "", "Written by `cebench bench profile` (see `benchmarks/perf/profile.py`): "
             "each job run alone as its own `cebench` command, one thread, demo data, shortened, under cProfile; the "
             "demo estimate scales the per-iteration part to the demo's iteration count. The machine is shared: "
             "read the shares, not the seconds.", "", f"Process start-up: {res['startup']} (seconds).", ""]
    jobs = res["jobs"]
    labels = []
    for r in jobs.values():
        labels += [k for k in r["phases_s"] if k not in labels]
    header = ["job", "iterations run"] + labels + ["profiled s", "demo estimate s"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in jobs.items():
        tot = r["profiled_s"]
        cells = [name, str(r["iterations"])]
        cells += [f"{r['phases_s'].get(k, 0):.1f} s ({100 * r['phases_s'].get(k, 0) / tot:.0f}%)" for k in labels]
        cells += [f"{tot:.1f}", f"{r['demo_estimate_s']} ({r['demo_iterations']} it.)"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## A pretraining step (torch.profiler, synthetic inputs)", ""]
    for name, r in res["steps"].items():
        ph = ", ".join(f"{k} {v:.3f} s" for k, v in r["by_phase_s"].items())
        kinds = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(r["by_operator_kind_share"].items(),
                                                                  key=lambda kv: -kv[1]))
        top = ", ".join(f"`{k}` {100 * v:.0f}%" for k, v in r.get("top_operators_share", {}).items())
        lines += [f"- **{name}**: {r['img_per_s']} img/s, {r['step_s']} s a step ({_fmt_params(r['params'])}); "
                  f"by phase: {ph}; by operator kind: {kinds}; top operators: {top}."]
    if res.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.1f}M parameters"


NOTES = [
    "Start-up: importing torchvision pulls in torch._dynamo (through torchvision.ops), about half of the "
    "import time; every job of the pipeline pays it once per process.",
    "The inpainting step's 4000-d bottleneck convolution and up-convolution were the largest cost before they "
    "became matrix products (FullKernelConv2d/ConvTranspose2d): oneDNN ran that shape several times slower than "
    "the GEMM; the default per-tensor Adam over its 71M parameters took 0.28 s a step, fused Adam 0.05 s, and "
    "channels_last 4-D weights made fused Adam copy them each step (kept dense now).",
    "Dense HOG for `cebench retrieve` ran 4x faster on one torch thread than on two on this shared machine "
    "(OpenMP barriers between many small element-wise passes).",
]


def bench_profile(out_path=None, device: str = "cpu", quick: bool = False, *, iterations: int = 60,
                  config: str = "demo") -> dict:
    if quick:
        iterations, config = 2, "tiny"
    # the demo tree is generated once beforehand (the pipeline's data stage), not inside a profiled job
    yaml = Path(str(importlib.resources.files("cebench.benchmarks") / "configs" / f"{config}.yaml"))
    voc_root(load_config(DataConfig, yaml, [], section="data"), segmentation=True)
    with tempfile.TemporaryDirectory(prefix="cebench-profile-") as tmp:
        jobs = {name: profile_job(name, Path(tmp), iterations, config) for name in JOBS}
    res = {"startup": startup_s(1 if quick else 3), "jobs": jobs, "steps": profile_steps(1 if quick else 3),
           "config": config, "notes": NOTES}
    if out_path is not None:
        out_path = Path(out_path)
        atomic_write_json(out_path, res)
        atomic_write_text(out_path.with_name("profile.md"), markdown(res))
    return res
