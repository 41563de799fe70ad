"""cebench: the Context Encoders benchmark suite (shared core).

The core holds what every stage uses: datasets, runtime, checkpoints, config, logging and the
feature tools (HOG, FAISS index, the one no-grad extractor). Stage packages
(`cebench.pretrain`, `cebench.transfer`, `cebench.retrieval`, `cebench.benchmarks`) build on it;
the core never imports a stage.
"""

__version__ = "0.1.0"
