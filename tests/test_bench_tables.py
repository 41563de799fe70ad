"""results/bench.md as tables: the side-by-side ratios, the kNN and folder rows, the stage tables, and
every number still listed; `cebench bench knn --quick` writes them through the CLI."""

from __future__ import annotations

import json

from cebench.benchmarks.cli import main as cli_main
from cebench.benchmarks.perf.tables import summary_markdown

DATA = {
    "machine": {"cpu": "Test CPU", "cpu_count": 2, "torch": "x", "python": "3"},
    "date": "2000-01-01 00:00:00",
    "reference": {"reference": "the port", "batch": 64, "threads": 2, "g_params": 71124544,
                  "modes": {"fp32": {"cebench_img_per_s": 20.0, "port_img_per_s": 10.0, "ratio": 2.0, "ratio_min": 1.8,
                                     "ratio_max": 2.2, "cpu_ratio": 2.1, "rounds": 7,
                                     "raw": {"img_per_s": {"port": [10.0], "cebench": [20.0]}}}}},
    "knn": {"n": 1000000, "dim": 256, "queries": 1000, "k": 10, "threads": 2, "target_recall": 0.95, "data": "d",
            "auto_resolved": {"kind": "ivf"},
            "methods": {"sklearn brute": {"build_s": 0.0, "search_s": 10.0, "total_s": 10.0, "recall_at_10": 1.0,
                                          "speedup_vs_sklearn": 1.0},
                        "faiss ivf256": {"build_s": 1.0, "search_s": 0.8, "total_s": 1.8, "recall_at_10": 0.986,
                                         "speedup_vs_sklearn": 5.5, "nlist": 256, "nprobe": 2},
                        "faiss hnsw16": {"skipped": "too slow"}}},
    "folder": {"photos": 1000, "long_side_px": [68, 2400], "patch": 64, "stride": 32, "max_side": 640,
               "patches": 125920, "fresh_s": 40.0, "cached_s": 10.0, "cache_mb": 426.0, "peak_rss_mb": 3000.0,
               "float16_recall_at_10_vs_float32": 1.0, "cpu_count": 2},
    "pretrain": {"results": {"inpaint-ce-paper-128@cpu": {"img_per_s": 5.6, "batch": 8, "peak_mem_mb": 1213.0,
                                                          "memory": "RSS growth", "threads": 1, "params": 71124544}}},
    "transfer": {"device": "cpu", "threads": 2, "cls": {"train_images_per_s": 1722.7, "infer_images_per_s": 6673.8,
                                                         "input": 64, "batch": 32}},
}


def test_tables_have_one_row_per_measurement():
    md = summary_markdown(DATA)
    assert "| inpainting CE step, 128 px, 4000-d, D on the centre (fp32) | 20 | 10 | **2.0x** (1.8-2.2) | 2.1x |" in md
    assert "| faiss ivf256 | 1 | 0.8 | 1.8 | 0.986 | **5.5x** | nlist 256, nprobe 2 |" in md
    assert "| faiss hnsw16 | - | - | - | - | - | too slow |" in md
    assert "| 1000 ([68, 2400]) | 125,920 | 40 | 10 | 426 MB |" in md
    assert "| inpaint-ce-paper-128 | 5.6 | 8 | 1,213 MB (RSS growth) | cpu, 1 thread(s) | 71,124,544 |" in md
    assert "| classification fine-tuning | 1,723 | 6,674 | 32 | 64 | cpu, 2 threads |" in md
    assert md.index("Side by side") < md.index("Nearest neighbours") < md.index("Pretraining steps")
    assert "### knn" in md and "| methods.faiss ivf256.recall_at_10 | 0.986 |" in md  # every number still listed
    assert "raw" not in md  # but not the per-round lists
    assert "Measured on" not in md  # sections of older files name no machine: none is made up
    dated = summary_markdown({**DATA, "measured_on": {"knn": {"cpu": "Other CPU", "date": "2000-01-02"}}})
    knn_part = dated[dated.index("## Nearest neighbours"):dated.index("| method |")]
    assert "Measured on Other CPU, 2000-01-02." in knn_part and dated.count("Measured on") == 1


def test_bench_knn_quick_through_the_cli(tmp_path):
    assert cli_main(["bench", "knn", "--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["knn"]["methods"]["faiss flat"]["recall_at_10"] == 1.0
    md = (tmp_path / "bench.md").read_text()
    assert "## Nearest neighbours at scale: 20,000 x 256 vectors" in md and "| faiss flat |" in md
    assert set(data["measured_on"]) == {"knn"} and "Measured on " in md  # the section names its machine
