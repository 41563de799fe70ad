"""End to end: `cebench run --config tiny` (the session's shared run, tests/conftest.py), its report, a copy of it
killed in the middle of transfer, resumed, then cached; the run command's errors and plans."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import cebench_env

from cebench.benchmarks.cli import main as cli_main
from cebench.errors import CebenchError

REPORT_FILES = ["results.md", "table1.csv", "table2.csv", "paired.csv", "per_seed.csv", "svm.csv", "retrieval.csv",
                "run.json", "fig_inpainting.png", "fig_retrieval.png", "fig_curves.png"]


def _cebench(args, **kw):
    return subprocess.run([sys.executable, "-m", "cebench.benchmarks.cli", *args], capture_output=True,
                          text=True, env=cebench_env(), **kw)


def _statuses(stdout: str) -> dict[str, str]:
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "[run]" and parts[1] in ("done", "cached", "failed", "skipped"):
            out[parts[2]] = parts[1]
    return out


REPORT_CSVS = [n for n in REPORT_FILES if n.endswith(".csv")]


@pytest.mark.xdist_group("tiny_run")  # one worker runs the shared tiny run once (pytest -n 2)
def test_tiny_run_writes_the_report(tiny_run):
    """The shared tiny run (every stage, the config's defaults): every job computed, every report file there
    and well-formed."""
    st = _statuses(tiny_run.stdout)
    assert st and set(st.values()) == {"done"}, st
    assert {"pretrain/ce", "pretrain/ae", "inpaint", "retrieval", "det-proposals", "cls/random",
            "seg/context-encoder", "det/autoencoder", "svm/random"} <= set(st)
    rep = tiny_run.out / "report"
    for name in REPORT_FILES:
        assert (rep / name).is_file() and (rep / name).stat().st_size > 0, name
    with open(rep / "table1.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["method", "l1_pct", "l2_pct", "psnr_db", "psnr_pooled_db", "sharpness"]
    assert {r["method"] for r in rows} >= {"CE (L2)", "CE (L2+adv)", "NN (HOG)", "NN (pixels)", "Telea (OpenCV)"}
    assert all(float(r["psnr_db"]) > 0 for r in rows)
    with open(rep / "table2.csv") as fh:
        t2 = list(csv.DictReader(fh))
    assert list(t2[0]) == ["init", "task", "metric", "mean", "std", "seeds", "paper", "lr", "val"]
    assert {r["task"] for r in t2} == {"cls", "seg", "det"}
    assert {"random", "context encoder"} <= {r["init"] for r in t2}
    for r in t2:
        assert 0.0 <= float(r["mean"]) <= 100.0
    md = (rep / "results.md").read_text()
    assert "Table 1" in md and "Table 2" in md and "56.5" in md  # the paper's CE cls number beside ours
    info = json.loads((rep / "run.json").read_text())
    assert info["machine"]["torch"] and set(info["jobs"]) == set(st)
    assert {j["status"] for j in info["jobs"].values()} == {"done"}
    assert info["replicate"] == {"data": "demo:tiny", "demo_seed": 0, "pretrain_seed": 0}


@pytest.mark.xdist_group("tiny_run")  # one worker runs the shared tiny run once (pytest -n 2)
@pytest.mark.slow
def test_tiny_pipeline_kill_resume_then_cached(tiny_run, tmp_path, monkeypatch, capsys):
    """A copy of the shared run taken back to before its three classification jobs (every other job finished),
    killed once one of them has finished (one more is then under way, the third waits for a core), resumed:
    the finished jobs are reused, the others run or resume from their checkpoints, and the report is the
    uninterrupted run's, table for table; a third run is all cached and writes nothing."""
    root = tiny_run.copy(tmp_path / "copy")
    out = root / "run"
    shutil.rmtree(out / "transfer" / "cls")
    shutil.rmtree(out / "report")
    cmd = [sys.executable, "-m", "cebench.benchmarks.cli", "run", "--config", "tiny", "--out", "run"]
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=cebench_env(), start_new_session=True)
    deadline = time.time() + 600
    finished_transfer = []
    while time.time() < deadline and proc.poll() is None:
        finished_transfer = sorted(p.parent for p in out.glob("transfer/cls/*/.done.json"))
        if finished_transfer:
            break
        time.sleep(0.05)
    assert finished_transfer, "no classification job finished"
    os.killpg(proc.pid, signal.SIGKILL)  # a hard kill of the pipeline and all its jobs
    first = _statuses(proc.communicate()[0])
    assert not (out / "report" / "results.md").exists()
    assert {n for n, s in first.items() if s == "cached"} >= {"pretrain/ce", "pretrain/ae", "inpaint", "retrieval",
                                                               "det-proposals", "seg/random", "det/autoencoder"}

    # the second and third runs in this process (their jobs are subprocesses all the same): the same command
    # from the same folder, without a second interpreter's start-up
    monkeypatch.chdir(root)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("CEBENCH_DATA", raising=False)
    capsys.readouterr()
    assert cli_main(["run", "--config", "tiny", "--out", "run"]) == 0
    st = _statuses(capsys.readouterr().out)
    for d in finished_transfer:
        name = f"{d.parent.name}/{d.name}"
        assert st[name] == "cached", (name, st)
    assert any(s == "done" for n, s in st.items() if n.startswith("cls/")), st
    assert {s for n, s in st.items() if not n.startswith("cls/")} == {"cached"}, st
    rep = out / "report"
    for name in REPORT_CSVS:  # killed and resumed jobs end where the uninterrupted ones did
        assert (rep / name).read_bytes() == (tiny_run.out / "report" / name).read_bytes(), name

    tables = {p.name: p.read_bytes() for p in rep.glob("*.csv")}
    checkpoints = {p: p.stat().st_mtime_ns for p in out.glob("pretrain/*/checkpoint.pt")}
    assert cli_main(["run", "--config", "tiny", "--out", "run"]) == 0
    assert set(_statuses(capsys.readouterr().out).values()) == {"cached"}
    # the report of the cached run is the same report: every table byte for byte, and no job wrote again
    assert set(REPORT_CSVS) <= set(tables)
    assert {p.name: p.read_bytes() for p in rep.glob("*.csv")} == tables
    assert checkpoints and {p: p.stat().st_mtime_ns for p in checkpoints} == checkpoints
    assert {j["status"] for j in json.loads((rep / "run.json").read_text())["jobs"].values()} == {"cached"}


def test_run_rejects_bad_override_in_one_line(tmp_path):
    # a process of its own: nothing but the one line (no warning at import, no traceback) reaches the terminal
    res = _cebench(["run", "--config", "tiny", "--out", str(tmp_path), "pretrain.stepz=3"], timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "stepz" in lines[0] and "valid keys" in lines[0]


def test_dry_run_lists_jobs(tmp_path, capsys):
    # in this process (the command's stdout is all it checks): a subprocess spends seconds importing torch
    rc = cli_main(["run", "--config", "tiny", "--out", str(tmp_path), "--dry-run",
                   "data.demo_dir=" + str(tmp_path / "d"), "run.methods=[ce, supervised]", "run.supervised_steps=3"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "pretrain/ce:" in out and "cls/random:" in out and "det/context-encoder:" in out
    lines = {line.split(":", 1)[0]: line for line in out.splitlines() if ": cebench " in line}
    assert lines["pretrain/supervised"].endswith(" steps=3") and "steps=" not in lines["pretrain/ce"]
    names = list(lines)
    assert names.index("retrieval") < names.index("cls/random")  # starts as soon as the pretrainings end
    assert not (tmp_path / "d").exists()  # a plan generates no data


def test_help_lists_working_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("run", "data", "pretrain", "inpaint-eval", "inpaint", "transfer", "retrieve", "bench"):
        assert cmd in out


def test_paper_config_lists_all_missing_data_at_once(tmp_path, capsys):
    assert cli_main(["run", "--config", "paper", "--out", str(tmp_path)]) == 2
    msg = capsys.readouterr().err.strip()
    assert len(msg.splitlines()) == 1
    assert "data.root" in msg and "data.seg_root" in msg and "data.pretrain_images" in msg
    assert "VOCtest_06-Nov-2007.tar" in msg and not (tmp_path / "data").exists()  # nothing generated


def test_transfer_protocol_states_the_trunk_lr_multiplier():
    """The report's protocol lines come from the resolved config: each task's lr grid and the trunk's multiplier."""
    from cebench.benchmarks.cli import resolve_config
    from cebench.benchmarks.pipeline import resolve, transfer_protocol

    cfg = resolve(resolve_config("demo"), ["transfer.seg.optim.backbone_lr_mult=0.25", "transfer.det.lrs=[0.5]",
                                           "transfer.seeds=[3,4]"])
    p = transfer_protocol(cfg)
    assert p["seg"]["trunk_lr_mult"] == 0.25
    assert p["cls"]["trunk_lr_mult"] == cfg["transfer"]["cls"]["optim"]["backbone_lr_mult"]
    assert p["det"]["lrs"] == [0.5] and p["det"]["trunk_lr_mult"] == cfg["transfer"]["det"]["optim"]["backbone_lr_mult"]
    assert all(p[t]["seeds"] == [3, 4] for t in ("cls", "seg", "det"))  # one seeds list drives every task
    assert p["det"]["batch"] == "2 images x 64 RoIs" and p["cls"]["batch"] == "32 images"


def test_the_old_det_section_names_its_new_place(tmp_path):
    from cebench.benchmarks.cli import resolve_config
    from cebench.benchmarks.pipeline import resolve

    with pytest.raises(CebenchError, match="transfer.det"):
        resolve(resolve_config("tiny"), ["det.seeds=[0]"])
    old = tmp_path / "old.yaml"
    old.write_text("det: {iterations: 3}\n")
    with pytest.raises(CebenchError, match="moved into the transfer section"):
        resolve(old, [])


def test_changing_one_task_protocol_replans_that_task_only(tmp_path):
    """A stage's cache key covers the config it reads: a new seg lr grid re-runs the seg stages, not the
    classification, detection or SVM ones (each of which re-ran before, even with every job cached)."""
    from cebench.benchmarks.cli import resolve_config
    from cebench.benchmarks.pipeline import plan, resolve

    def keys(*overrides):
        cfg = resolve(resolve_config("demo"), list(overrides))
        return {j.name: j.key for j in plan(cfg, tmp_path, resolve_config("demo"), "cpu")}

    base, seg, det = keys(), keys("transfer.seg.lrs=[0.5]"), keys("transfer.det.lrs=[0.5]")
    assert {n for n in base if base[n] != seg[n]} == {n for n in base if n.startswith("seg/")} != set()
    assert {n for n in base if base[n] != det[n]} == {n for n in base if n.startswith("det/")} != set()
    shared = keys("transfer.magic=none")  # read by every transfer stage
    assert {n.split("/")[0] for n in base if base[n] != shared[n]} == {"cls", "seg", "svm", "det"}
