"""The real-photo track: `cebench run --config real` planned on fixture trees (Tiny ImageNet layout, a
SYSU-Shapes conversion), and a short run of every stage on ../shared/data when it is there."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from test_data_folders import tiny_imagenet
from test_data_sysu import make_source

from cebench.benchmarks.cli import main as cli_main
from cebench.benchmarks.cli import resolve_config
from cebench.benchmarks.pipeline import data_problems, resolve

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("real")
    tin = tiny_imagenet(base / "tiny-imagenet-200")
    assert cli_main(["data", "prepare", "sysu-shapes", str(make_source(base / "sysu-src")), "--out",
                     str(base / "sysu-voc")]) == 0
    return tin, base / "sysu-voc"


def test_real_config_plans_every_stage_on_the_two_trees(trees, tmp_path, capsys):
    tin, voc = trees
    assert cli_main(["run", "--config", "real", "--dry-run", "--out", str(tmp_path / "out"), f"data.root={voc}",
                     f"data.pretrain_images={tin}"]) == 0
    text = capsys.readouterr().out
    reads = dict(re.findall(r"^(\S+): cebench .*\n    reads (.*)$", text, flags=re.M))
    assert reads["pretrain/ce"].startswith(f"data.pretrain_images ({tin})")
    assert reads["inpaint"].startswith(f"data.pretrain_images ({tin})")
    # segmentation and retrieval read the converted tree itself (it has its own masks): no data.seg_root needed
    assert reads["cls/random"] == reads["seg/random"] == reads["det/random"] == reads["retrieval"] == \
        f"data.root ({voc})"
    # the supervised pretraining fills the ImageNet-labels row, trained for run.supervised_steps
    assert re.search(r"^pretrain/supervised: cebench pretrain --method supervised .* steps=4000$", text, flags=re.M)
    for task in ("cls", "seg", "det", "svm"):
        assert f"{task}/supervised-imagenet: cebench transfer {task} --init supervised-imagenet=" in text
    # the four pretext rows run by default on the real track, pretrained on the photos alone (no region masks)
    for method in ("context-prediction", "jigsaw", "colorization", "rotation"):
        assert reads[f"pretrain/{method}"] == f"data.pretrain_images ({tin})"
        for task in ("cls", "seg", "det", "svm"):
            assert re.search(rf"^{task}/{method}: cebench transfer {task} --init .*=\S*pretrain/{method}/checkpoint.pt",
                             text, flags=re.M), (task, method)
    cfg = resolve(resolve_config("real"), [f"data.root={voc}", f"data.pretrain_images={tin}"])
    assert data_problems(cfg) == []
    assert len(cfg["transfer"]["seeds"]) >= 8 and cfg["inpaint"]["heldout"] == "pretrain-val"
    # without the two folders the run stops before any work, naming both keys
    missing = resolve(resolve_config("real"), [])
    assert {"data.root", "data.pretrain_images"} <= {k for k, _ in data_problems(missing)}
    assert cli_main(["run", "--config", "real", "--out", str(tmp_path / "none")]) == 2
    assert "data.root is empty" in capsys.readouterr().err


@pytest.mark.slow
def test_real_photos_short_run_of_every_stage(tmp_path):
    """A few iterations of the real config's stages on the shared photos (a subset of SYSU-Shapes): pretraining
    and the supervised row on Tiny ImageNet's labels, Table 1 on its val photos, retrieval, cls and seg."""
    if not (SHARED / "tiny-imagenet-200").is_dir() or not (SHARED / "sysu-shapes").is_dir():
        pytest.skip(f"real photos not found at {SHARED} (tiny-imagenet-200, sysu-shapes): the real-photo run is "
                    "skipped, as on a machine without them")
    voc = tmp_path / "sysu-voc"
    assert cli_main(["data", "prepare", "sysu-shapes", str(SHARED / "sysu-shapes"), "--out", str(voc),
                     "--limit-per-class", "10"]) == 0
    out = tmp_path / "run"
    small = ["pretrain.steps=3", "pretrain.batch_size=8", "pretrain.eval_images=16", "pretrain.amp=none",
             "run.supervised_steps=3", "run.methods=[supervised]", "run.imagenet=false", "run.svm=false",
             "run.tasks=[cls,seg]",
             "inpaint.train.steps=2", "inpaint.train.batch_size=8", "inpaint.train.amp=none", "inpaint.n_test=8",
             "inpaint.nn_max_images=64", "transfer.seeds=[0]", "transfer.select_seeds=[100]",
             "transfer.runtime.amp=none", "transfer.cls.iterations=4", "transfer.cls.lrs=[0.001]",
             "transfer.cls.batch_size=8", "transfer.cls.test_crops=2", "transfer.seg.iterations=4",
             "transfer.seg.lrs=[0.01]", "transfer.seg.batch_size=8",
             "retrieval.max_queries=50",
             "retrieval.layers=[pool5]", "retrieval.masked=[false]", "retrieval.amp=none", "retrieval.figure_queries=2"]
    assert cli_main(["run", "--config", "real", "--out", str(out), "--device", "cpu", f"data.root={voc}",
                     f"data.pretrain_images={SHARED / 'tiny-imagenet-200'}", *small]) == 0
    rep = out / "report"
    t1 = pd.read_csv(rep / "table1.csv")
    assert {"CE (L2)", "NN (HOG)", "Telea (OpenCV)"} <= set(t1["method"]) and t1["psnr_db"].notna().all()
    assert "n_heldout: 8" in (out / "inpaint" / "data.yaml").read_text()  # Tiny ImageNet val photos
    t2 = pd.read_csv(rep / "table2.csv")
    assert {"random", "supervised (ImageNet labels)"} <= set(t2["init"])
    assert set(t2["task"]) >= {"cls", "seg"}  # detection on the real photos: the committed run (results/real)
    sup = json.loads((out / "pretrain" / "supervised" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "epoch_val_xent" in sup  # softmax over Tiny ImageNet's classes, held out on its val photos
    assert "Real photographs: pretraining images" in (rep / "results.md").read_text()
    assert json.loads((rep / "run.json").read_text())["data"]["root"] == str(voc)


def test_selective_search_max_side_segments_large_photos_small():
    """proposals.max_side: a 300 x 400 photo is segmented at 96 x 128 and its boxes mapped back to its pixels;
    a config without it keeps the cache key every earlier proposal cache was written under."""
    from dataclasses import asdict

    import numpy as np

    from cebench.cache import cache_key
    from cebench.transfer.det.proposals import PROPOSAL_VERSION, ProposalConfig, selective_search, settings_key

    rgb = np.zeros((300, 400, 3), np.uint8)
    rgb[60:180, 80:280] = (200, 40, 40)   # one red block on black
    small = selective_search(rgb, ProposalConfig(max_side=128, seed=0))
    assert len(small) and small[:, [0, 2]].max() <= 400 + 1e-3 and small[:, [1, 3]].max() <= 300 + 1e-3
    assert small[:, 2].max() > 128 * 1.5  # in the photo's pixels, not the segmented image's
    hit = np.abs(small - np.array([80, 60, 280, 180], np.float32)).max(1).min()
    assert hit <= 400 / 128 * 2  # the block is found to within two segmented pixels
    d = asdict(ProposalConfig())
    for k in ("file", "cache_dir", "workers", "grid_scales", "grid_aspects", "grid_stride", "max_side"):
        d.pop(k)
    assert settings_key(ProposalConfig()) == f"selective_search-{cache_key({**d, 'version': PROPOSAL_VERSION})}"
    assert settings_key(ProposalConfig(max_side=171)) != settings_key(ProposalConfig())
