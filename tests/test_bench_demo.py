"""`cebench bench demo --old --new`: two demo runs side by side (hand-computed ratios, refusals)."""

import json

from cebench.benchmarks.cli import main as cli_main


def _run(path, wall, jobs, seeds=3, status="done", cpu="Intel(R) Xeon(R) Processor"):
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({
        "config": "demo.yaml", "overrides": [], "wall_minutes": wall, "machine": {"cpu": cpu, "cebench": "0.1.0"},
        "jobs": {n: {"status": status, "seconds": s} for n, s in jobs.items()},
        "transfer_protocol": {"cls": {"seeds": list(range(seeds))}, "seg": {"seeds": list(range(seeds))}},
        "precision": {"stages": {"pretrain": "bf16"}, "probe": None}}))
    return path


def test_two_runs_side_by_side(tmp_path, capsys):
    old = _run(tmp_path / "old", 50.0, {"pretrain/ce": 200.0, "cls/random": 400.0, "cls/ce": 300.0, "svm/ce": 40.0})
    new = _run(tmp_path / "new", 20.0, {"pretrain/ce": 100.0, "cls/random": 150.0, "cls/ce": 150.0, "svm/ce": 40.0})
    out = tmp_path / "results"
    assert cli_main(["bench", "demo", "--old", str(old), "--new", str(new / "run.json"), "--out", str(out)]) == 0
    d = json.loads((out / "bench_demo.json").read_text())
    assert d["wall_ratio"] == 0.4 and d["job_seconds_ratio"] == round(440 / 940, 3)
    assert d["stages"]["cls"] == {"jobs": 2, "old_s": 700.0, "new_s": 300.0, "ratio": round(300 / 700, 3)}
    assert d["jobs"]["pretrain/ce"]["ratio"] == 0.5 and list(d["stages"]) == ["pretrain", "cls", "svm"]
    md = (out / "bench.md").read_text()
    assert "wall time ratio new/old 0.4" in md and "| cls | 2 | 700 | 300 | 0.429 |" in md
    assert "warning" not in d


def test_cached_or_foreign_runs_are_refused_in_one_line(tmp_path, capsys):
    old = _run(tmp_path / "old", 50.0, {"pretrain/ce": 200.0})
    cached = _run(tmp_path / "cached", 0.2, {"pretrain/ce": 3.0}, status="cached")
    assert cli_main(["bench", "demo", "--old", str(old), "--new", str(cached), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "were not computed in this run (pretrain/ce)" in err
    (tmp_path / "junk.json").write_bytes(b"\x00\xff random")
    assert cli_main(["bench", "demo", "--old", str(old), "--new", str(tmp_path / "junk.json"),
                     "--out", str(tmp_path / "r")]) == 2
    assert "junk.json: not a readable run.json" in capsys.readouterr().err
    assert cli_main(["bench", "demo", "--old", str(old), "--out", str(tmp_path / "r")]) == 2
    assert "bench demo needs --old REPORT --new REPORT" in capsys.readouterr().err
    other = _run(tmp_path / "epyc", 27.0, {"pretrain/ce": 100.0}, cpu="AMD EPYC")
    assert cli_main(["bench", "demo", "--old", str(old), "--new", str(other), "--out", str(tmp_path / "r")]) == 0
    assert "different CPU models" in json.loads((tmp_path / "r" / "bench_demo.json").read_text())["warning"]
