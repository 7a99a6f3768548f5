"""One-vs-rest logistic regression for multi-label files: one binary probe per class, each fitted by the same
`logreg` or `lbfgs` path as single-label files (its own C / l2 choice), on the training rows whose label for
that class is not ignored (-1, VOC's "difficult"). A class's score is its probe's margin (log-odds); it is
predicted present where the margin is positive."""
from __future__ import annotations

import dataclasses

import numpy as np

from research.errors import UserError


@dataclasses.dataclass
class OneVsRest:
    """The fitted per-class probes, pickled with joblib."""

    estimators: list

    def decision_function(self, x) -> np.ndarray:
        return np.stack([margin(m, x) for m in self.estimators], axis=1)

    def predict(self, x) -> np.ndarray:
        return (self.decision_function(x) > 0).astype(np.int8)


def margin(model, x) -> np.ndarray:
    """A binary probe's log-odds of the positive class (scikit-learn's is 1-D, ours has a column per class)."""
    d = np.asarray(model.decision_function(x))
    return d if d.ndim == 1 else d[:, 1] - d[:, 0]


def fit(x, targets, label_names, fit_binary) -> tuple[OneVsRest, dict]:
    """`fit_binary(x, y01, ids_mask)` -> (model, record) per class; (OneVsRest, record for the JSON)."""
    models, records = [], []
    for c, name in enumerate(label_names):
        keep = targets[:, c] != -1
        y = (targets[keep, c] > 0).astype(np.int64)
        counts = np.bincount(y, minlength=2)
        if counts.min() < 2:
            raise UserError(f"class {name!r} has {counts[1]} positive and {counts[0]} negative training rows; "
                            "a one-vs-rest probe needs at least 2 of each")
        model, record = fit_binary(x[keep], y, keep)
        models.append(model)
        records.append({"class": name, **{k: v for k, v in record.items() if k in ("best_C", "best_l2")}})
    return OneVsRest(models), {"one_vs_rest": records, "best_C": float(np.median([r["best_C"] for r in records])),
                               "best_C_is": "the median over classes; each class's own is in one_vs_rest"}
