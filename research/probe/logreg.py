"""The scikit-learn probe: multinomial `LogisticRegression` (lbfgs) with C chosen by stratified K-fold
cross-validation on the training part only; the test part is never seen until the final score.

With more than two classes, scikit-learn's lbfgs solver fits the multinomial (softmax) model. Its objective is
C * sum CE + 1/2 * ||W||^2, the intercept unpenalised; see `research.probe.lbfgs` for the mapping to l2.

The choice is GridSearchCV's (the mean fold accuracy, ties to the smaller C; the same folds, the same cold fits),
computed faster without changing it: when the features are wide, each fit runs in the row space of its training
rows (`research.probe.rowspace`, float64 coordinates) with scikit-learn's objective and stopping rule
(`research.probe.softmax`), and the fits run in parallel processes when there are cores to spare. The refit on
all the training part maps its weights back to the D features, so the saved model is an ordinary scikit-learn
Pipeline.

No warm starts along the C path: under scikit-learn's tolerance a warm-started fit stops elsewhere than a cold
one does, and on the seed-002 features that moved the chosen C.
"""
from __future__ import annotations

import os
import time
import warnings

import numpy as np

from research.errors import UserError
from research.probe import progress as progress_
from research.probe import rowspace, softmax

C_GRID = np.logspace(-4, 4, 17)  # half a decade apart
FOLDS = 5
MAX_ITER = 5000
TOL = 1e-4  # scikit-learn's default gradient tolerance, warm or cold
SMALL = 4_000_000  # below this many feature values, BLAS threads (and worker processes) cost more than they save


def fit(x, y, standardize: bool = False, seed: int = 0, grid=C_GRID, folds: int = FOLDS, reduce=None,
        jobs=None, progress=None):
    """Choose C by stratified K-fold on (x, y), refit on all of it; (fitted Pipeline, record).

    reduce: fit in the training rows' span (None: when the features are wide); jobs: processes (None: one per
    spare core for large problems); progress: a `progress.bar`-like factory (None: silent)."""
    from sklearn.model_selection import StratifiedKFold

    folds = _folds(y, folds)
    grid = np.sort(np.asarray(grid, np.float64))  # GridSearchCV's ties go to the first listed: the smallest C
    parts = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y))
    if reduce is None:
        reduce = rowspace.wide(x.shape[1], min(len(t) for t, _ in parts))
    jobs = _jobs(x) if jobs is None else max(1, int(jobs))
    # a task per fold and share of the grid, so that every process stays busy to the end
    shares = min(jobs, len(grid))
    tasks = [(fold, np.arange(share, len(grid), shares)) for fold in range(folds) for share in range(shares)]
    start = time.perf_counter()
    with (progress or progress_.quiet)(folds * len(grid) + 1, "logreg: C x fold", "fit") as bar:
        # one Gram of the training part serves every fold unless each fold scales its features its own way
        kernel = rowspace.gram(x) if reduce and not standardize else None
        args = (x, y, standardize, reduce, kernel)
        calls = [(*args, *parts[fold], grid[chosen]) for fold, chosen in tasks]
        if jobs > 1:
            from joblib import Parallel, delayed
            tick = bar.remote()
            done = Parallel(n_jobs=jobs)(delayed(_path)(*call, tick) for call in calls)
        else:
            done = [_path(*call, bar.update) for call in calls]
        cv_time = time.perf_counter() - start
        scores = np.zeros((folds, len(grid)))
        for (fold, chosen), result in zip(tasks, done):
            scores[fold, chosen] = result["accuracy"]
        accuracy = scores.mean(axis=0)
        best = int(np.flatnonzero(accuracy == accuracy.max())[0])
        model, refit = _refit(x, y, grid[best], standardize, reduce, kernel)
        bar.update()
    record = {"best_C": float(grid[best]), "C_grid": [float(c) for c in grid], "folds": folds,
              "cv_accuracy": [float(a) for a in accuracy],
              "best_C_at_grid_edge": best in (0, len(grid) - 1),
              "convergence_warnings": sum(p["warnings"] for p in done) + refit["warnings"],
              "fits": folds * len(grid) + 1, "cv_time_s": cv_time, "refit_time_s": refit["seconds"],
              "paths": {"row_space": bool(reduce), "dim": int(x.shape[1]),
                        "rank": [p["rank"] for p in done[::shares]] + [refit["rank"]] if reduce else None,
                        "stopping": "scikit-learn's: every gradient entry over the D features within tol",
                        "warm_start": False, "tol": TOL, "processes": jobs,
                        "iterations": int(sum(p["iterations"] for p in done) + refit["iterations"])}}
    return model, record


def _jobs(x) -> int:
    """One process per core, for problems big enough to pay for starting them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores if x.size >= SMALL else 1


def _classifier(**kw):
    from sklearn.linear_model import LogisticRegression
    return LogisticRegression(solver="lbfgs", max_iter=MAX_ITER, tol=TOL, **kw)


def _coordinates(x, rows, others, standardize: bool, reduce: bool, kernel=None):
    """What a fit on x[rows] sees, everything fitted on those rows only: (scaler or None, RowSpace or None,
    the rows' features as fitted, or None where x[rows] is; coordinates of `rows`; of `others`, if given)."""
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


class _RowSpaceFits:
    """scikit-learn's fits of one training part, made in its row space (`research.probe.softmax`)."""

    def __init__(self, x, rows, y, space, fitted):
        """x[rows] as fitted: `fitted` where `_coordinates` made it (scaled), else x itself, `rows` of it."""
        self.classes, self.index = np.unique(y, return_inverse=True)
        self.space = space
        features, rows = (x, rows) if fitted is None else (fitted, None)
        self.basis = softmax.Basis(features, rows, space.coef)
        # scikit-learn computes in the features' dtype: float32 features keep float32 per-sample losses
        self.loss_dtype = np.float32 if features.dtype == np.float32 else np.float64

    def fit(self, c: float) -> softmax.Fit:
        return softmax.fit(self.space.z, self.index, len(self.classes), float(c), self.basis, TOL, MAX_ITER,
                           self.loss_dtype)


def _path(x, y, standardize, reduce, kernel, train, val, grid, tick) -> dict:
    """One fold's fits, one per C in `grid`, each scored on the held-out rows."""
    from threadpoolctl import threadpool_limits

    _, space, fitted, z, zv = _coordinates(x, train, val, standardize, reduce, kernel)
    accuracy, iterations, warned = [], 0, 0
    with _warnings() as caught, threadpool_limits(1 if z.size < SMALL else None):
        fits = _RowSpaceFits(x, train, y[train], space, fitted) if reduce else None
        for c in grid:
            if reduce:
                one = fits.fit(c)
                predicted, n_iter = fits.classes[one.predict(zv)], one.n_iter
                warned += not one.converged
            else:  # scikit-learn itself on the D features
                clf = _classifier(C=float(c)).fit(z, y[train])
                predicted, n_iter = clf.predict(zv), int(np.max(clf.n_iter_))
            accuracy.append(float(np.mean(predicted == y[val])))
            iterations += n_iter
            tick(1)
    return {"accuracy": accuracy, "iterations": iterations, "warnings": _count(caught) + warned,
            "rank": space.rank if reduce else None}


def _refit(x, y, c: float, standardize: bool, reduce: bool, kernel=None):
    """The final model on all of (x, y): a Pipeline over the original D features (weights mapped back)."""
    from sklearn.pipeline import Pipeline
    from threadpoolctl import threadpool_limits

    start = time.perf_counter()
    rows = np.arange(len(y))
    scaler, space, fitted, z, _ = _coordinates(x, rows, None, standardize, reduce, kernel)
    with _warnings() as caught, threadpool_limits(1 if z.size < SMALL else None):
        if reduce:
            fits = _RowSpaceFits(x, None, y, space, fitted)
            one = fits.fit(c)
            clf = _fitted(c, fits.classes, space.lift(x if fitted is None else fitted, one.coef.T).T,
                          one.intercept, one.n_iter, x.shape[1])
            warned = not one.converged
        else:
            clf, warned = _classifier(C=float(c)).fit(z, y), 0
    model = Pipeline(([("scaler", scaler)] if scaler else []) + [("clf", clf)])
    return model, {"seconds": time.perf_counter() - start, "iterations": int(np.max(clf.n_iter_)),
                   "warnings": _count(caught) + warned, "rank": space.rank if reduce else None}


def _fitted(c: float, classes, coef, intercept, n_iter: int, features: int):
    """A scikit-learn LogisticRegression holding weights fitted elsewhere: W = X^T U S^-1 W_z, whose
    predictions on any row equal those of the fit in the row space."""
    clf = _classifier(C=float(c))
    clf.classes_, clf.n_features_in_ = classes, features
    clf.coef_, clf.intercept_ = np.ascontiguousarray(coef), np.asarray(intercept, np.float64)
    clf.n_iter_ = np.array([n_iter], np.int32)
    return clf


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
