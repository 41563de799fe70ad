import os

import pytest
import torch

os.environ.setdefault("CEBENCH_NO_PROGRESS", "1")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
