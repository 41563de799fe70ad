"""cebench: the Context Encoders benchmark suite (shared core).

The core holds what every stage uses: datasets, runtime, checkpoints, config, logging and the
feature tools (HOG, FAISS index, the one no-grad extractor). Stage packages
(`cebench.pretrain`, `cebench.transfer`, `cebench.retrieval`, `cebench.benchmarks`) build on it;
the core never imports a stage.

The Python API (`cebench.evaluate`, `cebench.save_encoder`, `cebench.load_encoder`,
`cebench.SequentialAlexNet`, `cebench.AlexNetLike`) lives in the stage packages and is looked up
only when first used (module `__getattr__`), so `import cebench` stays light and free of cycles.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first access)
_API = {
    "evaluate": "cebench.benchmarks.api",
    "save_encoder": "cebench.pretrain.compat",
    "load_encoder": "cebench.pretrain.loading",
    "SequentialAlexNet": "cebench.pretrain.compat",
    "AlexNetLike": "cebench.pretrain.compat",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'cebench' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
