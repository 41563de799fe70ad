import os
import socket

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from cebench.features.extract import Features, extract_features, load_features, pool_features, save_features
from cebench.features.hog import HOGExtractor

torch.set_num_threads(1)


class _Images(Dataset):
    def __init__(self, n=11, size=16):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 3, size, size, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], i % 3, i  # images, a label, the dataset index LAST


class _TinyEncoder(nn.Module):
    """Stand-in with the shared encoder API (forward_features / forward_intermediates)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv3 = nn.Conv2d(3, 4, 3, padding=1)
        self.pool5 = nn.MaxPool2d(4)

    def forward_intermediates(self, x, layers=("pool5",)):
        c = torch.relu(self.conv3(x))
        out = {"conv3": c, "pool5": self.pool5(c)}
        return {k: out[k] for k in layers}

    def forward_features(self, x):
        return self.forward_intermediates(x)["pool5"]


def test_extract_sorted_unit_norm_deterministic(tmp_path):
    ds = _Images()
    enc = _TinyEncoder()
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(1)).tolist()
    # a shuffled loader must come back sorted by dataset index
    loader = DataLoader([ds[i] for i in perm], batch_size=4)
    fn = lambda x: enc.forward_intermediates(x, ["pool5"])["pool5"]  # noqa: E731
    a = extract_features(fn, loader, device="cpu")
    b = extract_features(fn, DataLoader(ds, batch_size=5), device="cpu")
    assert isinstance(a, Features) and a.feats.dtype == np.float32 and a.indices.dtype == np.int64
    assert a.feats.shape == (11, 4 * 4 * 4)
    np.testing.assert_array_equal(a.indices, np.arange(11))
    np.testing.assert_allclose(np.linalg.norm(a.feats, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a.feats, b.feats, atol=1e-6)
    ref = fn(ds.x).detach().reshape(11, -1)
    np.testing.assert_allclose(a.feats, (ref / ref.norm(dim=1, keepdim=True)).numpy(), atol=1e-6)

    pooled = extract_features(fn, loader, device="cpu", pool="avgmax", l2_normalize=False,
                              amp_context=torch.autocast("cpu", dtype=torch.bfloat16))
    assert pooled.feats.shape == (11, 8) and pooled.feats.dtype == np.float32
    hogf = extract_features(HOGExtractor(pixels_per_cell=(4, 4)), loader, device="cpu")
    assert hogf.feats.shape == (11, 3 * 3 * 4 * 9)

    out = save_features(tmp_path / "f", a, meta={"method": "stand-in"})
    save_features(out, a)  # overwriting is atomic too
    back = load_features(out, mmap=True)
    assert isinstance(back.feats, np.memmap)
    np.testing.assert_array_equal(np.asarray(back.feats), a.feats)
    np.testing.assert_array_equal(back.indices, a.indices)
    assert not list(tmp_path.glob("*.tmp"))


def test_pool_features_shapes():
    y = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert pool_features(y, None).shape == (2, 12)
    assert torch.equal(pool_features(y, "max"), y.amax((2, 3)))
    assert torch.allclose(pool_features(y, "avg"), y.mean((2, 3)))
    assert pool_features(torch.ones(2, 5), "avg").shape == (2, 5)
    with pytest.raises(ValueError):
        pool_features(y, "sum")


def _ddp_worker(rank, world, port, out):
    import torch.distributed as dist
    from torch.utils.data.distributed import DistributedSampler

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    ds = _Images(n=7)  # 7 samples on 2 ranks: the sampler pads one duplicate
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=0)
    f = extract_features(lambda x: x.mean(1), DataLoader(ds, batch_size=2, sampler=sampler), device="cpu")
    np.save(os.path.join(out, f"r{rank}.npy"), f.feats)
    np.save(os.path.join(out, f"i{rank}.npy"), f.indices)
    dist.destroy_process_group()


@pytest.mark.slow
def test_extract_ddp_gathers_without_duplicates(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ds = _Images(n=7)
    single = extract_features(lambda x: x.mean(1), DataLoader(ds, batch_size=3), device="cpu")
    for r in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"i{r}.npy"), np.arange(7))
        np.testing.assert_allclose(np.load(tmp_path / f"r{r}.npy"), single.feats, atol=1e-6)
