"""A small job scheduler for the pipeline: cached, resumable, parallel subprocesses, placed on GPUs.

Each job is one `cebench ...` command writing into its own folder. A job is finished when its folder
holds `.done.json` with the job's cache key (written atomically after the command exits 0), so a
second run skips it, a changed config reruns it, and a killed run starts again with the unfinished
jobs (which themselves resume from their `last` checkpoints where they have one).

Placement: on CPU the scheduler runs up to `max_parallel` one-thread processes side by side. Given a
pool of GPUs (`gpus`, the tokens of CUDA_VISIBLE_DEVICES), each job takes one GPU (a job of `procs`
processes, started with torchrun, takes `procs` distinct GPUs) and sees only its own through
CUDA_VISIBLE_DEVICES; jobs that cannot get their GPUs wait for running ones to free them, in plan
order (no job overtakes a waiting one, so a k-GPU pretraining is not starved by one-GPU jobs).
Where the commands run is the launcher's business: this machine (`LocalLauncher`) or a cluster
through submitit (`executors.SubmititLauncher`), with the same commands, markers and report.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cebench.errors import CebenchError
from cebench.io import atomic_write_json
from cebench.locks import file_lock

DONE = ".done.json"
CLI = ("-m", "cebench.benchmarks.cli")
FAKE_GPUS_ENV = "CEBENCH_FAKE_GPUS"  # tests: pretend this many GPUs exist (placement only; jobs stay on CPU)


@dataclass
class Job:
    name: str                   # e.g. "pretrain/ce"
    stage: str                  # e.g. "pretrain" (what --force selects)
    args: list[str]             # cebench arguments (no shell: a list, never a string)
    out_dir: Path
    key: str                    # cache key: hash of the resolved config and of the inputs' keys
    deps: tuple[str, ...] = ()
    est_seconds: float = 60.0   # for the time-left estimate
    threads: int = 1
    procs: int = 1              # processes; > 1: started by torchrun (DDP), one GPU each on a GPU pool
    gpu: bool = True            # False: CPU-only work (selective search) that takes no GPU from the pool
    entry: tuple[str, ...] = CLI  # what the interpreter runs before `args` (a module or a script path)


@dataclass
class JobResult:
    name: str
    status: str                 # "cached" | "done" | "failed" | "skipped" | "submitted" | "waiting"
    seconds: float = 0.0
    log: str = ""


def is_done(job: Job) -> bool:
    marker = job.out_dir / DONE
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("key") == job.key
    except (json.JSONDecodeError, OSError):
        return False


def done_info(job: Job) -> dict:
    try:
        return json.loads((job.out_dir / DONE).read_text())
    except (json.JSONDecodeError, OSError):
        return {}


def mark_done(job: Job, seconds: float) -> None:
    atomic_write_json(job.out_dir / DONE, {"key": job.key, "seconds": round(seconds, 1),
                                           "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=None)


def command(job: Job) -> list[str]:
    """The job's argv: `python -m cebench.benchmarks.cli ARGS`, or torchrun with `procs` processes.

    torchrun --standalone picks a free rendezvous port itself, so two DDP jobs side by side never clash."""
    if job.procs > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={job.procs}",
                *job.entry, *job.args]
    return [sys.executable, *job.entry, *job.args]


def env_overrides(job: Job) -> dict[str, str]:
    """What a job's environment sets on top of the caller's (threads per process, no progress bars)."""
    return {"OMP_NUM_THREADS": str(job.threads), "MKL_NUM_THREADS": str(job.threads), "CEBENCH_NO_PROGRESS": "1"}


def visible_gpus(device: str) -> list[str]:
    """The GPU pool for `device`: CUDA_VISIBLE_DEVICES tokens (ids or UUIDs) a job may be given.

    cpu / mps: none. auto / cuda: every visible GPU. cuda:N: the N-th visible one only.
    CEBENCH_FAKE_GPUS=n (tests) gives n fake ids 0..n-1 on any device, without touching CUDA."""
    fake = os.environ.get(FAKE_GPUS_ENV, "")
    if fake:
        return [str(i) for i in range(int(fake))]
    if not (device == "auto" or device.startswith("cuda")):
        return []
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return []
    parent = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    tokens = [t.strip() for t in parent.split(",") if t.strip()][:count] if parent else []
    tokens = tokens if len(tokens) == count else [str(i) for i in range(count)]
    if ":" in device:
        index = int(device.split(":", 1)[1])
        if index >= count:
            raise CebenchError(f"--device {device}: only {count} GPU(s) visible")
        return [tokens[index]]
    return tokens


class LocalProcess:
    """A job running as a subprocess of this `cebench run` (stdout and stderr into its log.txt)."""

    detached = False  # it ends with this process

    def __init__(self, job: Job, gpus: list[str]):
        self.fh = open(job.out_dir / "log.txt", "a")
        self.fh.write(f"$ cebench {' '.join(job.args)}\n")
        if gpus:
            self.fh.write(f"# CUDA_VISIBLE_DEVICES={','.join(gpus)}\n")
        self.fh.flush()
        env = {**os.environ, **env_overrides(job)}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        self.proc = subprocess.Popen(command(job), stdout=self.fh, stderr=subprocess.STDOUT, env=env)
        self.state = "running"

    def poll(self) -> int | None:
        return self.proc.poll()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def close(self) -> None:
        self.fh.close()


class LocalLauncher:
    """Runs each job as a subprocess on this machine."""

    cluster = False
    supports_dependencies = False

    def attach(self, job: Job):
        return None  # nothing outlives a local run

    def start(self, job: Job, gpus: list[str], after=()) -> LocalProcess:
        return LocalProcess(job, gpus)


@contextlib.contextmanager
def exclusive(out_dir: Path):
    """One pipeline per output folder: a second `cebench run` on the same folder fails at once."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(out_dir / ".run.lock", wait=False))
        except BlockingIOError:
            raise CebenchError(f"{out_dir}: another `cebench run` is using this folder; "
                               "wait for it or use another --out") from None
        yield


def _terminate_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # stop the jobs like Ctrl-C does, instead of leaving them orphaned


@dataclass
class Running:
    job: Job
    handle: object              # LocalProcess or executors.SubmittedJob: poll(), stop(), close(), state
    start: float
    gpus: list[str]


@dataclass
class Scheduler:
    jobs: list[Job]
    max_parallel: int = 2
    force_stages: tuple[str, ...] = ()
    status_every: float = 30.0
    gpus: list[str] | None = None   # GPU pool (CUDA_VISIBLE_DEVICES tokens; one listed n times runs n jobs)
    launcher: object = field(default_factory=LocalLauncher)
    wait: bool = True               # False (cluster executors): submit what can be submitted and return
    results: dict[str, JobResult] = field(default_factory=dict)

    def __post_init__(self):
        self.free = Counter(self.gpus or ())

    def _take_gpus(self, job: Job) -> list[str] | None:
        """`job.procs` distinct GPUs from the pool (the least loaded first), or None if they are not free."""
        if self.gpus is None or not job.gpu:
            return []
        if job.procs > len(set(self.gpus)):
            raise CebenchError(f"job {job.name} needs {job.procs} GPUs; only {len(set(self.gpus))} are visible")
        ranked = [g for g, n in sorted(self.free.items(), key=lambda kv: -kv[1]) if n > 0]
        if len(ranked) < job.procs:
            return None
        taken = sorted(ranked[: job.procs], key=self.gpus.index)
        self.free.subtract(taken)
        return taken

    def _slots_used(self) -> int:
        # on CPU a job of k processes takes k of the parallel slots; on a GPU pool the GPUs are the limit
        return sum(r.job.procs if self.gpus is None else 1 for r in self.running.values())

    def _deps_ok(self, job: Job) -> bool:
        ok = ("done", "cached")
        if all(self.results.get(d) and self.results[d].status in ok for d in job.deps):
            return True
        # without waiting, a cluster can hold a job until its dependencies end well (sbatch --dependency)
        held = all((d in self.running) or (self.results.get(d) and self.results[d].status in ok) for d in job.deps)
        return not self.wait and self.launcher.supports_dependencies and held

    def run(self) -> dict[str, JobResult]:
        by_name = {j.name: j for j in self.jobs}
        for j in self.jobs:
            missing = [d for d in j.deps if d not in by_name]
            if missing:
                raise CebenchError(f"job {j.name} depends on unknown job(s) {missing}")
        self.pending = list(self.jobs)
        for j in list(self.pending):
            if j.stage not in self.force_stages and is_done(j):
                info = done_info(j)
                self.results[j.name] = JobResult(j.name, "cached", info.get("seconds", 0.0), str(j.out_dir / "log.txt"))
                self.pending.remove(j)
                self._print_line(j.name, self.results[j.name])
        self.running: dict[str, Running] = {}
        previous = signal.signal(signal.SIGTERM, _terminate_on_sigterm)
        self.t0, last_status, self.total = time.time(), 0.0, len(self.pending)
        try:
            while self.pending or self.running:
                progressed = self._reap() + self._skip_failed_deps() + self._start_ready()
                if not self.wait and not progressed:
                    break  # everything that can be submitted is; a later `cebench run` collects
                now = time.time()
                if self.running and now - last_status > self.status_every:
                    last_status = now
                    self._print_status(now - self.t0)
                time.sleep(0.2 if self.wait else 0.0)
        except KeyboardInterrupt:
            self._interrupt()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
        for name, r in self.running.items():  # not waiting: still queued or running elsewhere
            self.results[name] = JobResult(name, "submitted", time.time() - r.start, str(r.job.out_dir / "log.txt"))
        for job in self.pending:
            self.results[job.name] = JobResult(job.name, "waiting", 0.0, "dependencies still running")
        return self.results

    def _reap(self) -> int:
        n = 0
        for name, r in list(self.running.items()):
            rc = r.handle.poll()
            if rc is None:
                continue
            r.handle.close()
            secs = time.time() - r.start
            if rc == 0:
                if is_done(r.job):  # a cluster job writes its own marker (it may end after we left)
                    secs = done_info(r.job).get("seconds", secs)
                else:
                    mark_done(r.job, secs)
                self.results[name] = JobResult(name, "done", secs, str(r.job.out_dir / "log.txt"))
            else:
                self.results[name] = JobResult(name, "failed", secs, str(r.job.out_dir / "log.txt"))
            self.free.update(r.gpus)
            del self.running[name]
            self._print_line(name, self.results[name])
            n += 1
        return n

    def _skip_failed_deps(self) -> int:
        n = 0
        for job in list(self.pending):
            bad = [d for d in job.deps if self.results.get(d) and self.results[d].status in ("failed", "skipped")]
            if bad:
                self.results[job.name] = JobResult(job.name, "skipped", 0.0, f"dependency failed: {bad[0]}")
                self.pending.remove(job)
                self._print_line(job.name, self.results[job.name])
                n += 1
        return n

    def _start_ready(self) -> int:
        n = 0
        for job in list(self.pending):
            if self._slots_used() + (job.procs if self.gpus is None else 1) > self.max_parallel and self.running:
                break
            if not self._deps_ok(job):
                continue
            handle = self.launcher.attach(job)  # a cluster job submitted by an earlier run, still queued/running
            gpus: list[str] = []
            if handle is None:
                gpus = self._take_gpus(job)
                if gpus is None:
                    break  # wait for GPUs; later jobs do not overtake this one
                job.out_dir.mkdir(parents=True, exist_ok=True)
                (job.out_dir / DONE).unlink(missing_ok=True)
                after = [self.running[d].handle for d in job.deps if d in self.running]
                handle = self.launcher.start(job, gpus, after=after)
                where = f" on GPU {','.join(gpus)}" if gpus else ""
                print(f"[run] {'submit' if self.launcher.cluster else 'start '} {job.name}{where}", flush=True)
            else:
                print(f"[run] attach {job.name} ({handle.state}, submitted by an earlier run)", flush=True)
            self.running[job.name] = Running(job, handle, time.time(), gpus)
            self.pending.remove(job)
            n += 1
        return n

    def _interrupt(self) -> None:
        detached = [n for n, r in self.running.items() if r.handle.detached]
        for r in self.running.values():
            if not r.handle.detached:
                r.handle.stop()
            r.handle.close()
        if detached:
            print(f"[run] {len(detached)} submitted job(s) keep running ({', '.join(detached)}); "
                  "run the same command again to collect them", flush=True)

    def _print_line(self, name: str, res: JobResult) -> None:
        tail = f" (log: {res.log})" if res.status == "failed" else (f" ({res.log})" if res.status == "skipped" else "")
        print(f"[run] {res.status:<6} {name} {res.seconds:6.1f}s{tail}", flush=True)

    def _print_status(self, elapsed) -> None:
        done = sum(1 for r in self.results.values() if r.status == "done")
        width = max(1, min(self.max_parallel, len(self.gpus) if self.gpus else self.max_parallel))
        now = time.time()
        rem = sum(j.est_seconds for j in self.pending) / width
        rem += sum(max(0.0, r.job.est_seconds - (now - r.start)) for r in self.running.values()) / width
        names = ", ".join(f"{n} {now - r.start:.0f}s" + ("" if r.handle.state == "running" else f" {r.handle.state}")
                          for n, r in self.running.items())
        print(f"[run] {done}/{self.total} jobs done, {elapsed / 60:.1f} min elapsed, ~{rem / 60:.1f} min left; "
              f"running: {names}", flush=True)
