"""Pipeline jobs on a cluster through submitit (`run.executor: slurm`), as MAE's and DINO's launchers do.

Each pipeline job becomes one submitit job that runs the job's own command line (the same argv as a
local run, torchrun included) from the submitting folder, so the cache key, the `.done.json` marker
and the stage's own resume from its `last` checkpoint work as they do locally:
- `CommandJob` is the submitted callable. It takes the job folder's lock (two copies of one job never
  run at once), runs the command into `log.txt`, and writes `.done.json` itself when the command exits
  0, so a job that ends after `cebench run --no-wait` has returned is collected as finished.
  It is checkpointable: on preemption (or the time limit) SLURM signals it and submitit requeues the
  same command (`checkpoint()`), which resumes from the stage's `last` checkpoint.
- The job id is recorded in the job folder (`.submitit.json`); a later `cebench run` attaches to a job
  still queued or running instead of submitting it again, and resubmits one that ended without its
  marker (failed, cancelled), as a local run restarts an unfinished job.
`submitit-local` (submitit's LocalExecutor, one process per job on this machine) runs the same path
without SLURM: the tests use it, and so can a user who wants jobs that outlive the `cebench run`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cebench.errors import CebenchError
from cebench.io import atomic_write_json
from cebench.locks import file_lock

from .jobs import DONE, Job, command, env_overrides, is_done, mark_done

RECORD = ".submitit.json"   # the submission of this job folder: executor, job id, cache key
RUNNING = ".running.json"   # written by the job itself: host, pid, start time (where to look, what to signal)
EXECUTORS = ("local", "slurm", "submitit-local")  # run.executor values; submitit names of the last two below
_SUBMITIT_CLUSTER = {"slurm": "slurm", "submitit-local": "local"}


@dataclass
class SlurmSection:
    """`run.slurm`: passed to submitit's AutoExecutor (generic names; `slurm_*` ones for the rest)."""

    partition: str = ""
    gpus_per_node: int = 1       # GPUs of a one-GPU job (a k-GPU pretraining gets k times this); 0: CPU-only
    cpus_per_task: int = 8       # CPU cores per GPU (DataLoader workers)
    mem_gb: float = 0.0          # 0: the partition's default
    timeout_min: int = 720       # the time limit; a job that reaches it is requeued and resumes
    account: str = ""
    qos: str = ""
    constraint: str = ""         # e.g. volta32gb
    exclude: str = ""
    comment: str = ""
    signal_delay_s: int = 120    # how long before the limit the job is warned (to requeue)
    max_num_timeout: int = 20    # requeues after a time limit before giving up (preemptions do not count)
    setup: list[str] = field(default_factory=list)          # shell lines before the job, e.g. module load cuda
    additional: dict = field(default_factory=dict)          # further sbatch options, e.g. {mail-type: END}


def submitit_available() -> bool:
    try:
        import submitit  # noqa: F401
    except ImportError:
        return False
    return True


def require_submitit(executor: str) -> None:
    if not submitit_available():
        raise CebenchError(f"run.executor={executor} needs submitit: pip install 'cebench[cluster]' "
                           "(or pip install submitit)")


class CommandJob:
    """The submitted callable: one pipeline job's command, run to its end on the node.

    Returns the command's exit status. `checkpoint` is submitit's hook on preemption / time limit:
    it requeues this same callable, and the command resumes from its stage's `last` checkpoint."""

    def __init__(self, argv: list[str], env: dict, cwd: str, out_dir: str, key: str, name: str, title: str = ""):
        self.argv, self.env, self.cwd, self.out_dir, self.key, self.name = argv, env, cwd, out_dir, key, name
        self.title = title or " ".join(argv)  # the command as the log shows it

    def __call__(self) -> int:
        os.chdir(self.cwd)
        out = Path(self.out_dir)
        job = Job(self.name, "", [], out, self.key)
        if is_done(job):
            return 0  # a requeued copy of a job that had already finished
        try:
            with file_lock(out / ".job.lock", wait=False):
                return self._run(job, out)
        except BlockingIOError:
            print(f"{out}: this job is already running elsewhere (its .job.lock is held)", flush=True)
            return 75

    def _run(self, job: Job, out: Path) -> int:
        t0 = time.time()
        atomic_write_json(out / RUNNING, {"host": socket.gethostname(), "pid": os.getpid(),
                                          "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        with open(out / "log.txt", "a") as fh:
            fh.write(f"$ {self.title}\n# submitit job on {socket.gethostname()}, "
                     f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}\n")
            fh.flush()
            proc = subprocess.Popen(self.argv, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
                                    preexec_fn=_die_with_parent)
            try:
                rc = proc.wait()
            finally:  # preempted (submitit exits from its signal handler) or cancelled: stop the command too
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
        if rc == 0:
            mark_done(job, time.time() - t0)
        return rc

    def checkpoint(self):
        import submitit

        return submitit.helpers.DelayedSubmission(self)


@contextlib.contextmanager
def _quiet_fds(active: bool):
    """stdout/stderr on /dev/null while submitit's local executor starts its controller, which would
    otherwise inherit them: `cebench run --no-wait | tee` would then wait for the jobs' end (the pipe
    stays open). The jobs write into their own log files."""
    if not active:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


@contextlib.contextmanager
def _cancellable_controller(active: bool):
    """SIGINT not ignored while submitit's local executor starts its controller. Its cancel (and
    `cebench run` stopping a job) is a SIGINT to that controller, and a process started with SIGINT
    ignored - `cebench run ... &` from a script, nohup, CI - passes SIG_IGN on to its children: the
    "cancelled" job would train on to its end. A handler (not SIG_IGN) is reset to the default on exec."""
    try:
        ignored = active and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        if ignored:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread: nothing can be changed here
        ignored = False
    try:
        yield
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _die_with_parent() -> None:
    """In the command's process (Linux): SIGTERM it when this wrapper dies, even by SIGKILL (submitit's
    local executor kills a cancelled task 1 s after asking), so no orphan trains on beside a resubmission."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (ended, not yet reaped) is not running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class SubmittedJob:
    """A submitit job seen from `cebench run`: poll() is 0 once its marker is written, 1 once it ended
    without one, None while queued or running."""

    detached = True  # it outlives this process

    def __init__(self, job: Job, sub, executor: str):
        self.job, self.sub, self.executor = job, sub, executor

    @property
    def job_id(self) -> str:
        return str(self.sub.job_id)

    def _ended(self) -> bool:
        if self.executor == "submitit-local" and getattr(self.sub, "_process", None) is None:
            return not _pid_alive(int(self.job_id))  # attached from another process: no handle, only the pid
        return self.sub.done()

    def poll(self) -> int | None:
        if is_done(self.job):
            return 0
        if self._ended():
            return 0 if is_done(self.job) else 1
        return None

    @property
    def state(self) -> str:
        if self.executor == "submitit-local" and getattr(self.sub, "_process", None) is None:
            return "running" if _pid_alive(int(self.job_id)) else "ended"
        try:
            return str(self.sub.state).lower()
        except Exception:  # noqa: BLE001 - status display only
            return "unknown"

    def stop(self) -> None:
        self.sub.cancel(check=False)

    def close(self) -> None:
        pass


@dataclass
class SubmititLauncher:
    """Submits each job through submitit's AutoExecutor (`slurm`, or `local` for `submitit-local`)."""

    executor: str = "slurm"
    slurm: SlurmSection = field(default_factory=SlurmSection)
    cluster = True

    def __post_init__(self):
        require_submitit(self.executor)
        if self.executor == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
            raise CebenchError("run.executor=slurm: sbatch/srun not found on PATH; run `cebench run` on a "
                               "SLURM login node (or use run.executor=local)")
        self.supports_dependencies = self.executor == "slurm"

    def _executor(self, job: Job, after=()):
        import submitit

        s = self.slurm
        ex = submitit.AutoExecutor(folder=str((job.out_dir / "submitit").absolute()),
                                   cluster=_SUBMITIT_CLUSTER[self.executor], slurm_max_num_timeout=s.max_num_timeout)
        gpus = job.procs * s.gpus_per_node if job.gpu else 0
        params = dict(name=f"cebench-{job.name}", timeout_min=s.timeout_min, nodes=1, tasks_per_node=1,
                      cpus_per_task=max(1, s.cpus_per_task * max(1, gpus)))
        if gpus:
            params["gpus_per_node"] = gpus
        if s.mem_gb:
            params["mem_gb"] = s.mem_gb
        slurm = {"partition": s.partition, "account": s.account, "qos": s.qos, "constraint": s.constraint,
                 "exclude": s.exclude, "comment": s.comment}
        params.update({f"slurm_{k}": v for k, v in slurm.items() if v})
        params["slurm_signal_delay_s"] = s.signal_delay_s
        extra = dict(s.additional)
        if after:
            # run once the jobs it needs ended well; drop it (not leave it pending) if one of them fails
            extra.update(dependency="afterok:" + ":".join(h.job_id for h in after), kill_on_invalid_dep="yes")
        if extra:
            params["slurm_additional_parameters"] = extra
        if s.setup:
            params["slurm_setup"] = list(s.setup)
        ex.update_parameters(**params)
        return ex

    def start(self, job: Job, gpus: list[str], after=()) -> SubmittedJob:
        (job.out_dir / RUNNING).unlink(missing_ok=True)
        title = (f"torchrun --nproc_per_node={job.procs} " if job.procs > 1 else "") + "cebench " + " ".join(job.args)
        fn = CommandJob(command(job), env_overrides(job), os.getcwd(), str(job.out_dir.absolute()), job.key, job.name,
                        title)
        try:
            local = self.executor == "submitit-local"
            with _quiet_fds(local), _cancellable_controller(local):
                sub = self._executor(job, after).submit(fn)
        except Exception as exc:  # noqa: BLE001 - sbatch missing or refusing: one line, not a traceback
            msg = str(exc).strip().splitlines()
            raise CebenchError(f"{job.name}: submitting to {self.executor} failed: "
                               f"{msg[-1] if msg else type(exc).__name__}") from None
        atomic_write_json(job.out_dir / RECORD, {"executor": self.executor, "job_id": str(sub.job_id),
                                                 "key": job.key, "name": job.name,
                                                 "submitted": time.strftime("%Y-%m-%d %H:%M:%S")})
        return SubmittedJob(job, sub, self.executor)

    def attach(self, job: Job) -> SubmittedJob | None:
        """The job an earlier run submitted for this same key, if it is still queued or running."""
        try:
            rec = json.loads((job.out_dir / RECORD).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if rec.get("key") != job.key or rec.get("executor") != self.executor:
            return None
        import submitit

        folder = str((job.out_dir / "submitit").absolute())
        cls = submitit.SlurmJob if self.executor == "slurm" else submitit.LocalJob
        handle = SubmittedJob(job, cls(folder=folder, job_id=rec["job_id"]), self.executor)
        if handle.poll() == 1:  # ended without finishing: submit it again
            print(f"[run] {job.name}: submitted job {rec['job_id']} ended unfinished "
                  f"(log: {job.out_dir / 'log.txt'}); submitting it again", flush=True)
            return None
        return handle


__all__ = ["CommandJob", "EXECUTORS", "SlurmSection", "SubmititLauncher", "SubmittedJob", "DONE"]
