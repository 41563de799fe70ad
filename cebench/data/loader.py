"""The one DataLoader factory of the suite: pretraining's image batches, fine-tuning splits streamed from disk,
detection's images.

Every stage decides its batches itself (a seeded permutation cut into lists of indices, known ahead so a
resumed run continues the same sequence); the DataLoader only decodes them, in `workers` processes.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


def make_loader(ds: Dataset, batches: list[list], workers: int = 0, *, collate_fn=None,
                pin: bool = False) -> DataLoader:
    """A DataLoader over the given batches of `ds` items (lists of indices, or whatever `ds[...]` takes).
    Its own generator: starting a loader (its workers' base seed) must not draw from the global RNG, which
    dropout uses, or a loader started at another iteration (after a resumption) would change the numbers."""
    return DataLoader(ds, batch_sampler=batches, num_workers=workers, collate_fn=collate_fn, pin_memory=pin,
                      generator=torch.Generator().manual_seed(0), persistent_workers=False)


__all__ = ["make_loader"]
