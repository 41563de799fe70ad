import os

import pytest
import torch

os.environ.setdefault("CEBENCH_NO_PROGRESS", "1")
# amp=auto on CPU: fp32, not the start-up probe, whose verdict could differ between two runs a test compares
# (subprocesses inherit it); tests/test_precision.py unsets it to test the probe
os.environ.setdefault("CEBENCH_CPU_AMP", "none")


@pytest.fixture(autouse=True)
def _no_user_cache(monkeypatch, tmp_path_factory):
    """Library calls that name no cache folder fall back to the user's cache directory: in tests, a
    temporary one (never ~/.cache); and a developer's $CEBENCH_CACHE does not leak into the tests."""
    monkeypatch.delenv("CEBENCH_CACHE", raising=False)
    monkeypatch.setattr("cebench.cache.user_cache_dir", lambda: tmp_path_factory.getbasetemp() / "user-cache")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
