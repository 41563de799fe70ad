"""End to end: `cebench transfer det --config tiny`, and detection on a real-VOCdevkit-layout tree."""

import json

import numpy as np
import pytest
from PIL import Image

from cebench.benchmarks.cli import build_parser
from cebench.errors import DatasetMissingError
from cebench.logs import read_jsonl

FAST = ["det.iterations=4", "seeds=[0,1]", "det.lrs=[0.001]", "workers=1", "det.magic_images=4", "det.fc_dim=32",
        "det.eval_batch=8", "det.figure_images=2", "det.proposals.workers=1", "log.every=2",
        "log.tensorboard=true"]


def test_cli_tiny_end_to_end(tmp_path):
    out = tmp_path / "out"
    args = build_parser().parse_args(["transfer", "det", "--config", "tiny", "--out", str(out),
                                      f"data.demo_dir={tmp_path / 'data'}", *FAST])
    assert args.func(args) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    det = {r["metric"]: r for r in rows if r["task"] == "det" and r["init"] == "random"}
    assert set(det) == {"mAP", "mAP_11pt", "mAP_allpoint"}
    assert det["mAP"]["seeds"] == 2 and 0.0 <= det["mAP"]["mean"] <= 1.0
    jobs = list((out / "jobs" / "det").rglob("final_*.json"))
    assert len(jobs) == 2 and all(json.loads(j.read_text())["status"] == "ok" for j in jobs)
    curve = read_jsonl(jobs[0].with_suffix(".metrics.jsonl"))  # the fine-tuning curve, every 2 of 4 iterations
    assert [r["step"] for r in curve] == [2, 4] and all({"loss", "cls", "box", "lr"} <= set(r) for r in curve)
    assert list((out / "tensorboard" / "det" / "random").glob("final_lr0.001_seed0/events.out.tfevents.*"))
    assert (out / "det_detections.png").stat().st_size > 1000
    assert (out / "config.yaml").is_file() and (out / "det_summary.json").is_file()
    # cached: a second run reuses every job
    before = {j: j.stat().st_mtime_ns for j in jobs}
    assert args.func(args) == 0
    assert all(j.stat().st_mtime_ns == t for j, t in before.items())


def _xml(name, w, h, objects):
    objs = "".join(
        f"<object><name>{c}</name><pose>Unspecified</pose><truncated>{t}</truncated><difficult>{d}</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for c, b, t, d in objects)
    return (f"<annotation><folder>VOC2007</folder><filename>{name}.jpg</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size><segmented>0</segmented>{objs}</annotation>")


def make_vocdevkit(root, n=8):
    """A small tree in the real VOCdevkit layout: 20 VOC classes (no classes.txt), odd image sizes, objects
    touching the border (truncated) and difficult ones."""
    voc = root / "VOCdevkit" / "VOC2007"
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    colours = {"dog": (200, 40, 40), "car": (40, 40, 220), "person": (30, 180, 60)}
    ids = []
    for k in range(n):
        i = f"{k:06d}"
        ids.append(i)
        w, h = int(rng.integers(61, 140)) | 1, int(rng.integers(53, 120)) | 1  # odd sizes
        img = (rng.random((h, w, 3)) * 60 + 40).astype(np.uint8)
        objs = []
        for j, (cls, col) in enumerate(colours.items()):
            if j == 2 and k % 2:
                continue
            bw, bh = int(w * 0.35), int(h * 0.4)
            x0 = 0 if j == 0 else int(rng.integers(0, w - bw))  # the first object touches the left border
            y0 = int(rng.integers(0, h - bh))
            img[y0:y0 + bh, x0:x0 + bw] = col
            difficult = int(j == 2)
            objs.append((cls, (x0 + 1, y0 + 1, x0 + bw, y0 + bh), int(x0 == 0), difficult))
        Image.fromarray(img).save(voc / "JPEGImages" / f"{i}.jpg", quality=95)
        (voc / "Annotations" / f"{i}.xml").write_text(_xml(i, w, h, objs))
    splits = {"train": ids[:3], "val": ids[3:5], "trainval": ids[:5], "test": ids[5:]}
    for s, v in splits.items():
        (voc / "ImageSets" / "Main" / f"{s}.txt").write_text("".join(f"{x}\n" for x in v))
    return voc


def test_detection_on_vocdevkit_layout(tmp_path):
    from cebench.transfer.common import TaskContext
    from cebench.transfer.det.proposals import ProposalConfig
    from cebench.transfer.det.train import DetConfig, fit
    from cebench.transfer.inits import parse_init
    from cebench.transfer.protocol import TransferJob

    voc = make_vocdevkit(tmp_path)
    cfg = DetConfig(iterations=3, scale=96, max_size=200, fc_dim=32, magic_images=4, figure_images=2,
                    proposals=ProposalConfig(workers=1, max_proposals=300))
    job = TransferJob("det", parse_init("random"), 0, 1e-3, "final", "trainval", "test")
    out = fit(job, TaskContext(cfg=cfg, root=str(voc), cache_dir=str(tmp_path / "cache")))  # no out_dir: no files
    assert len(out["examples"]) == 2 and out["inputs"]["test_images"] == 3 and out["train"]["iterations"] == 3
    m = out["metrics"]
    assert all(0.0 <= m[k] <= 1.0 for k in ("mAP", "mAP_11pt", "mAP_allpoint"))
    ap = out["details"]["ap"]
    assert len(ap) == 20 and ap["aeroplane"] is None  # classes absent from test are NaN, not 0
    assert out["details"]["npos"]["person"] == 0  # person is always difficult: never a positive
    assert out["details"]["npos"]["dog"] == 3 and out["details"]["npos"]["car"] == 3
    for ex in out["examples"]:  # detections mapped back to the original (odd) image size
        w, h = Image.open(voc / "JPEGImages" / f"{ex['id']}.jpg").size
        b = np.asarray(ex["boxes"]).reshape(-1, 4)
        assert (b[:, 2] <= w + 1e-3).all() and (b[:, 3] <= h + 1e-3).all()


def test_missing_parts_listed(tmp_path):
    from cebench.transfer.det.data import check_voc_tree

    voc = make_vocdevkit(tmp_path, n=2)
    (voc / "ImageSets" / "Main" / "test.txt").unlink()
    for f in (voc / "Annotations").iterdir():
        f.unlink()
    (voc / "Annotations").rmdir()
    with pytest.raises(DatasetMissingError) as err:
        check_voc_tree(voc, ["trainval", "test"])
    msg = str(err.value)
    assert "Annotations" in msg and "test.txt" in msg and "trainval.txt" not in msg
