"""The few-shot ridge probe against the same regression solved in NumPy (float64), its sampling, and
`research probe --method fewshot` end to end."""
from __future__ import annotations

import json

import joblib
import numpy as np
import pytest

from research import cli
from research.errors import UserError
from research.probe import fewshot
from tests.test_probe_fixtures import mixture, write_feats


def reference(x, y, classes, l2):
    """big_vision's recipe spelled out in NumPy: unit rows, whitened on these rows, a bias column of 100,
    +-1 targets, W = (Z^T Z + l2 I)^-1 Z^T T (the primal system whatever the shape)."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    mean, std = u.mean(0), u.std(0) + 1e-5
    z = np.hstack([(u - mean) / std, np.full((len(x), 1), 100.0)])
    t = 2.0 * np.eye(classes)[y] - 1.0
    w = np.linalg.solve(z.T @ z + l2 * np.eye(z.shape[1]), z.T @ t)
    return w, lambda v: np.hstack([(v / np.linalg.norm(v, axis=1, keepdims=True) - mean) / std,
                                   np.full((len(v), 1), 100.0)]) @ w


@pytest.mark.parametrize("shots", [1, 3, 10])  # 5, 15 rows (fewer than the 17 columns: the dual system), 50
def test_matches_numpy(shots):
    x, y, _ = mixture(n=500, d=16, k=5, seed=shots, spread=0.6)
    x64, test = x.astype(np.float64), x[400:].astype(np.float64)
    rows = fewshot.sample(y[:400], 5, [shots], seed=0)[shots]
    w, decide = reference(x64[rows], y[rows], 5, fewshot.L2)
    model = fewshot.Ridge(*fewshot.fit(x[rows], y[rows], classes=5))
    np.testing.assert_allclose(model.w, w, rtol=2e-3, atol=2e-3 * np.abs(w).max())
    np.testing.assert_allclose(model.decision_function(x[400:]), decide(test), atol=2e-3)
    expected = decide(test).argmax(1)
    margin = np.sort(decide(test), axis=1)
    clear = margin[:, -1] - margin[:, -2] > 1e-3  # rows whose argmax float32 rounding cannot flip
    np.testing.assert_array_equal(model.predict(x[400:])[clear], expected[clear])


def test_sampling_nested_and_seeded():
    y = np.repeat(np.arange(4), [30, 30, 30, 3])  # class 3 has only 3 rows
    a = fewshot.sample(y, 4, [1, 5, 10], seed=7)
    again = fewshot.sample(y, 4, [1, 5, 10], seed=7)
    assert all(np.array_equal(a[n], again[n]) for n in (1, 5, 10))
    assert np.bincount(y[a[5]]).tolist() == [5, 5, 5, 3] and np.bincount(y[a[1]]).tolist() == [1, 1, 1, 1]
    assert set(a[1]) <= set(a[5]) <= set(a[10])
    assert not np.array_equal(a[10], fewshot.sample(y, 4, [10], seed=8)[10])


def test_run_averages_seeds():
    x, y, _ = mixture(n=600, d=32, k=4, spread=0.5)
    model, pred, record = fewshot.run(x[:400], y[:400], x[400:], y[400:], 4, shots=(1, 5), seeds=3)
    assert record["primary_shots"] == 5 and record["seeds"] == 3 and record["n_train"] == 20
    five = record["shots"]["5"]
    assert len(five["per_seed"]) == 3 and five["accuracy"] == pytest.approx(
        np.mean([s["accuracy"] for s in five["per_seed"]]))
    assert record["accuracy"] == five["accuracy"] and five["accuracy"] > record["shots"]["1"]["accuracy"] - 0.05
    assert five["per_seed"][0]["accuracy"] == pytest.approx(np.mean(pred == y[400:]))
    assert np.array_equal(model.predict(x[400:]), pred)


def test_cli(tmp_path):
    x, y, names = mixture(n=400, d=32, k=4, spread=0.5)
    feats = write_feats(tmp_path / "m.h5", x, y, names)
    out = tmp_path / "fs.json"
    assert cli.main(["probe", str(feats), "--method", "fewshot", "--shots", "2,5", "--seeds", "2",
                     "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["method"] == "fewshot" and result["metric"] == "accuracy" and result["l2"] == 1024.0
    assert set(result["shots"]) == {"2", "5"} and result["n_train"] == 20 and result["n_test"] == 100
    assert result["accuracy"] == result["shots"]["5"]["accuracy"] and result["mean_per_class_accuracy"] > 0.25
    assert joblib.load(tmp_path / "fs.model.joblib").predict(x[:3]).shape == (3,)


def test_refusals(tmp_path, capsys):
    x, y, names = mixture(n=80, d=8, k=2)
    feats = write_feats(tmp_path / "m.h5", x, y, names)
    assert cli.main(["probe", str(feats), "--method", "fewshot", "--standardize"]) == 2
    assert "--standardize" in capsys.readouterr().err
    with pytest.raises(UserError, match="--shots"):
        fewshot.run(x, y, x, y, 2, shots=(0,))
    multi = write_feats(tmp_path / "ml.h5", x, np.stack([y, 1 - y], 1), names)
    assert cli.main(["probe", str(multi), "--method", "fewshot"]) == 2
    assert "multi-label" in capsys.readouterr().err
