"""The tiny pipeline on a data tree made read-only: every stage runs, and nothing in the data changes
(derived files - proposals, decoded splits, features - go to the run's cache folder).

The run is the session's shared tiny run (tests/conftest.py `tiny_run`: every stage of `--config tiny`, the
context encoder and autoencoder pretrainings and selective search included), made on read-only demo data."""

from __future__ import annotations

import pytest


@pytest.mark.xdist_group("tiny_run")  # one worker runs the shared tiny run once (pytest -n 2)
def test_tiny_pipeline_on_read_only_data(tiny_run):
    assert tiny_run.data.is_relative_to(tiny_run.out)  # the run's own demo tree (OUT/data), read by every stage
    assert tiny_run.data_before and any(name.endswith(".jpg") for name in tiny_run.data_before)
    # not one byte changed, not one file added (as root, chmod stops nothing: this comparison does)
    assert tiny_run.data_after == tiny_run.data_before
    for stage in ("pretrain/", "inpaint", "retrieval", "det-proposals", "cls/", "seg/", "det/", "svm/"):
        assert f"done   {stage}" in tiny_run.stdout, stage
    out = tiny_run.out
    assert (out / "report" / "results.md").is_file()
    assert list((out / "cache" / "proposals").rglob("*.npz"))  # the derived files went to the run's cache
    assert list((out / "cache" / "splits").glob("*.pt"))
