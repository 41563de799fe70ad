import os

import pytest
import torch
from torch import nn

from cebench.checkpoint import load_checkpoint, load_state_strict, save_checkpoint, strip_prefixes
from cebench.errors import CheckpointError


class _Payload:
    def __reduce__(self):
        return (os.system, ('echo pwned',))


def make_state(model):
    return {"model": model.state_dict(), "step": 3, "epoch": 1, "config": {"lr": 0.1}, "arch": {"name": "toy"}}


def test_roundtrip_weights_only(tmp_path):
    model = nn.Linear(3, 2)
    path = save_checkpoint(tmp_path / "c.pt", make_state(model))
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 3 and ckpt["arch"]["name"] == "toy"
    assert torch.equal(ckpt["model"]["weight"], model.weight)


def test_weights_only_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"obj": _Payload()}, path)  # an arbitrary pickled class: weights_only must refuse it
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)


def test_interrupted_save_keeps_previous(tmp_path, monkeypatch):
    model = nn.Linear(3, 2)
    path = save_checkpoint(tmp_path / "last.pt", make_state(model))
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # the process is killed mid-write

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, make_state(nn.Linear(3, 2)))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_truncated_and_missing_files(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", make_state(nn.Linear(3, 2)))
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_checkpoint(cut)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_strict_loading_lists_keys():
    src = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    sd = {"module._orig_mod." + k: v for k, v in src.state_dict().items()}
    assert set(strip_prefixes(sd)) == set(src.state_dict())
    dst = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    load_state_strict(dst, sd)
    assert torch.equal(dst[1].weight, src[1].weight)
    other = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(2, 1))
    with pytest.raises(CheckpointError) as exc:
        load_state_strict(other, sd, path="x.pt")
    msg = str(exc.value)
    assert "x.pt" in msg and "missing keys [2.bias, 2.weight]" in msg and "shape mismatch" in msg
    assert "\n" not in msg
