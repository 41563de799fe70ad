"""`cebench run`: the whole benchmark as cached, resumable, parallel stages.

main(cfg) only wires: resolve the config (every section typed and validated) and the precision (once
per run), resolve the data (generating the demo tree), plan one job per unit of work (a pretraining, an
inpainting evaluation, a task's preparation such as detection's proposals, a transfer task for one
initialisation, the SVMs, the retrieval benchmark), let the scheduler run what is not cached, then write
the report. Every job is one `cebench` subcommand writing into its own folder under `--out`, given the
resolved config file (which names the run's precision), so any stage can also be rerun by hand with the
same command; its cache key is `cebench.cache.cache_key` over what it reads.
"""

from __future__ import annotations

import functools
import json
import os
import time
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import yaml

from cebench.cache import cache_key, cache_root
from cebench.config import (
    config_from_dict,
    config_to_dict,
    load_config,
    parse_overrides,
    read_yaml,
    save_config,
)
from cebench.data.demo import DEMO_PRESETS, content_key
from cebench.data.sources import DataConfig, source_of, voc_root
from cebench.data.voc import find_voc_root
from cebench.errors import CebenchError, ConfigError
from cebench.io import atomic_write_json
from cebench.pretrain.inpaint_eval import InpaintEvalConfig
from cebench.pretrain.loading import fetch_imagenet_weights, imagenet_weights_path
from cebench.pretrain.methods import cache_view, reads_silhouettes
from cebench.pretrain.train import PretrainConfig
from cebench.retrieval.evaluate import RetrievalConfig
from cebench.runtime import choose_device, cpu_amp, machine_info
from cebench.transfer.config import TransferConfig
from cebench.transfer.inits import canonical_name
from cebench.transfer.tasks import TASKS as TRANSFER_TASKS

from . import report
from .executors import EXECUTORS, SlurmSection, SubmititLauncher
from .jobs import FAKE_GPUS_ENV, Job, LocalLauncher, Scheduler, exclusive, visible_gpus


@dataclass
class EncoderPlugin:
    checkpoint: str = ""          # any AlexNet-compatible cebench checkpoint: adds a row to every table


@dataclass
class RunSection:
    methods: tuple[str, ...] = ("ce", "ae", "supervised")   # feature-learning pretrainings (transfer inits)
    supervised_steps: int = 0     # steps of the supervised upper bound (0: pretrain.steps, like the others)
    supervised_row: str = "supervised"  # its row: supervised (demo labels) | supervised-imagenet (the pretraining
    #                                     photos' ImageNet classes: the paper's ImageNet row at this scale)
    inpaint: bool = True          # train the inpainting nets (L2, L2+adv) and evaluate Table 1
    tasks: tuple[str, ...] = ("cls", "seg", "det")
    svm: bool = True
    retrieval: bool = True
    imagenet: bool = True         # an imagenet row (reported unavailable without the weights file)
    parallel: int = 0             # jobs side by side; 0 = one per CPU core (CPU), one per GPU (GPUs), no cap (slurm)
    threads: int = 1              # threads per job (one-thread processes beat one two-thread one on CPU)
    pretrain_gpus: int = 1        # GPUs (torchrun DDP processes) per pretraining job; batch_size is per GPU
    jobs_per_gpu: int = 1         # jobs sharing one GPU (small configs on a large GPU)
    executor: str = "local"       # local | slurm (submitit; each job one SLURM job) | submitit-local (tests)
    slurm: SlurmSection = field(default_factory=SlurmSection)  # passed to submitit (run.executor=slurm)
    minutes_pretrain: float = 4.0  # estimates for the time-left display only
    minutes_transfer: float = 2.0


@dataclass
class ImagenetSection:
    download: bool = False        # fetch torchvision's ImageNet AlexNet weights before the jobs (opt-in)


STAGES = ("pretrain", "inpaint", "transfer", "svm", "retrieval")
SUPERVISED_ROWS = ("supervised", "supervised-imagenet")  # the rows the supervised pretraining may fill


@dataclass
class PipelineConfig:
    """A `cebench run` config as the orchestrator reads it: one typed section per stage (the same dataclasses
    the stage commands load their section into), and the run's name."""

    data: DataConfig
    pretrain: PretrainConfig
    inpaint: InpaintEvalConfig
    transfer: TransferConfig
    retrieval: RetrievalConfig
    run: RunSection
    encoder: EncoderPlugin
    imagenet: ImagenetSection
    name: str = ""


def _sections() -> dict:
    """The one mapping from a config section to the dataclass that validates it (`PipelineConfig`'s fields)."""
    hints = typing.get_type_hints(PipelineConfig)
    return {f.name: hints[f.name] for f in fields(PipelineConfig) if f.name != "name"}


def typed(cfg: dict) -> PipelineConfig:
    """The resolved config (`resolve`; what the jobs' config file holds) as typed sections."""
    return PipelineConfig(**{s: config_from_dict(cls, cfg[s], s) for s, cls in _sections().items()},
                          name=cfg.get("name", ""))


MOVED = {"det": "the det section moved into the transfer section: transfer.det (its seeds, select_seeds, arch, "
                "magic, workers and threads are transfer's own, shared by every task)"}


def resolve(config_path: Path, overrides) -> dict:
    """Validate every section (unknown keys fail here, before any work) and return the resolved dict."""
    sections = _sections()
    raw = read_yaml(config_path)
    extra = sorted(set(raw) - set(sections) - {"name"})
    for old in extra:
        if old in MOVED:
            raise ConfigError(f"{config_path}: {MOVED[old]}")
    if extra:
        raise ConfigError(f"{config_path}: unknown section(s) {extra}; valid: {sorted(sections)} and name")
    per: dict[str, list[str]] = {s: [] for s in sections}
    name = str(raw.get("name", "") or "")
    for key, value in parse_overrides(overrides):
        head, _, rest = key.partition(".")
        if key == "name":
            name = str(value)
            continue
        if head in MOVED:
            raise ConfigError(f"override {key}: {MOVED[head]}")
        if head not in sections or not rest:
            raise ConfigError(f"override {key}: use SECTION.key=value with SECTION one of {sorted(sections)} "
                              "(or name=...)")
        per[head].append(f"{rest}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}")
    resolved = {s: config_to_dict(load_config(cls, config_path, per[s], section=s)) for s, cls in sections.items()}
    resolved["name"] = name
    return resolved


def imagenet_weights_state() -> list:
    """[present, size] of the ImageNet AlexNet weights file (part of the imagenet rows' cache keys)."""
    path = imagenet_weights_path()
    return [path.is_file(), path.stat().st_size if path.is_file() else 0]


def _demo_content(data: DataConfig) -> dict:
    """What the demo tree's bytes depend on (so a changed generator reruns every stage)."""
    if data.root:
        return {}
    preset = DEMO_PRESETS.get(data.demo)
    return content_key(replace(preset, seed=data.demo_seed)) if preset else {}


# What each job reads (cebench.data.sources.source_of): no `--data` is passed, every job resolves its own
# source from the resolved config file, so segmentation reads data.seg_root and pretraining
# data.pretrain_images (with the region-mask shapes from the segmentation tree where its masks are regions).
READS = {"pretrain": ("pretrain",), "inpaint": ("pretrain", "voc"), "cls": ("voc",), "det": ("voc",),
         "det-proposals": ("voc",), "svm": ("voc",), "seg": ("seg",), "retrieval": ("seg",)}


def _unset_as_default(data: DataConfig) -> DataConfig:
    """`data` with every empty setting at its default: what a dry run names for a real-data config whose
    data is not given (data.demo '' reads as the demo preset, so the plan is printed all the same)."""
    return replace(data, **{f.name: getattr(DataConfig(), f.name) for f in fields(data) if getattr(data, f.name) == ""})


def job_reads(name: str, cfg: dict) -> str:
    """`data.seg_root (B/VOC2012)`-style description of what job `name` reads (for --dry-run); a year picked
    from a VOCdevkit holding both is named: `data.root VOC2012 (A/VOCdevkit/VOC2012)`."""
    c = typed(cfg)
    kind = name.split("/")[0]
    if kind == "retrieval" and c.retrieval.data_root:
        return f"retrieval.data_root={c.retrieval.data_root}"
    uses = READS.get(kind, ())
    if kind == "pretrain":  # the segmentation tree only for the paper's random-region masks
        method = replace(c.pretrain, method=name.split("/", 1)[1])
        uses = ("pretrain", "seg") if reads_silhouettes(method) else ("pretrain",)
    return ", ".join("{} ({})".format(*source_of(_unset_as_default(c.data), use)) for use in uses)


def plan(cfg: dict, out: Path, config_file: Path, device: str = "auto", cache: Path | None = None) -> list[Job]:
    """The jobs of a run: one `cebench` command each, keyed by `cebench.cache.cache_key` over what its result
    depends on (the config it reads, the data, the keys of the jobs it needs). No data is touched here."""
    c = typed(cfg)
    run = c.run
    base = ["--config", str(config_file), "--device", device]
    # one cache folder for the run's derived files (proposals, decoded splits), shared by its transfer jobs
    cache_args = ["--cache", str(cache if cache is not None else cache_root(None, out))]
    data_key = cache_key([config_to_dict(c.data), _demo_content(c.data)])
    jobs: list[Job] = []
    est_pre, est_tr = 60 * run.minutes_pretrain, 60 * run.minutes_transfer

    if run.supervised_row not in SUPERVISED_ROWS:
        raise ConfigError(f"run.supervised_row must be one of {', '.join(SUPERVISED_ROWS)}, "
                          f"got {run.supervised_row!r}")
    unknown = [t for t in run.tasks if t not in TRANSFER_TASKS]
    if unknown:
        raise ConfigError(f"run.tasks: unknown task(s) {unknown}; choose from {', '.join(TRANSFER_TASKS)}")
    ckpt = {}
    k = run.pretrain_gpus
    pretrain = config_to_dict(c.pretrain)
    for method in run.methods:
        d = out / "pretrain" / method
        extra = [f"steps={run.supervised_steps}"] if method == "supervised" and run.supervised_steps else []
        # k DDP processes train with k x batch_size images a step: another run, another key (k=1 keeps the old one)
        world = [f"world_size={k}"] if k > 1 else []
        jobs.append(Job(f"pretrain/{method}", "pretrain", ["pretrain", "--method", method, "--out", str(d), *base,
                                                           *extra],
                        d, cache_key([cache_view(pretrain, method), data_key, method, extra, *world]),
                        est_seconds=est_pre, threads=run.threads, procs=k))
        ckpt[method] = d / "checkpoint.pt"
    if run.inpaint:
        # one job trains both inpainting nets (L2, L2+adv; centre masks) and scores Table 1
        d = out / "inpaint"
        inpaint = config_to_dict(c.inpaint)
        inpaint["train"] = cache_view(inpaint["train"], "inpaint")  # its key as before the pretext methods
        jobs.append(Job("inpaint", "inpaint", ["inpaint-eval", "--out", str(d), *base], d,
                        cache_key([inpaint, data_key]), est_seconds=2.5 * est_pre, threads=run.threads))

    # initialisations: name -> (init argument, dependency job)
    inits: dict[str, tuple[str, tuple[str, ...]]] = {"random": ("random", ())}
    for method in run.methods:
        row = canonical_name(run.supervised_row if method == "supervised" else method)
        inits[row] = (f"{row}={ckpt[method]}", (f"pretrain/{method}",))
    if c.encoder.checkpoint:
        label = c.name or Path(c.encoder.checkpoint).stem
        inits[label] = (f"{label}={c.encoder.checkpoint}", ())
    if run.imagenet:
        inits["imagenet"] = ("imagenet", ())
    dep_keys = {j.name: j.key for j in jobs}

    def init_key(deps, arg=""):
        """The inputs' keys; the imagenet row's also follows its weights file (absent, then placed:
        the row is computed, not left 'unavailable' from the cache)."""
        extra = [imagenet_weights_state()] if arg == "imagenet" else []
        return [dep_keys[d] for d in deps] + extra

    if run.retrieval:
        # planned before the transfer jobs so it starts once the pretrainings are done: the short
        # SVM jobs, not this 3-minute one, are then what is left at the end when a core may sit idle
        d = out / "retrieval"
        args = ["retrieval-bench", "--out", str(d), *base]
        deps = []
        for label, (arg, init_deps) in inits.items():  # every checkpoint row (random and imagenet built in)
            if label not in ("random", "imagenet"):
                args += ["--checkpoint", arg]
                deps += init_deps
        jobs.append(Job("retrieval", "retrieval", args, d, cache_key([config_to_dict(c.retrieval), data_key,
                                                                      init_key(deps), imagenet_weights_state()]),
                        deps=tuple(deps), est_seconds=60, threads=run.threads))
    transfer = config_to_dict(c.transfer)

    def stage_config(task):
        """What a task reads: the shared transfer keys and its own sub-section, so changing one task's
        protocol re-runs that task only."""
        return {**{k: v for k, v in transfer.items() if k not in TRANSFER_TASKS}, task: transfer[task]}

    prepared = {}  # task -> its preparation job (det: selective search once, in the run's cache folder)
    for task in run.tasks:
        spec = TRANSFER_TASKS[task]
        if spec.prepare_job is None:
            continue
        what, inputs = spec.prepare_job(getattr(c.transfer, task))
        d = out / "transfer" / what
        jobs.append(Job(f"{task}-{what}", "transfer", ["transfer", task, spec.prepare_flag, "--out", str(d), *base,
                                                       *cache_args], d,
                        cache_key([inputs, data_key]), est_seconds=60, threads=run.threads, gpu=False))
        prepared[task] = jobs[-1].name
        dep_keys[jobs[-1].name] = jobs[-1].key
    for task in run.tasks:
        for label, (arg, deps) in inits.items():
            if task in prepared:
                deps = (*deps, prepared[task])
            slug = label.replace(" ", "-").replace("(", "").replace(")", "")
            d = out / "transfer" / task / slug
            jobs.append(Job(f"{task}/{slug}", "transfer", ["transfer", task, "--init", arg, "--out", str(d), *base,
                                                           *cache_args],
                            d, cache_key([stage_config(task), data_key, arg, init_key(deps, arg)]),
                            deps=deps, est_seconds=est_tr, threads=run.threads))
    if run.svm:
        for label, (arg, deps) in inits.items():
            slug = label.replace(" ", "-").replace("(", "").replace(")", "")
            d = out / "transfer" / "svm" / slug
            jobs.append(Job(f"svm/{slug}", "svm", ["transfer", "svm", "--init", arg, "--out", str(d), *base,
                                                   *cache_args],
                            d, cache_key([stage_config("svm"), data_key, arg, init_key(deps, arg)]), deps=deps,
                            est_seconds=60, threads=run.threads))
    return jobs


def result_dirs(jobs: list[Job]) -> list[Path]:
    """The folders of the per-init transfer and SVM results (`TASK/INIT` jobs; a task's preparation, such as
    `det-proposals`, has no results table)."""
    return sorted(j.out_dir for j in jobs if j.stage in ("transfer", "svm") and "/" in j.name)


# every stage's precision setting: the section (and sub-section) whose `amp` it is
AMP_KEYS = (("pretrain",), ("inpaint", "train"), ("transfer", "runtime"), ("retrieval",))


def resolve_precision(cfg: dict, out: Path, where: "Placement") -> dict:
    """Resolve every stage's `amp: auto` once for the whole run, before the jobs are planned, and write the
    choice into the resolved config (the file every job is given), so each job runs the run's precision,
    probes nothing, and has a cache key that names it.

    On CPU `cebench.runtime.cpu_amp` ($CEBENCH_CPU_AMP if set, else the start-up probe `probe_cpu_bf16`;
    the resolver `resolve_amp` a stage command run by hand uses) runs once and its verdict is kept in
    OUT/precision.json, so an interrupted run resumes with the precision (and the cached jobs) it started
    with. On GPUs (or cluster nodes) `auto` is already one choice, bf16 on the job's CUDA device, and stays
    as written (so are the keys of runs cached on GPUs). Returns {"stages": {section: amp}, "probe": {...} or
    None} for run.json and the report."""
    c = typed(cfg)
    stages = {".".join(path): functools.reduce(getattr, path, c).amp for path in AMP_KEYS}
    on_cpu = not where.gpus and not where.launcher_is_cluster and not where.job_device.startswith(("cuda", "mps"))
    probe = None
    if "auto" in stages.values() and on_cpu:
        record = out / "precision.json"
        try:
            probe = json.loads(record.read_text()) if record.is_file() else None
        except (OSError, json.JSONDecodeError):
            probe = None
        if not isinstance(probe, dict) or probe.get("choice") not in ("bf16", "none"):
            probe = cpu_amp()
            atomic_write_json(record, probe)
        for path in AMP_KEYS:
            name = ".".join(path)
            if stages[name] == "auto":
                stages[name] = probe["choice"]
                functools.reduce(dict.__getitem__, path, cfg)["amp"] = probe["choice"]  # into the jobs' file
    return {"stages": stages, "probe": probe}


def transfer_protocol(cfg: dict) -> dict:
    """Per fine-tuned task: iterations, batch, lr grid and seeds, as the report states them."""
    c = typed(cfg)
    tr = c.transfer
    out = {}
    for task in c.run.tasks:
        sub = getattr(tr, task)
        batch = (f"{sub.images_per_batch} images x {sub.rois_per_image} RoIs" if task == "det"
                 else f"{sub.batch_size} images")
        out[task] = {"iterations": sub.iterations, "batch": batch, "lrs": list(sub.lrs), "seeds": list(tr.seeds),
                     "select_seeds": list(tr.select_seeds), "magic": tr.magic,
                     "trunk_lr_mult": sub.optim.backbone_lr_mult}
    return out


def data_problems(cfg: dict) -> list[tuple[str, str]]:
    """[(data key, what is wrong)] for a real-data config; empty for the built-in demo data."""
    c = typed(cfg)
    data = c.data
    if not data.root and data.demo:
        return []  # the built-in demo tree
    problems = []
    if not data.root:
        problems.append(("data.root", "data.root is empty: extract VOCtrainval_06-Nov-2007.tar and "
                         "VOCtest_06-Nov-2007.tar and pass data.root=/path/to/VOCdevkit"))
    for key, use in (("root", "voc"), ("seg_root", "seg")):
        if getattr(data, key):
            try:  # a VOCdevkit holding VOC2007 and VOC2012: each use reads its year (source_of)
                find_voc_root(source_of(_unset_as_default(data), use)[1])
            except CebenchError as exc:
                problems.append((f"data.{key}", f"data.{key}: {exc}"))
    # segmentation reads data.root itself: no VOC2012 beside it
    seg_reads_root = not data.root or source_of(_unset_as_default(data), "seg")[0] == "data.root"
    if "seg" in c.run.tasks and not data.seg_root and seg_reads_root and not _has_segmentation(data.root):
        problems.append(("data.seg_root", "data.seg_root is empty: extract VOCtrainval_11-May-2012.tar beside "
                         "VOC2007 (data.root=/path/to/VOCdevkit) or pass data.seg_root=/path/to/VOCdevkit/VOC2012"))
    if not data.pretrain_images:
        problems.append(("data.pretrain_images", "data.pretrain_images is empty: pass a folder of pretraining "
                         "images (ImageNet train or Paris StreetView), e.g. data.pretrain_images=/data/imagenet/train"))
    elif not Path(data.pretrain_images).is_dir():
        problems.append(("data.pretrain_images", f"data.pretrain_images: folder {data.pretrain_images} not found"))
    return problems


def _has_segmentation(root: str) -> bool:
    """Whether `root` is a custom VOC-format tree (its own classes.txt, e.g. made by `cebench data prepare`)
    with segmentation splits and masks, which then serves as data.seg_root too. Real VOC2007 (20 VOC
    classes, no classes.txt) does not: the paper segments VOC2012."""
    try:
        voc = find_voc_root(root)
    except CebenchError:
        return False
    return ((voc / "classes.txt").is_file() and (voc / "SegmentationClass").is_dir()
            and (voc / "ImageSets" / "Segmentation" / "trainval.txt").is_file())


def check_real_data(cfg: dict) -> None:
    """The paper config fails early with everything that is missing, not after hours of pretraining
    (one CebenchError listing every problem)."""
    problems = data_problems(cfg)
    if problems:
        raise CebenchError("missing data for this config: " + " | ".join(msg for _, msg in problems))


def _config_name(path: Path) -> str:
    """`paper` for a bundled config, else the path as given (no machine path in a printed plan)."""
    bundled = Path(__file__).parent / "configs"
    return path.stem if path.parent.resolve() == bundled.resolve() else str(path)


def main(config_path: Path, overrides, out: Path, *, device: str = "auto", force=(), dry_run: bool = False,
         cache=None, wait: bool = True) -> Path:
    """`cache`: the run's cache folder (--cache; default $CEBENCH_CACHE, else OUT/cache). `wait`: False
    (cluster executors) submits and returns; the same command later collects."""
    out.mkdir(parents=True, exist_ok=True)
    with exclusive(out):
        return _main(config_path, overrides, out, device=device, force=force, dry_run=dry_run, cache=cache,
                     wait=wait)


@dataclass
class Placement:
    """Where the jobs run: the launcher, the GPU pool (None: CPU slots or a cluster), jobs side by side,
    and the --device the jobs are given."""

    launcher: object
    gpus: list[str] | None
    parallel: int
    job_device: str

    @property
    def launcher_is_cluster(self) -> bool:
        return bool(getattr(self.launcher, "cluster", False)) or self.launcher is None


def placement(run: RunSection, device: str, *, wait: bool = True, dry_run: bool = False) -> Placement:
    """Resolve `run.executor`, `run.parallel`, `run.pretrain_gpus` and `run.jobs_per_gpu` for `device`
    (a dry run builds no cluster launcher, so it lists the jobs where sbatch is missing too)."""
    executor = run.executor
    if executor not in EXECUTORS:
        raise ConfigError(f"run.executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    for key in ("pretrain_gpus", "jobs_per_gpu"):
        if getattr(run, key) < 1:
            raise ConfigError(f"run.{key} must be at least 1, got {getattr(run, key)}")
    if executor != "local":
        # the cluster places the jobs (gpus_per_node each); its nodes, not this machine, have the GPUs
        cap = run.parallel or (10**6 if executor == "slurm" else (os.cpu_count() or 1))
        launcher = None if dry_run else SubmititLauncher(executor, run.slurm)
        return Placement(launcher, None, cap, device)
    if not wait:
        raise ConfigError("--no-wait needs a cluster executor (run.executor=slurm): local jobs end with this command")
    gpus = visible_gpus(device)
    if not gpus:
        if device.startswith("cuda") and not os.environ.get(FAKE_GPUS_ENV):
            choose_device(device)  # the one clear "no CUDA device" error
        return Placement(LocalLauncher(), None, run.parallel or (os.cpu_count() or 1), device)
    if run.pretrain_gpus > len(gpus):
        raise ConfigError(f"run.pretrain_gpus={run.pretrain_gpus} but only {len(gpus)} GPU(s) are visible "
                          f"({','.join(gpus)})")
    pool = [g for g in gpus for _ in range(run.jobs_per_gpu)]
    # each job sees only its own GPU(s) as cuda:0.. through CUDA_VISIBLE_DEVICES
    job_device = "cuda" if device.startswith("cuda:") else device
    return Placement(LocalLauncher(), pool, run.parallel or len(pool), job_device)


def _main(config_path: Path, overrides, out: Path, *, device: str, force, dry_run: bool, cache=None,
          wait: bool = True) -> Path:
    t0 = time.time()
    cfg = resolve(config_path, overrides)  # the config file the jobs are given; `typed(cfg)` reads it
    where = placement(typed(cfg).run, device, wait=wait, dry_run=dry_run)
    out.mkdir(parents=True, exist_ok=True)
    if not cfg["data"]["demo_dir"] and not cfg["data"]["root"]:
        cfg["data"]["demo_dir"] = str(out / "data")
    if not dry_run:
        check_real_data(cfg)
    elif data_problems(cfg):  # a plan may be printed for data that lives on another machine
        keys = sorted({k for k, _ in data_problems(cfg)})
        print(f"[run] dry run: not found on this machine: {', '.join(keys)} (a real run stops with what to "
              "download)", flush=True)
    precision = resolve_precision(cfg, out, where) if not dry_run else None  # once per run, into cfg
    config_file = save_config(cfg, out)
    c = typed(cfg)
    print(f"[run] config {_config_name(config_path)} -> {config_file}", flush=True)
    if precision and precision["probe"]:
        print(f"[run] {report.precision_line(precision)}", flush=True)
    bad = [s for s in force if s not in STAGES]
    if bad:
        raise CebenchError(f"--force {bad[0]}: unknown stage; stages are {', '.join(STAGES)}")
    jobs = plan(cfg, out, config_file, where.job_device, cache_root(cache, out))
    if dry_run:  # nothing generated or read: what each job would run and read
        for j in jobs:
            launch = f"  [torchrun: {j.procs} processes]" if j.procs > 1 else ""
            print(f"{j.name}: cebench {' '.join(j.args)}{launch}\n    reads {job_reads(j.name, cfg)}")
        return out
    if c.run.imagenet and c.imagenet.download:
        print(f"[run] ImageNet AlexNet weights: {fetch_imagenet_weights()}", flush=True)
    voc = voc_root(c.data)  # generates the demo data once, before the jobs (which reuse it)
    print(f"[run] data: {voc} ({time.time() - t0:.1f}s)", flush=True)
    if where.gpus:
        print(f"[run] GPUs {','.join(sorted(set(where.gpus)))}: up to {where.parallel} job(s) side by side", flush=True)
    elif where.launcher.cluster:
        print(f"[run] executor {c.run.executor}: each job is one submitit job", flush=True)
    results = Scheduler(jobs, max_parallel=where.parallel, force_stages=tuple(force), gpus=where.gpus,
                        launcher=where.launcher, wait=wait).run()
    if not wait:
        open_jobs = [r for r in results.values() if r.status in ("submitted", "waiting")]
        if open_jobs:
            n_sub = sum(r.status == "submitted" for r in open_jobs)
            print(f"[run] {n_sub} job(s) submitted or still running, {len(open_jobs) - n_sub} waiting for them; "
                  "run the same command again to collect the results (and submit what waits)", flush=True)
            failed = [r for r in results.values() if r.status == "failed"]
            if failed:
                names = ", ".join(f"{r.name} (log {r.log})" for r in failed)
                raise CebenchError(f"{len(failed)} job(s) failed: {names}")
            return out
    failed = [r for r in results.values() if r.status == "failed"]
    wall = (time.time() - t0) / 60
    wall_file = out / "wall.json"  # the wall time of the last run that computed every job (no cache)
    if results and all(r.status == "done" for r in results.values()):
        atomic_write_json(wall_file, {"wall_minutes": round(wall, 2)}, indent=None)
    full = json.loads(wall_file.read_text())["wall_minutes"] if wall_file.is_file() else None
    info = {
        "config": str(config_path), "overrides": list(overrides), "machine": machine_info(),
        "executor": c.run.executor, "gpus": sorted(set(where.gpus or ())),
        "wall_minutes": wall, "uncached_wall_minutes": full, "demo": not c.data.root,
        "data": {k: getattr(c.data, k) for k in ("root", "seg_root", "pretrain_images") if getattr(c.data, k)},
        "jobs": {n: {"status": r.status, "seconds": r.seconds} for n, r in results.items()},
        "transfer_protocol": transfer_protocol(cfg), "precision": precision,
        # what makes two runs independent replicates (`cebench replicates` refuses two identical ones)
        "replicate": {"data": c.data.root or f"demo:{c.data.demo}", "demo_seed": c.data.demo_seed,
                      "pretrain_seed": c.pretrain.seed},
    }
    pretrain_dirs = {m: out / "pretrain" / m for m in c.run.methods}
    if c.run.inpaint:
        pretrain_dirs.update({"inpaint (L2)": out / "inpaint" / "train-inpaint",
                              "inpaint (L2+adv)": out / "inpaint" / "train-inpaint-adv"})
    rep = report.write_report(
        out, inpaint_dir=out / "inpaint",
        # this run's rows only: folders left by an earlier run with other inits or tasks stay out
        transfer_dirs=result_dirs(jobs),
        retrieval_dir=out / "retrieval", pretrain_dirs=pretrain_dirs, run_info=info)
    print(f"[run] report: {rep / 'results.md'} ({info['wall_minutes']:.1f} min)", flush=True)
    if failed:
        raise CebenchError(f"{len(failed)} job(s) failed: " + ", ".join(f"{r.name} (log {r.log})" for r in failed))
    return rep
