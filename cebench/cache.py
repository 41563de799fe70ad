"""Where derived files live: one cache folder per command, never the data folder.

One function, `cache_key`, computes the cache key of every result that is reused when its inputs are
unchanged: a `cebench run` job (its `.done.json`), a transfer job's result JSON, a fine-tuning job's and a
pretraining's `last` checkpoint (resumed only for the same key), and a derived-file folder's name.

Proposals, decoded and resized image splits and any other file computed from the data go under a
cache folder: `--cache DIR` on the command line, else `$CEBENCH_CACHE`, else `<output folder>/cache`
(library calls with no output folder: the user's cache directory, `$XDG_CACHE_HOME/cebench` or
`~/.cache/cebench`). Entries are keyed by the data they were computed from (file names, sizes and
modification times: `files_key`) and by the settings, so one cache folder serves several data sets
and runs, a changed image is recomputed, and data sets on read-only or shared storage are never
written to. A cache folder inside the data folder is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from .config import config_to_dict
from .errors import ConfigError

ENV = "CEBENCH_CACHE"


def cache_key(inputs, length: int = 12) -> str:
    """The one cache key: a short stable hash of everything a result depends on.

    `inputs` is JSON-able data (mappings, lists, strings, numbers; key order does not matter, tuples read as
    lists, paths and other objects as their `str`) or a dataclass, read as its fields. Equal inputs give
    the same key on any machine and in any process, so a result stored with its key is reused exactly
    when a later run asks for it with the same inputs."""
    data = config_to_dict(inputs) if dataclasses.is_dataclass(inputs) else inputs
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cebench"


def cache_root(explicit=None, out_dir=None) -> Path:
    """`explicit` (--cache), else $CEBENCH_CACHE, else `out_dir/cache`, else the user's cache directory."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    if out_dir is not None:
        return Path(out_dir) / "cache"
    return user_cache_dir()


def ensure_outside(cache, data_root) -> Path:
    """`cache`, or a ConfigError when it lies inside the data folder `data_root`."""
    cache = Path(cache)
    c, d = cache.expanduser().resolve(), Path(data_root).expanduser().resolve()
    if c == d or d in c.parents:
        raise ConfigError(f"cache folder {cache} is inside the data folder {data_root}: derived files never go "
                          f"into the data; choose another (--cache DIR or {ENV})")
    return cache


def file_stamp(path) -> str:
    """`name:size:mtime_ns` of one file (what a cache entry computed from it is keyed by)."""
    p = Path(path)
    st = p.stat()
    return f"{p.name}:{st.st_size}:{st.st_mtime_ns}"


def files_key(paths, *extra, length: int = 16) -> str:
    """Hash of the stamps of `paths` (missing files count as missing) and of `extra` settings."""
    h = hashlib.sha256()
    for p in paths:
        try:
            h.update(file_stamp(p).encode())
        except OSError:
            h.update(f"{Path(p).name}:missing".encode())
        h.update(b"\0")
    for e in extra:
        h.update(repr(e).encode())
        h.update(b"\0")
    return h.hexdigest()[:length]


__all__ = ["ENV", "cache_key", "cache_root", "user_cache_dir", "ensure_outside", "file_stamp", "files_key"]
