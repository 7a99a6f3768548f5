"""The JAX L-BFGS probe: the same optimum as scikit-learn at a given C, and within a point of the logreg probe
end to end (digits, and a 256-D Gaussian mixture); the sweep's grid and the refit on train + validation."""
from __future__ import annotations

import json

import joblib
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from research import cli, probe
from research.data import splits
from research.probe import lbfgs
from tests.test_probe_fixtures import digits, mixture, write_digits, write_feats


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("digits")
    feats = write_digits(tmp / "digits.h5")
    return {m: probe.run(feats, method=m, out=tmp / f"{m}.json") for m in ("logreg", "lbfgs")}, tmp


def objective(x, y, W, b, l2) -> float:
    """The lbfgs probe's objective in float64: mean cross-entropy + l2/2 * ||W||^2."""
    z = x.astype(np.float64) @ W + b
    z -= z.max(1, keepdims=True)
    ce = np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]
    return float(ce.mean() + 0.5 * l2 * np.sum(W ** 2))


def test_same_optimum_as_sklearn_at_fixed_C(digits_runs):
    """lam = 1 / (C * N) makes the two objectives proportional: scikit-learn at the lbfgs probe's C, fitted on
    the same rows (train + validation), reaches the same minimum and predicts the same. (The weights
    themselves may differ by several percent along flat directions of a weakly regularised problem.)"""
    from sklearn.linear_model import LogisticRegression

    runs, tmp = digits_runs
    result = runs["lbfgs"]
    x, y, names = digits()
    rows = splits.stratified(y, [f"img/{i:05d}.png" for i in range(len(y))], names, test=0.25, seed=0).train
    assert len(rows) == result["n_train"]
    x, y = x[rows], y[rows]
    with threadpool_limits(1):  # BLAS threads only slow a problem this small
        sk = LogisticRegression(C=result["best_C"], max_iter=10000, tol=1e-6).fit(x, y)
    model = joblib.load(tmp / "lbfgs.model.joblib")
    ours = objective(x, y, model.coef_.astype(np.float64), model.intercept_, result["best_l2"])
    theirs = objective(x, y, sk.coef_.T, sk.intercept_, result["best_l2"])
    print(f"objective at C={result['best_C']:.4g}: lbfgs {ours:.6f}, scikit-learn {theirs:.6f}")
    assert ours <= theirs * 1.001 and theirs <= ours * 1.01
    assert np.mean(model.predict(x) == sk.predict(x)) > 0.99


def test_digits_agreement(digits_runs):
    runs, _ = digits_runs
    print(f"digits: logreg {runs['logreg']['accuracy']:.4f}, lbfgs {runs['lbfgs']['accuracy']:.4f}")
    assert runs["lbfgs"]["accuracy"] > 0.9
    assert abs(runs["lbfgs"]["accuracy"] - runs["logreg"]["accuracy"]) <= 0.01


def test_sweep_grid_and_refit(digits_runs):
    runs, tmp = digits_runs
    result = runs["lbfgs"]
    assert len(lbfgs.L2_GRID) == 45 and lbfgs.L2_GRID[0] == pytest.approx(1e-6)
    assert lbfgs.L2_GRID[-1] == pytest.approx(1e5)
    assert np.isclose(lbfgs.L2_GRID, result["best_l2"], rtol=1e-6).sum() == 1
    assert len(result["sweep"]) == 45
    # The refit pools train and validation: as many samples as logreg trained on, validation among them.
    assert result["n_train"] == runs["logreg"]["n_train"] and result["n_test"] == runs["logreg"]["n_test"]
    assert 0.15 * result["n_train"] < result["n_validation"] < 0.25 * result["n_train"]
    assert result["best_C"] == pytest.approx(1 / (result["best_l2"] * result["n_train"]))
    assert "||W||^2" in result["objective"]
    model = joblib.load(tmp / "lbfgs.model.joblib")
    x, y, _ = digits()
    assert np.mean(model.predict(x) == y) > 0.9


def test_choose_breaks_ties_by_cross_entropy():
    assert lbfgs.choose([0.5, 0.9, 0.9, 0.7], [1.0, 0.4, 0.3, 0.2]) == 2


def test_padded_width():
    assert [lbfgs.padded_width(d) for d in (1, 64, 65, 2048, 4097)] == [64, 64, 128, 2048, 5120]


def test_mixture_agreement(tmp_path):
    x, y, names = mixture(n=2000, d=256, k=10, spread=0.2, seed=0)
    feats = write_feats(tmp_path / "mix.h5", x, y, names)
    acc = {}
    for m in ("logreg", "lbfgs"):
        assert cli.main(["probe", str(feats), "--method", m, "--test-size", "0.5",
                         "--out", str(tmp_path / f"{m}.json")]) == 0
        acc[m] = json.loads((tmp_path / f"{m}.json").read_text())["accuracy"]
    print(f"mixture: logreg {acc['logreg']:.4f}, lbfgs {acc['lbfgs']:.4f}")
    assert 0.6 < acc["logreg"] < 0.98  # hard enough for the regularisation to matter
    assert abs(acc["lbfgs"] - acc["logreg"]) <= 0.01


def test_standardize(digits_runs):
    """Same shapes as the digits run, so the compiled sweep is reused."""
    _, tmp = digits_runs
    result = probe.run(tmp / "digits.h5", method="lbfgs", standardize=True, out=tmp / "s.json")
    assert result["standardize"] is True and result["accuracy"] > 0.9
    assert joblib.load(tmp / "s.model.joblib").mean_ is not None
