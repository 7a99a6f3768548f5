"""The probe's speed-ups change no answer: fits in the row space of wide features stop where scikit-learn's fits
on all D features stop and agree with them (chosen C, fold scores, predictions), the parallel (fold, C) fits
reproduce GridSearchCV, the vmapped lambda batches agree with the warm-started sweep, and every long step shows
progress."""
from __future__ import annotations

import json

import numpy as np
import pytest

from research import cli, probe
from research.probe import lbfgs, logreg, progress, rowspace, softmax
from tests.test_probe_fixtures import write_feats

GRID = np.logspace(-4, -1, 4)
L2 = np.logspace(-2, 1, 4)  # strengths where float32 L-BFGS converges well inside TOL (not the weakest ones)


def wide(n, d=500, k=6, seed=0, spread=4.0):
    """N << D Gaussian classes (every wide problem is separable; the spread keeps the choice of C stable)."""
    means = np.random.default_rng(0).normal(size=(k, d)) * (spread / np.sqrt(d))
    y = np.arange(n) % k
    noise = np.random.default_rng(seed + 1).normal(size=(n, d))
    return (means[y] + noise + 0.5).astype(np.float32), y


@pytest.fixture(scope="module")
def data():
    """(train, test, validation) parts of one wide problem, classes of equal size (no prior to tip a tie)."""
    return wide(180), wide(120, seed=1), wide(42, seed=2)


def test_row_space_coordinates():
    """Z = X V for V an orthonormal basis of the rows' span, for the rows and for others; W = V W_z."""
    x, _ = wide(40, d=300)
    x[5] = 2 * x[3] - x[7]  # rank 39
    other, _ = wide(7, d=300, seed=3)
    space = rowspace.fit(rowspace.gram(x))
    assert space.rank == 39
    v = space.lift(x, np.eye(39))  # (D, r): the basis itself
    np.testing.assert_allclose(v.T @ v, np.eye(39), atol=1e-6)
    np.testing.assert_allclose(x @ v @ v.T, x, atol=1e-5 * np.abs(x).max())
    np.testing.assert_allclose(space.z, x @ v, atol=1e-5 * np.abs(x).max())
    np.testing.assert_allclose(space.project(rowspace.gram(other, x)), other @ v, atol=1e-5 * np.abs(x).max())
    assert rowspace.wide(1000, 400) and not rowspace.wide(1000, 600)


def relu_features(n, d=2000, k=5, seed=0):
    """Non-negative, heavy-tailed columns of mixed scale, as a CNN's flattened activations: fits that take
    tens of iterations, where the stopping rule decides where they end."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(0).normal(size=(k, d)) * (1.5 / np.sqrt(d))
    y = np.arange(n) % k
    scale = np.random.default_rng(1).uniform(0.1, 3.0, size=d)
    return (np.maximum(means[y] + rng.normal(size=(n, d)), 0) ** 2 * scale).astype(np.float32), y


@pytest.mark.parametrize("classes", [2, 5])
def test_row_space_fits_stop_where_scikit_learn_stops(classes):
    """Same iterations and weights as LogisticRegression on all D features, binomial and multinomial, on
    float32 features (per-sample losses kept in float32, as scikit-learn keeps them). Its own estimator on the
    row-space coordinates stops elsewhere: the test the module exists for. (Below C = 0.01 on this problem
    scikit-learn's own iteration count moves with the BLAS thread count, so those are not compared.)"""
    from sklearn.linear_model import LogisticRegression

    x, y = relu_features(150, k=classes)
    other, _ = relu_features(100, k=classes, seed=1)
    space = rowspace.fit(rowspace.gram(x))
    basis = softmax.Basis(x, None, space.coef)
    moved = 0
    for c in (1e-2, 1.0, 1e3):
        reference = LogisticRegression(C=c, max_iter=logreg.MAX_ITER).fit(x, y)
        ours = softmax.fit(space.z, y, classes, c, basis, logreg.TOL, logreg.MAX_ITER, np.float32)
        assert ours.n_iter == reference.n_iter_[0] and ours.converged
        coef = space.lift(x, ours.coef.T).T
        np.testing.assert_allclose(coef, reference.coef_, atol=1e-3 * np.abs(reference.coef_).max())
        z_other = space.project(rowspace.gram(other, x))
        np.testing.assert_array_equal(ours.predict(z_other), reference.predict(other))
        moved += LogisticRegression(C=c, max_iter=logreg.MAX_ITER).fit(space.z, y).n_iter_[0] != ours.n_iter
    assert moved
    short = softmax.fit(space.z, y, classes, 1.0, basis, logreg.TOL, 3, np.float32)
    assert short.n_iter == 3 and not short.converged  # where scikit-learn warns that it did not converge


@pytest.mark.parametrize("standardize", [False, True])
def test_logreg_row_space_is_gridsearchcv(data, standardize):
    """The whole search against GridSearchCV's own cold fits on all D features, on the same float32 features
    and folds: the same C and predictions, the same fold scores but for at most one held-out sample (at strong
    regularisation the held-out decision values are small enough for rounding to flip one)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    (x, y), (xt, yt), _ = data
    fast, record = logreg.fit(x, y, standardize=standardize, seed=0, grid=GRID, jobs=1)
    assert record["paths"]["tol"] == logreg.TOL and not record["paths"]["warm_start"]
    assert record["paths"]["row_space"]
    assert record["paths"]["rank"] == [144 - standardize] * 5 + [180 - standardize]  # centring costs one
    steps = [("scaler", StandardScaler())] if standardize else []
    search = GridSearchCV(Pipeline(steps + [("clf", LogisticRegression(max_iter=logreg.MAX_ITER))]),
                          {"clf__C": list(GRID)}, cv=StratifiedKFold(5, shuffle=True, random_state=0))
    search.fit(x, y)
    assert record["best_C"] == search.best_params_["clf__C"]
    np.testing.assert_allclose(record["cv_accuracy"], search.cv_results_["mean_test_score"], atol=1 / len(y) + 1e-12)
    assert 0.5 < np.mean(fast.predict(xt) == yt) < 0.99
    np.testing.assert_array_equal(fast.predict(xt), search.predict(xt))
    scale = np.abs(search.decision_function(xt)).max()
    np.testing.assert_allclose(fast.decision_function(xt), search.decision_function(xt), atol=1e-4 * scale)


def test_logreg_row_space_binary_is_gridsearchcv():
    """Two classes: scikit-learn's binomial model (one weight row), refitted into an ordinary estimator."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    x, y = relu_features(100, d=800, k=2)
    xt, _ = relu_features(60, d=800, k=2, seed=1)
    fast, record = logreg.fit(x, y, grid=GRID[1:], jobs=1)
    search = GridSearchCV(LogisticRegression(max_iter=logreg.MAX_ITER), {"C": list(GRID[1:])},
                          cv=StratifiedKFold(5, shuffle=True, random_state=0)).fit(x, y)
    assert record["paths"]["row_space"] and record["best_C"] == search.best_params_["C"]
    assert fast[-1].coef_.shape == (1, 800)
    np.testing.assert_array_equal(fast.predict(xt), search.predict(xt))


def test_row_space_fitted_on_each_folds_training_rows(data, monkeypatch):
    (x, y), _, (xv, yv) = data
    seen = []
    fit = rowspace.fit
    monkeypatch.setattr(rowspace, "fit", lambda g: seen.append(g.shape) or fit(g))
    for standardize in (True, False):  # a Gram per fold; blocks of one Gram
        logreg.fit(x, y, standardize=standardize, grid=GRID[:2], jobs=1)
        assert seen == [(144, 144)] * 5 + [(180, 180)]
        seen.clear()
    lbfgs.fit(x, y, xv, yv, grid=L2, reduce=True)
    assert seen == [(180, 180), (222, 222)]


def test_parallel_fits_same_answer_and_progress(data):
    """Two worker processes tick the parent's bar; the fold scores are those of the serial path."""
    (x, y), _, _ = data
    bars = []

    def tracked(total, desc, unit="fit"):
        bars.append(progress.bar(total, desc, unit, enabled=False))
        return bars[-1]

    _, serial = logreg.fit(x, y, grid=GRID[1:4], jobs=1)
    _, parallel = logreg.fit(x, y, grid=GRID[1:4], jobs=2, progress=tracked)
    assert parallel["paths"]["processes"] == 2 and serial["paths"]["processes"] == 1
    assert parallel["cv_accuracy"] == serial["cv_accuracy"] and parallel["best_C"] == serial["best_C"]
    assert bars[0].count == 5 * 3 + 1 == parallel["fits"]


def test_lbfgs_row_space_and_batches_agree(data):
    (x, y), (xt, yt), (xv, yv) = data
    runs = {name: lbfgs.fit(x, y, xv, yv, grid=L2, **kw)
            for name, kw in {"direct": dict(reduce=False), "row space": dict(reduce=True),
                             "batched": dict(reduce=True, batch=2)}.items()}
    (direct, d), (reduced, r), (batched, b) = runs.values()
    assert r["paths"]["rank"] == [180, 222] and d["paths"]["rank"] is None
    assert b["paths"]["lambda_batch"] == 2 and not b["paths"]["warm_start"]
    assert d["best_l2"] == r["best_l2"] == b["best_l2"]
    for other in (r, b):
        np.testing.assert_allclose([s["val_ce"] for s in other["sweep"]], [s["val_ce"] for s in d["sweep"]],
                                   rtol=5e-3)
    for model in (reduced, batched):
        assert np.mean(model.predict(xt) == direct.predict(xt)) >= 0.99
        np.testing.assert_allclose(model.decision_function(xt), direct.decision_function(xt),
                                   atol=0.01 * np.abs(direct.decision_function(xt)).max())


def test_cli_reports_paths_time_and_progress(tmp_path, capsys):
    x, y = wide(160, d=700)  # the default grid: 86 fits
    feats = write_feats(tmp_path / "wide.h5", x, y, [f"c{i}" for i in range(6)])
    assert cli.main(["probe", str(feats), "--out", str(tmp_path / "w.json")]) == 0
    out, err = capsys.readouterr()
    assert "logreg: C x fold" in err and f"{5 * len(logreg.C_GRID) + 1}/{5 * len(logreg.C_GRID) + 1}" in err
    result = json.loads((tmp_path / "w.json").read_text())
    assert f"row space 700 -> {result['n_train']} dims" in out and "warm starts" not in out
    ranks = result["paths"]["rank"]
    assert result["paths"]["row_space"] and len(ranks) == 6 and ranks[-1] == result["n_train"] > max(ranks[:5])
    assert result["fits"] == 86 and 0 < result["cv_time_s"] <= result["fit_time_s"]
    probe.run(feats, out=tmp_path / "q.json", show_progress=False)
    assert "C x fold" not in capsys.readouterr().err
