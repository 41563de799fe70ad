"""FeatureIndex calibrates approximate kinds to a recall target at build (issue 31): on small versions of
the kNN benchmark's data auto reaches the target it reports, a forced low nprobe is raised, the recorded
recall is the one computed here independently (scikit-learn's exact neighbours against the index's own
search), the exact fallback, save/load of the record, and the recall in retrieval's outputs."""

import json

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

import cebench.features.index as fi
from cebench.benchmarks.perf.knn import gaussian_clusters, recall_at_k, relu_codes
from cebench.errors import CebenchError
from cebench.features.index import FeatureIndex, _drop_self, brute_force_search, exact_search, recall_per_query

torch.set_num_threads(1)
N = 20_000


def _data(name: str, n: int = N, dim: int = 64, seed: int = 0):
    """Small versions of the benchmark's distributions: 20 / 200 clusters (1,000 and 100 vectors a cluster)
    and ReLU codes of a 16-d subspace; queries are database points + noise, as there."""
    if name == "few-clusters":
        return gaussian_clusters(n, dim, 300, 0, clusters=20, seed=seed)[:2]
    if name == "many-clusters":
        return gaussian_clusters(n, dim, 300, 0, clusters=200, seed=seed)[:2]
    return relu_codes(n, dim, 300, 0, rank=16, seed=seed)[:2]


def _exact(db, q, k, metric="ip"):
    """scikit-learn's brute force: on unit vectors the Euclidean order is the inner-product order."""
    return NearestNeighbors(n_neighbors=k, algorithm="brute").fit(db).kneighbors(q)[1]


def _independent_recall(idx: FeatureIndex, db: np.ndarray) -> float:
    """The calibration's measurement redone outside the index: its sampled vectors as queries, scikit-learn's
    exact top k+1 and the index's search top k+1, each without the query's own id."""
    c = idx.calibration
    rows, k = np.array(c["query_ids"]), c["k"]
    truth = [[j for j in r if j != i][:k] for i, r in zip(rows, _exact(db, db[rows], k + 1))]
    found = [[j for j in r if j != i][:k] for i, r in zip(rows, idx.search(db[rows], k + 1)[1])]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth)]))


@pytest.mark.parametrize("name", ["few-clusters", "many-clusters", "relu"])
def test_auto_reaches_the_recall_it_reports_on_each_distribution(name, monkeypatch):
    monkeypatch.setattr(fi, "AUTO_IVF_MIN", 10_000)  # the approximate path at 20,000 vectors
    db, q = _data(name)
    idx = FeatureIndex(64, kind="auto", use_gpu=False).add(db)
    c = idx.calibration
    assert (idx.kind, idx.nlist, c["k"], c["target"], c["queries"]) == ("ivf-gemm", 64, 10, 0.95, 200)
    assert c["recall"] >= c["recall_lower"] >= 0.95 and idx.nprobe == c["nprobe"]
    assert c["recall_by_nprobe"][-1] == [c["nprobe_needed"], c["recall"]] or c["exact"]
    assert _independent_recall(idx, db) == pytest.approx(c["recall"], abs=1e-9)
    # fresh queries (the benchmark's: database points + noise): the target holds there too, up to the
    # sampling error of 300 queries (one standard error ~0.006 here)
    assert recall_at_k(idx.search(q, 10)[1], _exact(db, q, 10)) >= 0.94
    assert f"recall@10 {c['recall']:.3f}" in idx.describe() or c["exact"]


@pytest.mark.parametrize("kind", ["ivf-gemm", "ivf"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_a_forced_low_nprobe_is_raised_and_the_record_matches_the_search(kind, metric):
    db, _ = _data("many-clusters")
    if metric == "l2":
        db = db * np.linspace(0.5, 2, len(db), dtype=np.float32)[:, None]  # norms differ: l2 != ip order
    idx = FeatureIndex(64, kind=kind, metric=metric, nlist=64, nprobe=1, coarse_dim=16, use_gpu=False).add(db)
    c = idx.calibration
    assert c["recall_by_nprobe"][0][0] == 1 and c["recall_by_nprobe"][0][1] < 0.95  # nprobe 1 is not enough
    assert idx.nprobe == c["nprobe"] > 1 and not c["exact"]
    assert c["recall_lower"] >= 0.95 and 0 < c["scanned_fraction"] < fi.EXACT_FALLBACK_FRACTION
    rows, k = np.array(c["query_ids"]), c["k"]
    if metric == "ip":
        assert _independent_recall(idx, db) == pytest.approx(c["recall"], abs=1e-9)
    truth = _drop_self(brute_force_search(db, db[rows], k + 1, metric=metric)[1], rows)
    found = _drop_self(idx.search(db[rows], k + 1)[1], rows)
    assert recall_per_query(found, truth).mean() == pytest.approx(c["recall"], abs=1e-9)
    # one nprobe below: the recall listed for it is what a search there gives, under the target's bound
    idx.set_nprobe(c["nprobe"] - 1)
    below = recall_per_query(_drop_self(idx.search(db[rows], k + 1)[1], rows), truth)
    assert below.mean() - fi.RECALL_Z * below.std(ddof=1) / np.sqrt(len(rows)) < 0.95


def test_the_given_nprobe_is_a_floor_and_no_target_keeps_it():
    db, _ = _data("few-clusters")
    idx = FeatureIndex(64, kind="ivf-gemm", nlist=64, nprobe=20, coarse_dim=16, use_gpu=False).add(db)
    assert idx.nprobe == 20 and idx.calibration["recall"] >= 0.95  # already enough: not lowered
    assert idx.calibration["recall_by_nprobe"][-1] == [20, idx.calibration["recall"]]
    fixed = FeatureIndex(64, kind="ivf-gemm", nlist=64, nprobe=1, coarse_dim=16, use_gpu=False,
                         recall_target=None).add(db)
    assert fixed.nprobe == 1 and fixed.calibration is None and fixed.recall is None
    assert "not measured" in fixed.describe()
    flat = FeatureIndex(64, kind="auto", use_gpu=False).add(db)  # below AUTO_IVF_MIN: exact
    assert flat.kind == "flat" and flat.recall == 1.0 and flat.calibration["exact"]
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ValueError, match="recall_target"):
            FeatureIndex(8, recall_target=bad)


def test_exact_fallback_when_the_target_needs_most_of_the_lists(monkeypatch):
    """Uniform vectors in 32-d have no structure a partition can use: recall 0.99 needs most of the lists,
    so the index visits them all (exact, and says why); HNSW whose efSearch cap is too low becomes flat."""
    rng = np.random.default_rng(1)
    db = rng.standard_normal((8000, 32)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = db[:50] + 0.1
    idx = FeatureIndex(32, kind="ivf-gemm", nlist=32, nprobe=1, recall_target=0.99, use_gpu=False).add(db)
    c = idx.calibration
    assert c["exact"] and idx.nprobe == 32 and c["recall"] == 1.0 and c["scanned_fraction"] == 1.0
    assert c["scanned_fraction_needed"] > fi.EXACT_FALLBACK_FRACTION and "no faster than exact" in c["reason"]
    np.testing.assert_array_equal(idx.search(q, 10)[1], brute_force_search(db, q, 10)[1])
    assert "exact search" in idx.describe()
    monkeypatch.setattr(fi, "HNSW_EF_MAX", 16)
    h = FeatureIndex(32, kind="hnsw", hnsw_m=4, ef_search=11, ef_construction=16, recall_target=0.999,
                     use_gpu=False).add(db)
    assert (h.kind, h.calibration["requested_kind"], h.calibration["exact"], h.recall) == ("flat", "hnsw", True, 1.0)
    assert h.calibration["recall_by_ef_search"][-1][0] == 16 and h.calibration["recall_by_ef_search"][-1][1] < 0.999
    np.testing.assert_array_equal(h.search(q, 10)[1], brute_force_search(db, q, 10)[1])


def test_hnsw_raises_ef_search_until_the_target():
    db, _ = _data("few-clusters", n=6000)
    idx = FeatureIndex(64, kind="hnsw", hnsw_m=8, ef_search=4, ef_construction=40, use_gpu=False).add(db)
    c = idx.calibration
    assert idx.kind == "hnsw" and not c["exact"] and c["recall_lower"] >= 0.95
    assert idx.ef_search == c["ef_search"] == c["recall_by_ef_search"][-1][0] >= 11  # from k+1 up
    assert _independent_recall(idx, db) == pytest.approx(c["recall"], abs=1e-9)


def test_the_search_based_calibration_of_a_gpu_ivf_run_on_a_cpu_index():
    """faiss IVF on a GPU is calibrated by searching at doubling nprobe (no list layout to read there): the
    same code on a CPU IndexIVFFlat marked as a GPU one reaches the target, and its record is the recall of
    the search it ends at; the list-based calibration of the same index picks the smallest nprobe."""
    db, _ = _data("many-clusters")
    idx = FeatureIndex(64, kind="ivf", nlist=64, nprobe=1, coarse_dim=16, use_gpu=False, recall_target=None).add(db)
    idx.recall_target, idx.use_gpu = 0.95, True  # search() and set_nprobe() then treat it as the GPU index
    c = idx.calibrate(db)
    assert [p for p, _ in c["recall_by_nprobe"]] == [2 ** i for i in range(len(c["recall_by_nprobe"]))]
    assert c["recall_lower"] >= 0.95 > c["recall_by_nprobe"][-2][1] - 1e-9 and idx.nprobe == c["nprobe"]
    assert not c.get("exact") and c["scanned_fraction"] == pytest.approx(c["nprobe"] / 64, abs=1e-4)
    idx.use_gpu = False
    assert _independent_recall(idx, db) == pytest.approx(c["recall"], abs=1e-9)
    idx.set_nprobe(1)
    assert idx.calibrate(db)["nprobe"] <= c["nprobe"]  # the lists-based one: the smallest nprobe that passes


@pytest.mark.parametrize("kind", ["ivf-gemm", "ivf", "hnsw", "flat"])
def test_save_and_load_keep_the_calibration_record(kind, tmp_path):
    db, q = _data("few-clusters", n=6000)
    idx = FeatureIndex(64, kind=kind, nlist=32, nprobe=1, coarse_dim=16 if kind != "ivf" else 0, hnsw_m=8,
                       ef_search=4, use_gpu=False).add(db)
    loaded = FeatureIndex.load(idx.save(tmp_path / "sub" / f"{kind}.idx"), use_gpu=False)
    assert loaded.calibration == idx.calibration and loaded.recall == idx.recall
    assert loaded.describe() == idx.describe() and loaded.kind == idx.kind
    np.testing.assert_array_equal(loaded.search(q, 10)[1], idx.search(q, 10)[1])
    assert not list((tmp_path / "sub").glob("*.tmp"))


def test_plain_faiss_files_still_load_and_damaged_files_give_one_line(tmp_path):
    import faiss

    db, q = _data("few-clusters", n=3000)
    idx = FeatureIndex(64, kind="ivf", nlist=16, nprobe=2, use_gpu=False, recall_target=None).add(db)
    faiss.write_index(idx.index, str(tmp_path / "old.faiss"))  # what earlier versions wrote
    old = FeatureIndex.load(tmp_path / "old.faiss", use_gpu=False)
    assert (old.kind, old.nprobe, old.calibration) == ("ivf", 2, None)
    np.testing.assert_array_equal(old.search(q, 10)[1], idx.search(q, 10)[1])
    raw = FeatureIndex(64, kind="flat", use_gpu=False).add(db).save(tmp_path / "f.idx").read_bytes()
    (tmp_path / "cut.idx").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(CebenchError, match="cut.idx"):
        FeatureIndex.load(tmp_path / "cut.idx", use_gpu=False)
    with open(tmp_path / "other.npz", "wb") as fh:
        np.savez(fh, format=np.array("something-else"))
    with pytest.raises(CebenchError, match="other.npz.*unknown format"):
        FeatureIndex.load(tmp_path / "other.npz", use_gpu=False)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_exact_search_agrees_with_the_numpy_reference(metric):
    rng = np.random.default_rng(2)
    db = rng.standard_normal((5000, 24)).astype(np.float32)
    q = rng.standard_normal((37, 24)).astype(np.float32)
    s, i = exact_search(db, q, 7, metric, chunk=1024)  # several chunks
    rs, ri = brute_force_search(db, q, 7, metric=metric)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(s, rs, rtol=1e-4, atol=1e-4)
    half = exact_search(db.astype(np.float16), q, 7, metric, chunk=999)[1]
    assert np.mean([len(set(a) & set(b)) / 7 for a, b in zip(half, ri)]) > 0.95
    s3, i3 = exact_search(db[:3], q, 7, metric, query_batch=8)  # padded beyond N as faiss; query batches
    rs3, ri3 = brute_force_search(db[:3], q, 7, metric=metric)
    np.testing.assert_array_equal(i3, ri3)
    assert (i3[:, 3:] == -1).all() and np.isinf(s3[:, 3:]).all()


def test_drop_self_by_hand():
    ids = np.array([[5, 1, 2], [3, 9, 4], [0, 7, 7]])
    np.testing.assert_array_equal(_drop_self(ids, np.array([1, 8, 7])), [[5, 2], [3, 9], [0, 7]])
    np.testing.assert_allclose(recall_per_query(np.array([[1, 2, 9], [4, 5, 6]]), np.array([[2, 3], [5, 4]])),
                               [0.5, 1.0])


def test_retrieval_metrics_and_retrieve_report_the_index_recall(tmp_path):
    from PIL import Image

    from cebench.retrieval.cli import index_record_path, retrieve
    from cebench.retrieval.evaluate import retrieval_metrics

    db, q = _data("few-clusters", n=6000)
    labels = np.arange(len(db)) % 3
    m, _ = retrieval_metrics(q[:20], labels[:20], db, labels, k=10, index_kind="ivf-gemm", nlist=32, nprobe=1)
    assert m["index"].startswith("ivf-gemm nprobe ") and 0.95 <= m["index_recall"] <= 1
    m, _ = retrieval_metrics(q[:20], labels[:20], db, labels, k=10)
    assert (m["index"], m["index_recall"]) == ("flat", 1.0)
    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(photos / f"p{i}.png")
    out = retrieve(photos, [str(photos / "p0.png")], ["hog"], tmp_path / "out" / "grid.png", k=3, patch_size=32,
                   index_kind="hnsw", device="cpu", workers=1)
    rec = json.loads(index_record_path(out).read_text())["hog"]
    assert rec["patches"] == 3 * 2 * 3 and rec["calibration"]["k"] == 3  # 2 x 3 patches of 32 px per photo
    assert rec["recall_at_k"] == rec["calibration"]["recall"] and rec["index"].startswith(("hnsw", "flat"))


def test_the_report_names_the_index_and_its_lowest_recall(tmp_path):
    import pandas as pd

    from cebench.benchmarks.report import write_report

    ret = tmp_path / "ret"
    ret.mkdir()
    rows = [dict(method="hog", layer="hog", masked=False, p_at_1=50.0, p_at_10=40.0, map=30.0, chance=10.0, dim=324,
                 n_queries=20, n_database=900_000, index="ivf-gemm nprobe 12/512", index_recall=0.962),
            dict(method="random", layer="pool5", masked=False, p_at_1=40.0, p_at_10=30.0, map=20.0, chance=10.0,
                 dim=1024, n_queries=20, n_database=900_000, index="flat", index_recall=1.0)]
    pd.DataFrame(rows).to_csv(ret / "retrieval.csv", index=False)
    rep = write_report(tmp_path, inpaint_dir=tmp_path / "none", transfer_dirs=[], retrieval_dir=ret,
                       pretrain_dirs={}, run_info={"config": "x.yaml", "wall_minutes": 1.0})
    md = (rep / "results.md").read_text()
    assert ("Neighbour index: flat, ivf-gemm nprobe 12/512; `index_recall` is its recall@k measured on the database "
            "when it was built (1 = exact search), lowest 0.962.") in md
    assert "| 0.96 |" in md  # the column of the table


def test_the_one_thread_streams_give_what_one_stream_gives():
    """With two torch threads, ivf-gemm's assignment and search and exact_search run in two Python threads of
    one thread each (gemm_ivf.in_threads): the same lists, neighbours and scores as in one stream, and the
    caller's thread counts come back unchanged."""
    import faiss

    db, q = _data("many-clusters", n=6000)
    old = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            before = faiss.omp_get_max_threads()  # torch's OpenMP runtime, or faiss's own
            idx = FeatureIndex(64, kind="ivf-gemm", nlist=32, nprobe=4, coarse_dim=16, use_gpu=False,
                               recall_target=None).add(db)
            runs.append((idx.index.ids.numpy(), idx.index.offsets.numpy(), *idx.search(q, 10),
                         *exact_search(db, q, 10, chunk=1000)))
            assert torch.get_num_threads() == threads and faiss.omp_get_max_threads() == before
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*runs):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("n", [6400, 6439, 500])  # whole groups, a tail after the last group, too few groups
def test_row_topk_is_torch_topk(n):
    from cebench.features.gemm_ivf import row_topk

    scores = torch.from_numpy(np.random.default_rng(n).standard_normal((30, n)).astype(np.float32))
    values, cols = row_topk(scores, 11)
    top = torch.topk(scores, 11, dim=1)
    assert torch.equal(values, top.values) and torch.equal(cols, top.indices)
    scores[:, -1] = 100.0  # the best in the tail
    assert (row_topk(scores, 11)[1][:, 0] == n - 1).all()


def test_recall_with_ties_by_hand():
    """A duplicate of an exact neighbour found instead of it counts with ties, not by ids."""
    from cebench.benchmarks.perf.knn import recall_with_ties

    db = np.array([[1, 0], [1, 0], [0.6, 0.8], [0, 1], [-1, 0]], np.float32)  # rows 0 and 1 are equal
    q = np.array([[1, 0], [0, 1]], np.float32)
    ref = np.array([[0, 2], [3, 2]])  # exact top 2 (row 0 chosen of the tie 0 / 1)
    found = np.array([[1, 2], [3, 4]])  # the tie's other member; a wrong second neighbour
    assert recall_at_k(found, ref) == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert recall_with_ties(found, ref, db, q) == pytest.approx((2 / 2 + 1 / 2) / 2)
    assert recall_with_ties(np.array([[1, -1], [3, 2]]), ref, db, q) == pytest.approx((1 / 2 + 2 / 2) / 2)
