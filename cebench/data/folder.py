"""Folders of images for pretraining (ImageNet, Paris StreetView, anything), robust to bad files.

A bad image never kills a DataLoader worker: it is logged (with its path), counted, and replaced by the
next readable index (deterministic). The count is shared across DataLoader worker processes.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from pathlib import Path

from torch.utils.data import Dataset

from cebench.errors import BadImageError, CebenchError, DatasetMissingError
from cebench.images import IMAGE_EXTENSIONS, list_images, open_rgb

log = logging.getLogger("cebench.data")


class _BadCounter:
    """A counter shared with DataLoader workers (fork or spawn) plus this process's list of bad paths."""

    def __init__(self):
        self._value = mp.get_context().Value("i", 0)
        self.paths: list[str] = []

    def add(self, path: str) -> None:
        with self._value.get_lock():
            self._value.value += 1
        self.paths.append(path)

    @property
    def count(self) -> int:
        return int(self._value.value)


class SafeDataset(Dataset):
    """Wrap a dataset whose `__getitem__` may raise BadImageError: log, count, substitute the next index.

    The substitute sample carries its own index (the last element), so index-keeping consumers stay
    consistent. If every sample is bad, raises CebenchError.
    """

    def __init__(self, dataset: Dataset, max_tries: int | None = None):
        self.dataset = dataset
        self.max_tries = max_tries
        self._bad = _BadCounter()

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def bad_count(self) -> int:
        """Bad images met so far, in this process and all DataLoader workers (each visit counts)."""
        return self._bad.count

    @property
    def bad_paths(self) -> list[str]:
        """Bad image paths met in THIS process (workers keep their own lists; see the log)."""
        return list(self._bad.paths)

    def __getitem__(self, i: int):
        n = len(self.dataset)
        tries = n if self.max_tries is None else min(n, self.max_tries)
        for k in range(tries):
            j = (i + k) % n
            try:
                return self.dataset[j]
            except BadImageError as exc:
                log.warning("skipping bad image %s (%s); using index %d instead", exc.path, exc.reason, (j + 1) % n)
                self._bad.add(exc.path)
        raise CebenchError(f"no readable image found after {tries} tries from index {i} of {type(self.dataset).__name__}")

    def __getattr__(self, name):  # classes, ids, ... of the wrapped dataset
        if name in ("dataset", "_bad", "max_tries"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class _RawFolder(Dataset):
    def __init__(self, paths: list[Path], transform):
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = open_rgb(self.paths[i])
        if self.transform is not None:
            img = self.transform(img)
        return img, i


class ImageFolderDataset(SafeDataset):
    """Every image under `root` (sorted; recursive by default) -> (image, index); bad files substituted."""

    def __init__(self, root, transform=None, recursive: bool = True):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetMissingError(
                f"image folder {root} not found: put the pretraining images (ImageNet train, Paris StreetView, "
                f"or any photos; {', '.join(IMAGE_EXTENSIONS)}) in that folder, sub-folders allowed")
        paths = list_images(root, recursive=recursive)
        if not paths:
            raise DatasetMissingError(
                f"no images found in {root}{' (recursively)' if recursive else ''}: put the pretraining images "
                f"there ({', '.join(IMAGE_EXTENSIONS)})")
        self.root = root
        super().__init__(_RawFolder(paths, transform))

    @property
    def paths(self) -> list[Path]:
        return self.dataset.paths

    @property
    def transform(self):
        return self.dataset.transform


__all__ = ["ImageFolderDataset", "SafeDataset"]
