"""A small job scheduler for the pipeline: cached, resumable, parallel one-thread subprocesses.

Each job is one `cebench ...` command writing into its own folder. A job is finished when its folder
holds `.done.json` with the job's cache key (written atomically after the command exits 0), so a
second run skips it, a changed config reruns it, and a killed run starts again with the unfinished
jobs (which themselves resume from their `last` checkpoints where they have one).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cebench.errors import CebenchError
from cebench.io import atomic_write_json
from cebench.locks import file_lock

DONE = ".done.json"


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


@dataclass
class JobResult:
    name: str
    status: str                 # "cached" | "done" | "failed" | "skipped"
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


def _command(job: Job) -> list[str]:
    return [sys.executable, "-m", "cebench.benchmarks.cli", *job.args]


def _env(job: Job) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(job.threads), MKL_NUM_THREADS=str(job.threads), CEBENCH_NO_PROGRESS="1")
    return env


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
class Scheduler:
    jobs: list[Job]
    max_parallel: int = 2
    force_stages: tuple[str, ...] = ()
    status_every: float = 30.0
    results: dict[str, JobResult] = field(default_factory=dict)

    def run(self) -> dict[str, JobResult]:
        by_name = {j.name: j for j in self.jobs}
        for j in self.jobs:
            missing = [d for d in j.deps if d not in by_name]
            if missing:
                raise CebenchError(f"job {j.name} depends on unknown job(s) {missing}")
        pending = [j for j in self.jobs]
        for j in list(pending):
            if j.stage not in self.force_stages and is_done(j):
                info = done_info(j)
                self.results[j.name] = JobResult(j.name, "cached", info.get("seconds", 0.0), str(j.out_dir / "log.txt"))
                pending.remove(j)
                self._print_line(j.name, self.results[j.name])
        running: dict[str, tuple[Job, subprocess.Popen, float, object]] = {}
        previous = signal.signal(signal.SIGTERM, _terminate_on_sigterm)
        t0 = time.time()
        last_status = 0.0
        total = len(pending)
        try:
            while pending or running:
                # finished jobs
                for name, (job, proc, start, fh) in list(running.items()):
                    rc = proc.poll()
                    if rc is None:
                        continue
                    fh.close()
                    secs = time.time() - start
                    if rc == 0:
                        atomic_write_json(job.out_dir / DONE, {"key": job.key, "seconds": round(secs, 1),
                                                               "finished": time.strftime("%Y-%m-%d %H:%M:%S")},
                                          indent=None)
                        self.results[name] = JobResult(name, "done", secs, str(job.out_dir / "log.txt"))
                    else:
                        self.results[name] = JobResult(name, "failed", secs, str(job.out_dir / "log.txt"))
                    del running[name]
                    self._print_line(name, self.results[name])
                # jobs whose dependencies failed are skipped
                for job in list(pending):
                    bad = [d for d in job.deps
                           if self.results.get(d) and self.results[d].status in ("failed", "skipped")]
                    if bad:
                        self.results[job.name] = JobResult(job.name, "skipped", 0.0, f"dependency failed: {bad[0]}")
                        pending.remove(job)
                        self._print_line(job.name, self.results[job.name])
                # start ready jobs
                for job in list(pending):
                    if len(running) >= self.max_parallel:
                        break
                    if all(self.results.get(d) and self.results[d].status in ("done", "cached") for d in job.deps):
                        job.out_dir.mkdir(parents=True, exist_ok=True)
                        (job.out_dir / DONE).unlink(missing_ok=True)
                        fh = open(job.out_dir / "log.txt", "a")
                        fh.write(f"$ cebench {' '.join(job.args)}\n")
                        fh.flush()
                        proc = subprocess.Popen(_command(job), stdout=fh, stderr=subprocess.STDOUT, env=_env(job))
                        running[job.name] = (job, proc, time.time(), fh)
                        pending.remove(job)
                        print(f"[run] start  {job.name}", flush=True)
                now = time.time()
                if running and now - last_status > self.status_every:
                    last_status = now
                    self._print_status(running, pending, total, now - t0)
                time.sleep(0.2)
        except KeyboardInterrupt:
            for job, proc, _, fh in running.values():
                proc.terminate()
            for job, proc, _, fh in running.values():
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                fh.close()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
        return self.results

    def _print_line(self, name: str, res: JobResult) -> None:
        tail = f" (log: {res.log})" if res.status == "failed" else (f" ({res.log})" if res.status == "skipped" else "")
        print(f"[run] {res.status:<6} {name} {res.seconds:6.1f}s{tail}", flush=True)

    def _print_status(self, running, pending, total, elapsed) -> None:
        done = sum(1 for r in self.results.values() if r.status == "done")
        rem = sum(j.est_seconds for j in pending) / max(1, self.max_parallel)
        rem += sum(max(0.0, j.est_seconds - (time.time() - s))
                   for j, _, s, _ in running.values()) / max(1, self.max_parallel)
        names = ", ".join(f"{n} {time.time() - s:.0f}s" for n, (_, _, s, _) in running.items())
        print(f"[run] {done}/{total} jobs done, {elapsed / 60:.1f} min elapsed, ~{rem / 60:.1f} min left; "
              f"running: {names}",
              flush=True)
