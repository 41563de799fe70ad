import numpy as np
import pytest
import torch

from cebench.retrieval.evaluate import average_precision, precision_at_k, retrieval_metrics
from cebench.retrieval.patches import (
    PatchSet,
    centre_labels,
    crop_patches,
    encoder_inputs,
    patch_positions,
    sample_image_patches,
    split_queries,
)


def test_grid_positions_and_crops():
    c = patch_positions(10, 12, 4, stride=3)
    assert c.tolist() == [[0, 1], [0, 4], [0, 7], [3, 1], [3, 4], [3, 7], [6, 1], [6, 4], [6, 7]]
    img = torch.arange(3 * 10 * 12, dtype=torch.int32).reshape(3, 10, 12)
    p = crop_patches(img, c, 4)
    for (y, x), patch in zip(c.tolist(), p):
        assert torch.equal(patch, img[:, y : y + 4, x : x + 4])
    assert len(patch_positions(3, 12, 4)) == 0
    r = patch_positions(20, 20, 8, mode="random", count=5, generator=torch.Generator().manual_seed(0))
    assert r.shape == (5, 2) and (r >= 0).all() and (r <= 12).all()


def test_centre_labels_on_hand_made_mask():
    mask = torch.zeros(8, 8, dtype=torch.uint8)
    mask[0:4, 4:8] = 3  # object of class 3 top right
    mask[4:8, 0:4] = 255  # void bottom left
    mask[6, 6] = 7
    corners = torch.tensor([[0, 0], [0, 4], [4, 0], [4, 4]])  # 4x4 patches, centres at +2
    assert centre_labels(mask, corners, 4, "skip").tolist() == [0, 3, -1, 7]
    assert centre_labels(mask, corners, 4, "background").tolist() == [0, 3, 0, 7]
    img = torch.randint(0, 255, (3, 8, 8), dtype=torch.uint8)
    ps = sample_image_patches(img, mask, 5, 4, stride=4)
    assert ps.labels.tolist() == [0, 3, 7]  # the void-centred patch is dropped
    assert ps.image_ids.tolist() == [5, 5, 5]
    assert ps.boxes.tolist() == [[0, 0, 4, 4], [4, 0, 4, 4], [4, 4, 4, 4]]


def test_split_queries_are_object_patches_from_other_images():
    n = 10
    ps = PatchSet(torch.zeros(4 * n, 3, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 2, 0] * n),
                  torch.arange(n).repeat_interleave(4), torch.zeros(4 * n, 4, dtype=torch.long))
    q, db = split_queries(ps, 0.3, seed=0)
    assert (q.labels > 0).all() and len(q) == 3 * 2
    assert not set(q.image_ids.tolist()) & set(db.image_ids.tolist())
    assert len(db) == 7 * 4


def test_encoder_inputs_masking():
    p = torch.full((2, 3, 16, 16), 255, dtype=torch.uint8)
    x = encoder_inputs(p, 32, mask_centre=True)
    assert x.shape == (2, 3, 32, 32)
    assert (x[:, :, 8:24, 8:24] == 0).all() and (x[:, :, :8] > 0).all()


def test_precision_and_map_hand_computed():
    q = np.array([1, 2])
    nl = np.array([[1, 0, 1, 1], [0, 2, 0, 0]])
    assert precision_at_k(nl, q, 1) == pytest.approx(0.5)
    assert precision_at_k(nl, q, 4) == pytest.approx((3 / 4 + 1 / 4) / 2)
    # query 1: hits at ranks 1,3,4 -> (1 + 2/3 + 3/4) / 3; query 2: hit at rank 2 -> 1/2
    ap = average_precision(nl == q[:, None])
    np.testing.assert_allclose(ap, [(1 + 2 / 3 + 3 / 4) / 3, 0.5])
    # with 2 relevant items in the database but only one retrieved in the top 4: AP@4 / min(2, 4)
    np.testing.assert_allclose(average_precision(nl == q[:, None], np.array([3, 2]))[1], 0.25)


def test_retrieval_metrics_exact_case():
    db = np.eye(4, dtype=np.float32)
    db_labels = np.array([1, 1, 2, 0])
    qf = np.array([[1, 0.5, 0, 0], [0, 0, 1, 0.9]], dtype=np.float32)
    qf /= np.linalg.norm(qf, axis=1, keepdims=True)
    m, ids = retrieval_metrics(qf, np.array([1, 2]), db, db_labels, k=2)
    assert ids[:, :2].tolist() == [[0, 1], [2, 3]]
    assert m["p_at_1"] == 100.0 and m["p_at_10"] == pytest.approx(100 * (1 + 0.5) / 2)  # in %
    assert m["map"] == pytest.approx(100.0)
    assert m["chance"] == pytest.approx(100 * (2 / 4 + 1 / 4) / 2)


def test_image_smaller_than_the_patch_gives_no_patches():
    """A photo whose short side is below the patch size (a 117 px Caltech-101 photo, 128 px patches) adds
    nothing instead of stopping the retrieval benchmark."""
    img = torch.zeros(3, 117, 300, dtype=torch.uint8)
    ps = sample_image_patches(img, torch.zeros(117, 300, dtype=torch.uint8), 7, 128, stride=64)
    assert len(ps) == 0 and ps.patches.shape == (0, 3, 128, 128)
    ok = sample_image_patches(torch.zeros(3, 128, 300, dtype=torch.uint8), None, 7, 128, stride=64)
    assert len(ok) == 3 and ok.patches.shape == (3, 3, 128, 128)
