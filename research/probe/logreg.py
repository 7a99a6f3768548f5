"""The scikit-learn probe: multinomial `LogisticRegression` (lbfgs) with C chosen by stratified K-fold
cross-validation on the training part only; the test part is never seen until the final score.

With more than two classes, scikit-learn's lbfgs solver fits the multinomial (softmax) model. Its objective is
C * sum CE + 1/2 * ||W||^2, the intercept unpenalised; see `research.probe.lbfgs` for the mapping to l2.

The choice is GridSearchCV's (the mean fold accuracy, ties to the smaller C; the same folds), computed faster
without changing it: each fold fits in the row space of its training rows when the features are wide
(`research.probe.rowspace`), walks the C grid upwards warm-started from the previous C's weights, and the folds
run in parallel processes when there are cores to spare. The refit on all the training part maps its weights
back to the D features, so the saved model is an ordinary scikit-learn Pipeline.
"""
from __future__ import annotations

import os
import time
import warnings

import numpy as np

from research.errors import UserError
from research.probe import progress as progress_
from research.probe import rowspace

C_GRID = np.logspace(-4, 4, 17)  # half a decade apart
FOLDS = 5
MAX_ITER = 5000
SMALL = 4_000_000  # below this many feature values, BLAS threads (and worker processes) cost more than they save


def fit(x, y, standardize: bool = False, seed: int = 0, grid=C_GRID, folds: int = FOLDS, reduce=None,
        warm_start: bool = True, jobs=None, progress=None):
    """Choose C by stratified K-fold on (x, y), refit on all of it; (fitted Pipeline, record).

    reduce: fit in the training rows' span (None: when the features are wide); jobs: fold processes (None: one
    per spare core for large problems); progress: a `progress.bar`-like factory (None: silent)."""
    from sklearn.model_selection import StratifiedKFold

    folds = _folds(y, folds)
    grid = np.sort(np.asarray(grid, np.float64))  # strong to weak regularisation: each fit warm-starts the next
    parts = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y))
    if reduce is None:
        reduce = rowspace.wide(x.shape[1], min(len(t) for t, _ in parts))
    jobs = _jobs(x, folds) if jobs is None else max(1, min(int(jobs), folds))
    start = time.perf_counter()
    with (progress or progress_.quiet)(folds * len(grid) + 1, "logreg: C x fold", "fit") as bar:
        args = (x, y, grid, standardize, reduce, warm_start)
        if jobs > 1:
            from joblib import Parallel, delayed
            tick = bar.remote()
            paths = Parallel(n_jobs=jobs)(delayed(_path)(*args, t, v, tick) for t, v in parts)
        else:
            paths = [_path(*args, t, v, bar.update) for t, v in parts]
        cv_time = time.perf_counter() - start
        accuracy = np.mean([p["accuracy"] for p in paths], axis=0)
        best = int(np.flatnonzero(accuracy == accuracy.max())[0])
        model, refit = _refit(x, y, grid[best], standardize, reduce)
        bar.update()
    record = {"best_C": float(grid[best]), "C_grid": [float(c) for c in grid], "folds": folds,
              "cv_accuracy": [float(a) for a in accuracy],
              "best_C_at_grid_edge": best in (0, len(grid) - 1),
              "convergence_warnings": sum(p["warnings"] for p in paths) + refit["warnings"],
              "fits": folds * len(grid) + 1, "cv_time_s": cv_time, "refit_time_s": refit["seconds"],
              "paths": {"row_space": bool(reduce), "dim": int(x.shape[1]),
                        "rank": [p["rank"] for p in paths] + [refit["rank"]] if reduce else None,
                        "warm_start": bool(warm_start), "processes": jobs,
                        "iterations": int(sum(p["iterations"] for p in paths) + refit["iterations"])}}
    return model, record


def _jobs(x, folds: int) -> int:
    """One process per core up to the folds, for problems big enough to pay for starting them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(folds, cores) if x.size >= SMALL else 1


def _classifier(**kw):
    from sklearn.linear_model import LogisticRegression
    return LogisticRegression(solver="lbfgs", max_iter=MAX_ITER, **kw)


def _transform(x_fit, standardize: bool, reduce: bool):
    """(scaler or None, basis or None) fitted on x_fit, and the function applying both."""
    scaler = basis = None
    if standardize:
        from sklearn.preprocessing import StandardScaler
        scaler = StandardScaler().fit(x_fit)
    if reduce:
        basis = rowspace.basis(scaler.transform(x_fit) if scaler else x_fit)

    def apply(a):
        a = scaler.transform(a) if scaler else a
        return rowspace.project(a, basis) if reduce else a
    return scaler, basis, apply


def _path(x, y, grid, standardize, reduce, warm_start, train, val, tick) -> dict:
    """One fold: fit every C in order on the training rows, score each on the held-out rows."""
    from threadpoolctl import threadpool_limits

    _, basis, apply = _transform(x[train], standardize, reduce)
    z, zv = apply(x[train]), apply(x[val])
    clf = _classifier(warm_start=warm_start)
    accuracy, iterations = [], 0
    with _warnings() as caught, threadpool_limits(1 if z.size < SMALL else None):
        for c in grid:
            clf.set_params(C=float(c)).fit(z, y[train])
            accuracy.append(float(np.mean(clf.predict(zv) == y[val])))
            iterations += int(np.max(clf.n_iter_))
            tick(1)
    return {"accuracy": accuracy, "iterations": iterations, "warnings": _count(caught),
            "rank": int(basis.shape[1]) if reduce else None}


def _refit(x, y, c: float, standardize: bool, reduce: bool):
    """The final model on all of (x, y): a Pipeline over the original D features (weights mapped back)."""
    from sklearn.pipeline import Pipeline
    from threadpoolctl import threadpool_limits

    start = time.perf_counter()
    scaler, basis, apply = _transform(x, standardize, reduce)
    z = apply(x)
    clf = _classifier(C=float(c))
    with _warnings() as caught, threadpool_limits(1 if z.size < SMALL else None):
        clf.fit(z, y)
    if reduce:  # W = V W_z: predictions on any row equal those of the fit in the row space
        clf.coef_ = (clf.coef_ @ basis.T.astype(np.float64)).astype(clf.coef_.dtype)
        clf.n_features_in_ = x.shape[1]
    model = Pipeline(([("scaler", scaler)] if scaler else []) + [("clf", clf)])
    return model, {"seconds": time.perf_counter() - start, "iterations": int(np.max(clf.n_iter_)),
                   "warnings": _count(caught), "rank": int(basis.shape[1]) if reduce else None}


class _warnings(warnings.catch_warnings):
    """Record ConvergenceWarnings (counted into the JSON) instead of printing them."""

    def __init__(self):
        super().__init__(record=True)

    def __enter__(self):
        from sklearn.exceptions import ConvergenceWarning
        caught = super().__enter__()
        warnings.simplefilter("always", ConvergenceWarning)
        return caught


def _count(caught) -> int:
    from sklearn.exceptions import ConvergenceWarning
    return sum(issubclass(w.category, ConvergenceWarning) for w in caught)


def _folds(y, folds: int) -> int:
    """As many folds as the rarest class allows, up to `folds`; at least two."""
    smallest = int(np.bincount(np.unique(y, return_inverse=True)[1]).min())
    if smallest < 2:
        raise UserError("every class needs at least 2 training samples for cross-validation; "
                        f"one has {smallest} (use fewer classes or a smaller --test-size)")
    return min(folds, smallest)
