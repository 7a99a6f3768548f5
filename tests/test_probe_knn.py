"""The kNN probe against scikit-learn's brute-force cosine neighbours with the same votes, its tie rules, and
`research probe --method knn` end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from research import cli
from research.errors import UserError
from research.probe import knn
from tests.test_probe_fixtures import mixture, write_feats


def reference(train_x, train_y, test_x, classes, k, temperature):
    """sklearn's exact cosine neighbours, DINO's exp(similarity / T) votes and the documented majority rule."""
    dist, idx = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(train_x).kneighbors(test_x)
    sim = 1.0 - dist
    weighted = np.zeros((len(test_x), classes))
    counts = np.zeros((len(test_x), classes))
    summed = np.zeros((len(test_x), classes))
    for row in range(len(test_x)):
        for s, j in zip(sim[row], idx[row]):
            weighted[row, train_y[j]] += np.exp(s / temperature)
            counts[row, train_y[j]] += 1
            summed[row, train_y[j]] += s
    majority = []
    for row in range(len(test_x)):
        tied = [c for c in range(classes) if counts[row, c] == counts[row].max()]
        majority.append(max(tied, key=lambda c: (summed[row, c], -c)))
    return idx, weighted.argmax(1), np.array(majority)


@pytest.mark.parametrize("k,temperature", [(20, 0.07), (5, 0.5), (1, 0.07)])
def test_matches_sklearn(k, temperature):
    rng = np.random.default_rng(k)
    x, y, _ = mixture(n=400, d=24, k=6, seed=k, spread=0.6)
    x = x * rng.uniform(0.5, 3.0, size=(len(x), 1))  # row norms differ: only the direction may count
    train_x, train_y, test_x = x[:300], y[:300], x[300:]
    out = knn.predict(train_x, train_y, test_x, classes=6, k=k, temperature=temperature, chunk=32)
    idx, weighted, majority = reference(train_x.astype(np.float64), train_y, test_x.astype(np.float64), 6, k,
                                        temperature)
    np.testing.assert_array_equal(out["neighbours"], idx)
    np.testing.assert_array_equal(out["weighted"], weighted)
    np.testing.assert_array_equal(out["majority"], majority)
    assert 0.3 < np.mean(out["weighted"] == y[300:]) < 1.0  # a real problem, neither trivial nor hopeless


def test_ties():
    e = np.eye(4, dtype=np.float32)
    # equally similar rows: the lower training row first; equal weighted votes: the lower class
    out = knn.predict(np.stack([e[0], e[0], e[1]]), np.array([2, 1, 0]), e[:1], classes=3, k=2)
    assert out["neighbours"].tolist() == [[0, 1]] and out["weighted"].tolist() == [1]
    # majority: 2 votes each; class 2's neighbours are the nearer ones, so it wins over the lower class 0
    near, far = np.array([1.0, 0.1, 0, 0], np.float32), np.array([1.0, 0.9, 0, 0], np.float32)
    train = np.stack([far, near, far, near])
    out = knn.predict(train, np.array([0, 2, 0, 2]), e[:1], classes=3, k=4)
    assert out["majority"].tolist() == [2]


def test_multilabel_vote_shares():
    e = np.eye(3, dtype=np.float32)
    train = np.stack([e[0], e[0] + 0.1 * e[1], e[1]])
    targets = np.array([[1, 0], [1, 1], [0, -1]])
    out = knn.predict(train, targets, e[:1], classes=2, k=2, temperature=1.0)
    sims = train[:2] @ e[0] / np.linalg.norm(train[:2], axis=1)
    w = np.exp(sims)
    np.testing.assert_allclose(out["weighted"][0], [1.0, w[1] / w.sum()], rtol=1e-6)
    np.testing.assert_allclose(out["majority"][0], [1.0, 0.5])


def test_bad_k():
    with pytest.raises(UserError, match="--k 5"):
        knn.predict(np.ones((3, 2)), np.zeros(3, int), np.ones((1, 2)), classes=1, k=5)


def test_cli(tmp_path):
    x, y, names = mixture(n=400, d=32, k=4)
    feats = write_feats(tmp_path / "m.h5", x, y, names)
    out = tmp_path / "knn.json"
    assert cli.main(["probe", str(feats), "--method", "knn", "--k", "10", "--metric", "mean_per_class_accuracy",
                     "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["method"] == "knn" and result["k"] == 10 and result["temperature"] == 0.07
    assert result["metric"] == "mean_per_class_accuracy"
    assert result["metric_value"] == result["mean_per_class_accuracy"]
    assert 0.25 < result["accuracy"] <= 1 and set(result["majority"]) >= {"accuracy", "mean_per_class_accuracy"}
    assert result["n_train"] + result["n_test"] == 400 and set(result["per_class"]) == set(names)
    assert result["versions"]["jax"] and result["time_s"] > 0
    assert sorted(result["files"]) == ["confusion", "json"]  # no model file: kNN's model is the training set


def test_multi_tap_ranked_by_metric(tmp_path, capsys):
    x, y, names = mixture(n=400, d=32, k=4)
    noise = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    feats = write_feats(tmp_path / "taps.h5", {"stage1": noise, "stage2": x}, y, names)
    out = tmp_path / "taps.json"
    assert cli.main(["probe", str(feats), "--method", "knn", "--metric", "mean_per_class_accuracy",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mean/class" in printed and "k=20" in printed and "stage1" in printed
    result = json.loads(out.read_text())
    assert result["best_tap"] == "stage2" and result["metric_value"] == max(
        t["mean_per_class_accuracy"] for t in result["taps"])
    assert (tmp_path / "taps.depth.png").is_file()
