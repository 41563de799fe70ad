"""A 2-process Gloo DDP pretraining run on CPU (torch.multiprocessing)."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, data_dir, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), CEBENCH_NO_PROGRESS="1")
    torch.set_num_threads(1)
    from cebench.data.sources import DataConfig
    from cebench.pretrain.train import PretrainConfig, main

    cfg = PretrainConfig(method="ce-adv", mask="center", steps=3, batch_size=4, eval_images=0, ckpt_every=2)
    main(cfg, DataConfig(demo="tiny", demo_dir=data_dir), out, device="cpu")


@pytest.mark.slow
def test_ddp_two_process_gloo(tmp_path):
    from cebench.data.sources import DataConfig, voc_root

    data_dir = str(tmp_path / "data")
    voc_root(DataConfig(demo="tiny", demo_dir=data_dir))
    mp.start_processes(_worker, args=(_free_port(), data_dir, str(tmp_path / "out")), nprocs=2, join=True,
                       start_method="spawn")
    ck = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 3 and ck["arch"]["name"] == "ce-adv"
    assert not any(k.startswith("module.") for k in ck["model"])
