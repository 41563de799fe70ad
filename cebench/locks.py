"""Advisory file locks (`fcntl.flock`) for work that two processes may start at the same time.

Used where a second process must wait for the first (generating the demo tree, merging a results file)
or must refuse to start (two `cebench run` on one output folder). The lock file is never deleted:
removing it while another process waits on it would let a third take a fresh lock beside them.
"""
from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path


@contextlib.contextmanager
def file_lock(path, *, wait: bool = True):
    """Hold an exclusive lock on `path` (created if missing) for the `with` block.

    wait=False raises BlockingIOError at once when another process holds it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


__all__ = ["file_lock"]
