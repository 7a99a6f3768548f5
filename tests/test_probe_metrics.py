"""The probe metrics against scikit-learn and a straightforward VOC 2007 11-point AP written out here."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from research.errors import UserError
from research.probe import metrics


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", range(5))
def test_mean_per_class_accuracy_is_balanced_accuracy(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 7, size=300)
    y[y == 3] = 4  # a class never true, still predicted: both leave it out
    pred = np.where(rng.random(300) < 0.6, y, rng.integers(0, 7, size=300))
    assert metrics.mean_per_class_accuracy(y, pred) == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert metrics.accuracy(y, pred) == pytest.approx(np.mean(y == pred))


def test_mean_per_class_accuracy_weights_classes_equally():
    y = np.array([0] * 9 + [1])
    pred = np.zeros(10, int)  # all of class 0 right, the one of class 1 wrong
    assert metrics.accuracy(y, pred) == 0.9 and metrics.mean_per_class_accuracy(y, pred) == 0.5


def reference_ap(scores, gt):
    """The devkit's VOCevalcls steps, written out: gt 1 / 0 / -1 (ignored kept in the ranking but counted
    neither as true nor as false positive), precision and recall along the ranking, then per recall level the
    largest precision at a recall at least that level, NaN precisions (before any counted row) skipped."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # sorted() is stable: ties keep row order
    n_pos = sum(1 for g in gt if g == 1)
    tp = fp = 0
    precision, recall = [], []
    for i in order:
        tp += gt[i] == 1
        fp += gt[i] == 0
        precision.append(tp / (tp + fp) if tp + fp else float("nan"))
        recall.append(tp / n_pos)
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
        reached = [p for p, r in zip(precision, recall) if r >= t and p == p]
        ap += (max(reached) if reached else 0.0) / 11
    return ap


def test_voc07_ap_by_hand():
    # ranked: +, -, +, -  -> precision 1, 1/2, 2/3, 1/2 at recall 1/2, 1/2, 1, 1
    # levels 0..0.5 (six of them) reach precision 1; 0.6..1 (five) reach 2/3: (6 + 5 * 2/3) / 11 = 28/33
    scores, gt = np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])
    assert metrics.voc07_ap(scores, gt) == pytest.approx(28 / 33)
    # an ignored row ranked first changes nothing; a class without positives is NaN
    assert metrics.voc07_ap(np.r_[1.0, scores], np.r_[-1, gt]) == pytest.approx(28 / 33)
    assert np.isnan(metrics.voc07_ap(scores, np.array([0, 0, -1, 0])))
    # perfect ranking: 1; both positives last: precision 1/3 at recall 1/2, 1/2 at recall 1, so every level's
    # best is 1/2 (the interpolation takes the best precision at any recall at least the level)
    assert metrics.voc07_ap(scores, np.array([1, 1, 0, 0])) == pytest.approx(1.0)
    assert metrics.voc07_ap(scores, np.array([0, 0, 1, 1])) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(4))
def test_voc07_map_matches_reference(seed):
    rng = np.random.default_rng(seed)
    n, c = 120, 6
    gt = (rng.random((n, c)) < 0.25).astype(int)
    gt[rng.random((n, c)) < 0.1] = -1
    scores = gt * rng.normal(1.0, 1.0, (n, c)) + rng.normal(size=(n, c))
    scores[:20] = np.round(scores[:20], 1)  # some equal scores, which the stable ranking orders by row
    gt[:, 5] = np.where(gt[:, 5] == 1, 0, gt[:, 5])  # a class with no positive row: left out of the mean
    mean, aps = metrics.voc07_map(scores, gt)
    expected = [reference_ap(list(scores[:, j]), list(gt[:, j])) for j in range(c - 1)]
    np.testing.assert_allclose(aps[:-1], expected, rtol=1e-12)
    assert np.isnan(aps[-1]) and mean == pytest.approx(np.mean(expected))


def test_multi_label_scores():
    gt = np.array([[1, 0], [0, 1], [1, -1], [0, 0]])
    pred = np.array([[1, 0], [0, 0], [1, 1], [0, 0]])  # row 1 misses class 1; row 2's class 1 is ignored
    out = metrics.multi_label(gt, pred.astype(float), pred, ["cat", "dog"])
    assert out["accuracy"] == 0.75 and out["mean_per_class_accuracy"] is None
    assert out["per_class"]["cat"]["ap"] == pytest.approx(1.0) and out["per_class"]["dog"]["recall"] == 0.0
    assert out["per_class"]["dog"]["support"] == 1 and "mAP" in out["report_text"]


def test_primary_metric():
    assert metrics.primary(None, multilabel=False) == "accuracy"
    assert metrics.primary(None, multilabel=True) == "voc07_map"
    assert metrics.primary("mean_per_class_accuracy", multilabel=False) == "mean_per_class_accuracy"
    with pytest.raises(UserError, match="multi-label"):
        metrics.primary("mean_per_class_accuracy", multilabel=True)
    with pytest.raises(UserError, match="single-label"):
        metrics.primary("voc07_map", multilabel=False)
