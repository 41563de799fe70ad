"""Transfer under torchrun: 2 Gloo processes on CPU train cls, seg and det with DDP; the sharded
evaluation scores every test image exactly once and gives the one-process numbers."""

import json
import os
import socket
import subprocess
import sys

import pytest

SCRIPT = r'''
import json, sys
from pathlib import Path
import torch
from cebench.config import load_config
from cebench.data.sources import DataConfig
from cebench.runtime import Runtime, cleanup, init_runtime
from cebench.transfer import tasks
from cebench.transfer.classification import ClsConfig, ClsNet
from cebench.transfer.classification import evaluate as predict_scores
from cebench.transfer.config import TransferConfig
from cebench.transfer.det.train import DetConfig, build_model, evaluate
from cebench.transfer.det.data import DetDataset
from cebench.transfer.data import open_split
from cebench.transfer.det.proposals import ProposalConfig, load_proposals
from cebench.transfer.segmentation import FCN32, SegConfig
from cebench.transfer.segmentation import evaluate as confusion_on
from cebench.pretrain.models import AlexNetConfig, build_encoder

voc, out = sys.argv[1], Path(sys.argv[2])
rt = init_runtime("cpu", amp="none")
one = Runtime(torch.device("cpu"))  # the same evaluation in one process, for comparison
lines = []

def run():  # models (and DDP wrappers) live in this frame: dropped before cleanup
    torch.manual_seed(0)
    cfg = ClsConfig(test_crops=3, eval_batch=5, load_size=64)
    ev = open_split(voc, "test", kind="cls", load_size=64, cache_dir=None, memory_mb=4096)
    net = ClsNet(build_encoder(AlexNetConfig.demo()), 8, fc_dim=16).eval()
    a, na = predict_scores(net, ev, cfg, 64, rt, seed=1)
    b, nb = predict_scores(net, ev, cfg, 64, one, seed=1)
    lines.append(f"cls eval equal={torch.equal(a, b)} counted={na} of {len(ev)}")
    scfg = SegConfig(eval_batch=5, load_size=64)
    sev = open_split(voc, "test", kind="seg", load_size=64, cache_dir=None, memory_mb=4096)
    torch.manual_seed(0)
    fcn = FCN32(build_encoder(AlexNetConfig.demo()), 9, fc_dim=16).eval()
    torch.nn.init.normal_(fcn.score.weight)  # not all background
    ca, ma = confusion_on(fcn, sev, 9, scfg, rt)
    cb, mb = confusion_on(fcn, sev, 9, scfg, one)
    lines.append(f"seg eval equal={torch.equal(ca, cb)} counted={ma} of {len(sev)} pixels={int(ca.sum())}")
    dcfg = DetConfig(eval_batch=3, fc_dim=16, proposals=ProposalConfig(method="grid"))
    from cebench.data.voc import read_split
    props = load_proposals(voc, read_split(voc, "test"), dcfg.proposals, progress=False)
    ds = DetDataset(voc, "test", props, scale=dcfg.scale)
    det = build_model(dcfg, "random", None, 0, ds, magic="none").eval()
    da, dbb = evaluate(det, ds, dcfg, "cpu", rt=rt), evaluate(det, ds, dcfg, "cpu", rt=one)
    lines.append(f"det eval equal={da['metrics'] == dbb['metrics']} counted={da['test_images']} of {len(ds)}")
    # training through the stage entry points, DDP over the two processes
    data_cfg = DataConfig(root=voc)
    tcfg = load_config(TransferConfig, None, ["arch=demo", "magic_images=4", "cls.iterations=2", "cls.batch_size=8",
                                              "cls.fc_dim=16", "cls.test_crops=2", "cls.lrs=[3e-3]", "seg.iterations=2",
                                              "seg.batch_size=8", "seg.fc_dim=16", "seg.lrs=[3e-3]", "seeds=[0]",
                                              "det.iterations=2", "det.images_per_batch=2", "det.fc_dim=16",
                                              "det.lrs=[0.001]", "det.magic_images=4", "det.figure_images=0",
                                              "det.proposals.method=grid", "workers=1"])
    for task in ("cls", "seg", "det"):
        tasks.main(task, tcfg, data_cfg, ["random"], out, "cpu")

run()
print("\n" + "\n".join(f"rank={rt.rank} world={rt.world_size} {l}" for l in lines), flush=True)
cleanup(rt)
'''


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_transfer_ddp_two_gloo_processes(tmp_path):
    from cebench.data.demo import DemoDataConfig, generate_demo

    voc = generate_demo(tmp_path / "data", DemoDataConfig(n_pretrain=0, n_trainval=16, n_test=11, workers=1))
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CEBENCH_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
           str(script), str(voc), str(tmp_path / "out")]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    lines = [l for l in res.stdout.splitlines() if l.startswith("rank=")]
    assert len(lines) == 6, res.stdout
    for rank in (0, 1):  # 11 test images over 2 processes: chunks on both ranks, each image once
        mine = [l for l in lines if l.startswith(f"rank={rank} world=2 ")]
        assert "cls eval equal=True counted=11 of 11" in mine[0]
        assert "seg eval equal=True counted=11 of 11" in mine[1] and "pixels=" in mine[1]
        assert "det eval equal=True counted=11 of 11" in mine[2]
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert {(r["task"], r["metric"]) for r in rows} >= {("cls", "mAP"), ("seg", "mean IU"), ("det", "mAP")}
    for task in ("cls", "seg", "det"):
        [job] = (tmp_path / "out" / "jobs" / task / "random").glob("final_*.json")
        rec = json.loads(job.read_text())
        assert rec["status"] == "ok" and rec["inputs"]["processes"] == 2 and rec["inputs"]["test_images"] == 11, rec
        if task != "det":  # each rank's half of the global batch of 8
            assert rec["inputs"]["train"][0] == 4
