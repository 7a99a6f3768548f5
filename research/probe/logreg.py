"""The scikit-learn probe: multinomial `LogisticRegression` (lbfgs) with C chosen by stratified K-fold
cross-validation on the training part only; the test part is never seen until the final score.

With more than two classes, scikit-learn's lbfgs solver fits the multinomial (softmax) model. Its objective is
C * sum CE + 1/2 * ||W||^2, the intercept unpenalised; see `research.probe.lbfgs` for the mapping to l2.

The choice is GridSearchCV's (the mean fold accuracy, ties to the smaller C; the same folds), computed faster
without changing it: each fold fits in the row space of its training rows when the features are wide
(`research.probe.rowspace`, float64 coordinates), walks the C grid upwards warm-started from the previous C's
weights, and the folds
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
TOL = 1e-4  # scikit-learn's default gradient tolerance, warm or cold
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
    # Warm starts only in the row space, whose coordinates are float64: on float32 features, scikit-learn's
    # relative-decrease test can stop a warm-started fit short of where a cold one ends, changing scores.
    warm_start = bool(warm_start and reduce)
    jobs = _jobs(x, folds) if jobs is None else max(1, min(int(jobs), folds))
    start = time.perf_counter()
    with (progress or progress_.quiet)(folds * len(grid) + 1, "logreg: C x fold", "fit") as bar:
        # one Gram of the training part serves every fold unless each fold scales its features its own way
        kernel = rowspace.gram(x) if reduce and not standardize else None
        args = (x, y, grid, standardize, reduce, warm_start, kernel)
        if jobs > 1:
            from joblib import Parallel, delayed
            tick = bar.remote()
            paths = Parallel(n_jobs=jobs)(delayed(_path)(*args, t, v, tick) for t, v in parts)
        else:
            paths = [_path(*args, t, v, bar.update) for t, v in parts]
        cv_time = time.perf_counter() - start
        accuracy = np.mean([p["accuracy"] for p in paths], axis=0)
        best = int(np.flatnonzero(accuracy == accuracy.max())[0])
        model, refit = _refit(x, y, grid[best], standardize, reduce, kernel)
        bar.update()
    record = {"best_C": float(grid[best]), "C_grid": [float(c) for c in grid], "folds": folds,
              "cv_accuracy": [float(a) for a in accuracy],
              "best_C_at_grid_edge": best in (0, len(grid) - 1),
              "convergence_warnings": sum(p["warnings"] for p in paths) + refit["warnings"],
              "fits": folds * len(grid) + 1, "cv_time_s": cv_time, "refit_time_s": refit["seconds"],
              "paths": {"row_space": bool(reduce), "dim": int(x.shape[1]),
                        "rank": [p["rank"] for p in paths] + [refit["rank"]] if reduce else None,
                        "warm_start": bool(warm_start), "tol": TOL,
                        "processes": jobs,
                        "iterations": int(sum(p["iterations"] for p in paths) + refit["iterations"])}}
    return model, record


def _jobs(x, folds: int) -> int:
    """One process per core up to the folds, for problems big enough to pay for starting them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(folds, cores) if x.size >= SMALL else 1


def _classifier(warm_start: bool = False, **kw):
    from sklearn.linear_model import LogisticRegression
    return LogisticRegression(solver="lbfgs", max_iter=MAX_ITER, tol=TOL, warm_start=warm_start, **kw)


def _coordinates(x, rows, others, standardize: bool, reduce: bool, kernel=None):
    """What a fit on x[rows] sees, everything fitted on those rows only: (scaler or None, RowSpace or None,
    the rows' features as fitted, or None where not needed; coordinates of `rows`; of `others`, if given)."""
    scaler = None
    if standardize:
        from sklearn.preprocessing import StandardScaler
        scaler = StandardScaler().fit(x[rows])
    scaled = (lambda i: scaler.transform(x[i])) if scaler else (lambda i: x[i])
    if not reduce:
        fitted = scaled(rows)
        return scaler, None, fitted, fitted, None if others is None else scaled(others)
    if kernel is not None:
        fitted, k_rows = None, kernel[np.ix_(rows, rows)]
        k_others = None if others is None else kernel[np.ix_(others, rows)]
    else:
        fitted = scaled(rows)
        k_rows, k_others = rowspace.gram(fitted), None if others is None else rowspace.gram(scaled(others), fitted)
    space = rowspace.fit(k_rows)
    return scaler, space, fitted, space.z, None if others is None else space.project(k_others)


def _path(x, y, grid, standardize, reduce, warm_start, kernel, train, val, tick) -> dict:
    """One fold: fit every C in order on the training rows, score each on the held-out rows."""
    from threadpoolctl import threadpool_limits

    _, space, _, z, zv = _coordinates(x, train, val, standardize, reduce, kernel)
    clf = _classifier(warm_start=warm_start)  # imports scikit-learn (and scipy's BLAS) before the limit below
    accuracy, iterations = [], 0
    with _warnings() as caught, threadpool_limits(1 if z.size < SMALL else None):
        for c in grid:
            clf.set_params(C=float(c)).fit(z, y[train])
            accuracy.append(float(np.mean(clf.predict(zv) == y[val])))
            iterations += int(np.max(clf.n_iter_))
            tick(1)
    return {"accuracy": accuracy, "iterations": iterations, "warnings": _count(caught),
            "rank": space.rank if reduce else None}


def _refit(x, y, c: float, standardize: bool, reduce: bool, kernel=None):
    """The final model on all of (x, y): a Pipeline over the original D features (weights mapped back)."""
    from sklearn.pipeline import Pipeline
    from threadpoolctl import threadpool_limits

    start = time.perf_counter()
    scaler, space, fitted, z, _ = _coordinates(x, np.arange(len(y)), None, standardize, reduce, kernel)
    clf = _classifier(C=float(c))
    with _warnings() as caught, threadpool_limits(1 if z.size < SMALL else None):
        clf.fit(z, y)
    if reduce:  # W = X^T U S^-1 W_z: predictions on any row equal those of the fit in the row space
        w = space.lift(x if fitted is None else fitted, clf.coef_.T)
        clf.coef_ = np.ascontiguousarray(w.T).astype(clf.coef_.dtype)
        clf.n_features_in_ = x.shape[1]
    model = Pipeline(([("scaler", scaler)] if scaler else []) + [("clf", clf)])
    return model, {"seconds": time.perf_counter() - start, "iterations": int(np.max(clf.n_iter_)),
                   "warnings": _count(caught), "rank": space.rank if reduce else None}


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
