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


# ------------------------------------------------------------------------------------------ CheckpointSaver
class _Stream:
    """A seeded stream of (x, y) batches whose state is a generator (as the fine-tuning streams)."""

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)

    def take(self, k: int):
        for _ in range(k):
            x = torch.randn(4, 6, generator=self.gen)  # [B, 6]
            yield x, x.sum(1, keepdim=True)

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])


def _epoch(model, batches, opt) -> dict:
    """The smallest train_one_epoch: dropout draws from the global RNG, which the saver must capture."""
    total, n = 0.0, 0
    for x, y in batches:
        loss = (model(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        total, n = total + float(loss.detach()), n + 1
    return {"loss": total / max(n, 1), "iterations": n, "images": 4 * n, "seconds": 1.0}


def _run(path, key="job", iterations=7, every=2):
    from cebench.checkpoint import CheckpointSaver
    from cebench.runtime import Runtime

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(3)
    saver = CheckpointSaver(path, key, Runtime(torch.device("cpu")), iterations=iterations, model=model, optimizer=opt,
                            stream=_Stream(1), generators={"extra": gen}, every=every)
    with saver:
        while saver.step < iterations:
            saver.end_epoch(_epoch(model, saver.batches(), opt))
    return model, saver.totals(), torch.randn(2, generator=gen)


def test_saver_resumes_after_a_signal_to_the_uninterrupted_numbers(tmp_path, monkeypatch):
    from cebench.checkpoint import TEST_SIGNAL_ENV, Preempted

    ref, ref_stats, ref_draw = _run(None)
    assert ref_stats["iterations"] == 7 and ref_stats["inputs"] == {"train": [4, 6]}
    path = tmp_path / "last.pt"
    monkeypatch.setenv(TEST_SIGNAL_ENV, "TERM:3")  # SIGTERM to itself before iteration 3 (a preemption)
    with pytest.raises(Preempted):
        _run(path)
    ck = load_checkpoint(path)
    assert ck["step"] == 3 and ck["config"] == "job" and ck["world_size"] == 1 and ck["inputs"] == {"train": [4, 6]}
    mine = ck["per_rank"][0]  # this rank's data order, every global RNG and the run's own generators
    assert set(mine) == {"stream", "rng", "generators"} and set(mine["generators"]) == {"extra"}
    monkeypatch.delenv(TEST_SIGNAL_ENV)
    model, stats, draw = _run(path)  # resumes at 3, saves at 4 and 6
    for a, b in zip(model.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)
    assert stats["loss"] == pytest.approx(ref_stats["loss"], rel=1e-12) and stats["iterations"] == 7
    assert stats["images"] == 16 and torch.equal(draw, ref_draw)  # 4 iterations ran here; the extra generator too
    assert load_checkpoint(path)["step"] == 6  # the interval's last save (none at the end)


def test_saver_starts_afresh_on_another_key_and_refuses_another_world_size(tmp_path):
    from cebench.checkpoint import CheckpointSaver
    from cebench.runtime import Runtime

    path = tmp_path / "last.pt"
    ref, _, _ = _run(None, iterations=3)
    _run(path, key="other", iterations=3, every=1)  # leaves step 2 saved under key "other"
    model, stats, _ = _run(path, iterations=3)  # another key: not resumed
    assert stats["iterations"] == 3 and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                                            ref.state_dict().values()))
    two = Runtime(torch.device("cpu"), world_size=2, distributed=False)
    saver = CheckpointSaver(path, "job", two, iterations=3, model=nn.Linear(1, 1), optimizer=None, stream=None)
    save_checkpoint(path, {"config": "job", "world_size": 1})
    with pytest.raises(CheckpointError, match="written by 1 processes, resumed with 2"):
        saver.find_recovery()
