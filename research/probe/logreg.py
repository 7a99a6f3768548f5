"""The scikit-learn probe: multinomial `LogisticRegression` (lbfgs) with C chosen by stratified K-fold
`GridSearchCV` on the training part only; the test part is never seen until the final score.

With more than two classes, scikit-learn's lbfgs solver fits the multinomial (softmax) model. Its objective is
C * sum CE + 1/2 * ||W||^2, the intercept unpenalised; see `research.probe.lbfgs` for the mapping to l2.
"""
from __future__ import annotations

import warnings

import numpy as np

from research.errors import UserError

C_GRID = np.logspace(-4, 4, 17)  # half a decade apart
FOLDS = 5
MAX_ITER = 5000
SMALL = 4_000_000  # below this many feature values, BLAS threads cost more than they save


def fit(x, y, standardize: bool = False, seed: int = 0, grid=C_GRID, folds: int = FOLDS):
    """Grid-search C by stratified K-fold on (x, y), refit on all of it; (fitted Pipeline, record)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    folds = _folds(y, folds)
    steps = [("scaler", StandardScaler())] if standardize else []
    pipe = Pipeline(steps + [("clf", LogisticRegression(solver="lbfgs", max_iter=MAX_ITER))])
    search = GridSearchCV(pipe, {"clf__C": list(grid)}, scoring="accuracy",
                          cv=StratifiedKFold(folds, shuffle=True, random_state=seed), refit=True)
    with warnings.catch_warnings(record=True) as caught, \
            threadpool_limits(1 if x.size < SMALL else None):
        warnings.simplefilter("always", ConvergenceWarning)
        search.fit(x, y)
    best = float(search.best_params_["clf__C"])
    record = {"best_C": best, "C_grid": [float(c) for c in grid], "folds": folds,
              "cv_accuracy": [float(s) for s in search.cv_results_["mean_test_score"]],
              "best_C_at_grid_edge": best in (float(min(grid)), float(max(grid))),
              "convergence_warnings": sum(issubclass(w.category, ConvergenceWarning) for w in caught)}
    return search.best_estimator_, record


def _folds(y, folds: int) -> int:
    """As many folds as the rarest class allows, up to `folds`; at least two."""
    smallest = int(np.bincount(np.unique(y, return_inverse=True)[1]).min())
    if smallest < 2:
        raise UserError("every class needs at least 2 training samples for cross-validation; "
                        f"one has {smallest} (use fewer classes or a smaller --test-size)")
    return min(folds, smallest)
