import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from cebench.transfer.metrics import (
    classification_ap,
    confusion_matrix,
    iou_per_class,
    mean_ap,
    mean_iu,
    pixel_accuracy,
    precision_recall,
    voc_ap,
)


def test_voc_ap_hand_case_11_point_and_all_point():
    # ranking: + - + - -  (2 positives)
    rec, prec = precision_recall([0.9, 0.8, 0.7, 0.6, 0.5], [1, -1, 1, -1, -1])
    np.testing.assert_allclose(rec, [0.5, 0.5, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(prec, [1.0, 0.5, 2 / 3, 0.5, 0.4])
    # all-point: 0.5 * 1 + 0.5 * 2/3
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(0.5 + 1 / 3)
    # 11-point: t = 0..0.5 (6 thresholds) -> 1.0; t = 0.6..1.0 (5) -> 2/3
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11)


def test_voc_ap_perfect_and_worst():
    rec, prec = precision_recall([3, 2, 1], [1, 1, -1])
    assert voc_ap(rec, prec, True) == pytest.approx(1.0)
    assert voc_ap(rec, prec, False) == pytest.approx(1.0)
    rec, prec = precision_recall([3, 2, 1], [-1, -1, 1])
    assert voc_ap(rec, prec, False) == pytest.approx(1 / 3)


def test_all_point_ap_against_sklearn_on_untied_scores():
    """sklearn's AP is the non-interpolated sum of dR * P; VOC's all-point AP uses the precision
    envelope. They meet exactly when the precision at successive hits never rises; otherwise the
    VOC value is larger. Both facts are checked on random untied rankings."""
    rng = np.random.default_rng(0)
    met = 0
    for _ in range(200):
        n = int(rng.integers(5, 40))
        y = rng.integers(0, 2, n)
        y[0] = 1
        s = rng.permutation(n).astype(float) + rng.random(n) * 0.1  # untied
        rec, prec = precision_recall(s, np.where(y > 0, 1, -1))
        hits = prec[np.diff(np.concatenate(([0.0], rec))) > 0]
        ours, ref = voc_ap(rec, prec, use_07_metric=False), average_precision_score(y, s)
        if np.all(np.diff(hits) <= 1e-12):
            met += 1
            assert ours == pytest.approx(ref)
        else:
            assert ours >= ref - 1e-12
        # sklearn on the envelope: replace each hit's precision by the max precision from there on
        env = np.maximum.accumulate(prec[::-1])[::-1]
        drec = np.diff(np.concatenate(([0.0], rec)))
        assert ours == pytest.approx(float(np.sum(drec * env)))
    assert met >= 3


def test_classification_ap_ignores_difficult():
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.1, 0.9]])
    labels = np.array([[1, -1], [0, -1], [1, 1], [-1, -1]])
    aps = classification_ap(scores, labels, use_07_metric=False)
    # class 0: the difficult image (rank 2) is removed -> + + -  -> AP 1
    assert aps[0] == pytest.approx(1.0)
    # class 1: ranking by score: img3 (-), img2 (+), ... -> precision 1/2 at recall 1
    assert aps[1] == pytest.approx(0.5)
    # a class without positives is NaN and excluded from the mean
    aps = classification_ap(scores, np.array([[1, -1]] * 4))
    assert np.isnan(aps[1]) and mean_ap(aps) == pytest.approx(1.0)
    # difficult handled the same as removing the row
    same = classification_ap(np.delete(scores, 1, 0), np.delete(labels, 1, 0), use_07_metric=False)
    np.testing.assert_allclose(same[0], 1.0)


def test_classification_ap_matches_sklearn_per_class():
    rng = np.random.default_rng(1)
    labels = np.where(rng.random((50, 4)) < 0.4, 1, -1)
    labels[0] = 1
    scores = rng.random((50, 4))
    aps = classification_ap(torch.tensor(scores), torch.tensor(labels), use_07_metric=False)
    ref = [average_precision_score(labels[:, c] > 0, scores[:, c]) for c in range(4)]
    assert np.all(aps >= np.array(ref) - 1e-12)
    # make every class's ranking "monotone" (positives first then negatives, one swap): defs meet
    scores = np.where(labels > 0, 1.0, 0.0) + rng.random((50, 4)) * 0.01
    scores[1, 0] = 0.5  # a negative between positives for class 0 (if image 1 is negative)
    aps = classification_ap(scores, labels, use_07_metric=False)
    ref = [average_precision_score(labels[:, c] > 0, scores[:, c]) for c in range(4)]
    np.testing.assert_allclose(aps, ref)


def test_confusion_matrix_and_mean_iu_hand_case():
    target = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 0, 2]])
    conf = confusion_matrix(pred, target, num_classes=3)
    expected = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    assert torch.equal(conf, expected)
    # IU: class0 1/(2+2-1)=1/3, class1 2/(2+3-2)=2/3, class2 0/(1+0-0)=0
    np.testing.assert_allclose(iou_per_class(conf), [1 / 3, 2 / 3, 0.0])
    assert mean_iu(conf) == pytest.approx(1 / 3)
    assert pixel_accuracy(conf) == pytest.approx(3 / 5)
    # a class absent from truth and prediction is excluded
    conf4 = confusion_matrix(pred, target, num_classes=4)
    assert np.isnan(iou_per_class(conf4)[3]) and mean_iu(conf4) == pytest.approx(1 / 3)


def test_confusion_matrix_matches_sklearn():
    from sklearn.metrics import confusion_matrix as sk_conf

    rng = np.random.default_rng(2)
    t = rng.integers(0, 5, 500)
    p = rng.integers(0, 5, 500)
    t[::7] = 255
    conf = confusion_matrix(torch.tensor(p), torch.tensor(t), 5)
    keep = t != 255
    np.testing.assert_array_equal(conf.numpy(), sk_conf(t[keep], p[keep], labels=range(5)))
