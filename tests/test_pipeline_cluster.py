"""Clusters through submitit, tested with submitit's local executor (no SLURM needed): the submitted
callable, the sbatch options it maps to, and a tiny run whose pretraining is preempted (requeued,
resumed) and then killed (resubmitted by the next `cebench run`, resumed again), which still ends
with the same tables as the local scheduler."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

submitit = pytest.importorskip("submitit")

from cebench.benchmarks.cli import main as cli_main  # noqa: E402
from cebench.benchmarks.executors import (  # noqa: E402
    CommandJob,
    SlurmSection,
    SubmititLauncher,
    _cancellable_controller,
    _pid_alive,
)
from cebench.benchmarks.jobs import Job, Scheduler, is_done  # noqa: E402
from cebench.errors import CebenchError  # noqa: E402
from cebench.locks import file_lock  # noqa: E402


def _cebench(args, sigint_ignored: bool = False, **kw):
    """`cebench ARGS` in a subprocess; sigint_ignored: started the way `cebench ... &` in a script or nohup
    starts it (SIGINT ignored, inherited by every child unless something resets it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CEBENCH_NO_PROGRESS": "1"}
    pre = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
    return subprocess.run([sys.executable, "-m", "cebench.benchmarks.cli", *args], capture_output=True,
                          text=True, env=env, preexec_fn=pre, **kw)


def _wait_for(cond, what: str, timeout: float = 120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_command_job_writes_its_marker_and_requeues_itself(tmp_path):
    out = tmp_path / "job"
    out.mkdir()
    fn = CommandJob([sys.executable, "-c", "print('hello from the node')"], {"OMP_NUM_THREADS": "1"},
                    str(tmp_path), str(out), "key-1", "x/y", "cebench hello")
    assert fn() == 0
    assert is_done(Job("x/y", "", [], out, "key-1")) and not is_done(Job("x/y", "", [], out, "key-2"))
    log = (out / "log.txt").read_text()
    assert "$ cebench hello" in log and "hello from the node" in log
    # the preemption hook: the same callable again (the command resumes from its own checkpoint)
    again = fn.checkpoint()
    assert isinstance(again, submitit.helpers.DelayedSubmission) and again.function is fn and not again.args
    failing = CommandJob([sys.executable, "-c", "raise SystemExit(3)"], {}, str(tmp_path), str(tmp_path / "f"),
                         "k", "f")
    (tmp_path / "f").mkdir()
    assert failing() == 3 and not (tmp_path / "f" / ".done.json").exists()
    # a second copy of a running job does not start beside it
    busy = CommandJob([sys.executable, "-c", "pass"], {}, str(tmp_path), str(tmp_path / "b"), "k", "b")
    (tmp_path / "b").mkdir()
    with file_lock(tmp_path / "b" / ".job.lock"):
        assert busy() == 75


def test_slurm_options_from_run_slurm(tmp_path, monkeypatch):
    """run.slurm maps to sbatch options; a k-GPU pretraining asks for k GPUs; --no-wait holds a job
    on its dependencies' SLURM ids (afterok), dropping it if one fails."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sbatch", "srun"):  # only their presence is checked: nothing is submitted here
        (bin_dir / tool).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    launcher = SubmititLauncher("slurm", SlurmSection(partition="gpu", cpus_per_task=6, timeout_min=90,
                                                      setup=["module load cuda"], additional={"mail-type": "END"}))

    class Dep:
        job_id = "4242"

    pre = Job("pretrain/ce", "pretrain", ["pretrain"], tmp_path / "pre", "k", procs=4)
    text = launcher._executor(pre, after=[Dep()])._executor._make_submission_file_text("CMD", "uid")
    for line in ("--gpus-per-node=4", "--cpus-per-task=24", "--partition=gpu", "--time=90", "--nodes=1",
                 "--ntasks-per-node=1", "--dependency=afterok:4242", "--kill-on-invalid-dep=yes", "--mail-type=END",
                 "--signal=USR2@120"):
        assert f"#SBATCH {line}\n" in text, (line, text)
    assert "module load cuda" in text
    cpu = Job("det-proposals", "transfer", ["transfer"], tmp_path / "p", "k", gpu=False)
    text = launcher._executor(cpu)._executor._make_submission_file_text("CMD", "uid")
    assert "gpus-per-node" not in text and "dependency" not in text and "#SBATCH --cpus-per-task=6\n" in text
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(CebenchError, match="sbatch/srun not found"):
        SubmititLauncher("slurm")


def test_scheduler_through_local_submitit_attaches_instead_of_resubmitting(tmp_path):
    """--no-wait submits; the next run attaches to the job still running and collects it when it ends."""
    out = tmp_path / "j"
    gate = tmp_path / "gate"
    code = f"import time, pathlib\nwhile not pathlib.Path({str(gate)!r}).exists(): time.sleep(0.05)\nprint('ok')"
    job = Job("slow", "test", ["-c", code], out, "k1", entry=())
    launcher = SubmititLauncher("submitit-local", SlurmSection(timeout_min=5))
    res = Scheduler([job], max_parallel=2, launcher=launcher, wait=False, status_every=1e9).run()
    assert res["slow"].status == "submitted"
    first_id = json.loads((out / ".submitit.json").read_text())["job_id"]
    gate.write_text("")
    res = Scheduler([job], max_parallel=2, launcher=launcher, status_every=1e9).run()
    assert res["slow"].status == "done" and is_done(job)
    assert json.loads((out / ".submitit.json").read_text())["job_id"] == first_id  # not submitted again
    assert "ok" in (out / "log.txt").read_text()


def test_local_controller_starts_with_sigint_not_ignored():
    """A child started inside _cancellable_controller sees Python's default SIGINT handler even when this
    process ignores SIGINT (submitit-local's cancel is that signal); outside, the ignore is restored."""
    code = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    probe = [sys.executable, "-c", code]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with _cancellable_controller(True):
            inside = subprocess.run(probe, capture_output=True, text=True).stdout.strip()
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        outside = subprocess.run(probe, capture_output=True, text=True).stdout.strip()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (inside, outside) == ("True", "False")


def _table(path: Path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_submitit_run_preempted_and_killed_gives_the_local_tables(tmp_path, monkeypatch, capsys):
    """The submitting `cebench run` starts with SIGINT ignored, as under nohup or `&` in a script (the full
    suite run in the background failed here before the launcher reset it: submitit-local cancels with a
    SIGINT, which the controller inherited as ignored, so the "killed" job trained on to its end)."""
    ov = [f"data.demo_dir={tmp_path / 'data'}", "run.methods=[ce]", "run.tasks=[cls]", "run.inpaint=false",
          "run.svm=false", "run.retrieval=false", "transfer.seeds=[0]", "pretrain.steps=60", "pretrain.ckpt_every=1",
          "pretrain.sample_every=0", "pretrain.eval_images=0"]
    # the local scheduler's run in this process (its jobs are subprocesses all the same): the reference tables
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cli_main(["run", "--config", "tiny", "--out", str(tmp_path / "local"), *ov]) == 0, capsys.readouterr()

    sub, via = tmp_path / "sub", [*ov, "run.executor=submitit-local"]
    first = _cebench(["run", "--config", "tiny", "--out", str(sub), *via, "--no-wait"], sigint_ignored=True,
                     timeout=300)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert "submit pretrain/ce" in first.stdout and "run the same command again" in first.stdout
    assert not (sub / "report").exists()
    pre = sub / "pretrain" / "ce"
    log = pre / "log.txt"
    _wait_for(lambda: (pre / "checkpoints" / "last.pt").is_file(), "the first checkpoint")
    # preemption: SLURM signals the job (USR2) before taking the node; submitit calls checkpoint() and requeues
    os.kill(json.loads((pre / ".running.json").read_text())["pid"], signal.SIGUSR2)
    _wait_for(lambda: "resumed ce from" in log.read_text(), "the requeued job to resume")
    assert not is_done(Job("pretrain/ce", "", [], pre, json.loads((pre / ".submitit.json").read_text())["key"]))
    # then the job is killed (cancelled): it ends without its marker
    job_id = json.loads((pre / ".submitit.json").read_text())["job_id"]
    os.kill(int(job_id), signal.SIGINT)
    _wait_for(lambda: not _pid_alive(int(job_id)), "the cancelled job to end")
    assert not (pre / "checkpoint.pt").exists()

    second = _cebench(["run", "--config", "tiny", "--out", str(sub), *via], timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"submitted job {job_id} ended unfinished" in second.stdout
    assert json.loads((pre / ".submitit.json").read_text())["job_id"] != job_id
    assert log.read_text().count("resumed ce from") == 2  # after the preemption and after the kill
    assert "preempted" in "".join(p.read_text() for p in (pre / "submitit").glob("*_log.err"))
    for name in ("table2.csv", "per_seed.csv"):
        assert _table(sub / "report" / name) == _table(tmp_path / "local" / "report" / name), name
    assert {r["init"] for r in _table(sub / "report" / "table2.csv")} == {"random", "context encoder"}
    info = json.loads((sub / "report" / "run.json").read_text())
    assert info["executor"] == "submitit-local" and set(info["jobs"]) >= {"pretrain/ce", "cls/context-encoder"}
