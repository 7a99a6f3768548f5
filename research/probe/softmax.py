"""scikit-learn's multinomial `LogisticRegression(solver="lbfgs")`, solved in the row space of wide features with
scikit-learn's own stopping rule, so that each fit stops where scikit-learn's fit on all D features stops.

Why not scikit-learn's estimator on the row-space coordinates: L-BFGS takes the same steps in any orthonormal
basis, but scikit-learn stops when the largest |entry| of the gradient over the D features and the intercepts
falls to `tol`, a test that depends on the basis. In r row-space coordinates the gradient's entries are
packed, not spread over D features, so the same test stops much later. On wide features, loosely stopped fits
at large C score lower than fully converged ones, so that moves the chosen C (issue 17: C 31.6 where
scikit-learn on all D features chose 3.16).

So this runs scipy's L-BFGS-B with scikit-learn's objective, starting point and options, its own gradient test
switched off, and stops on the D-space gradient: V g for the row space's basis V, which equals the gradient
scikit-learn computes at the same iterate. Same iterates, same stopping point, same predictions, up to
rounding. The objective is mean cross-entropy + ||W||^2 / (2 C n), intercepts unpenalised.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import optimize
from scipy.special import expit

MAX_LINE_SEARCH = 50  # scikit-learn's maxls
FTOL = 64 * np.finfo(float).eps  # scikit-learn's relative-decrease test


class Basis:
    """The largest |V g| entry for a row-space gradient g (r, K), where V = X^T U S^-1 (D, r) is the basis of the
    training rows X (N, D): V g = X^T (U S^-1 g), in float64 as scikit-learn's gradient, without forming V. A
    full pass over X is made only when the entries over the tolerance at the last pass (`watched`) are all
    within it now: the gradient moves little between iterates, so usually one of them still is over."""

    WATCH = 256
    CHUNK = 4096  # feature columns per block of a full pass

    def __init__(self, x, rows, coef: np.ndarray):
        """x: the features as fitted (scaled, where the probe scales them); rows: the training rows (None: all)."""
        self.x, self.rows, self.coef = x, rows, coef
        self.watched = np.zeros(0, np.int64)

    def within(self, g: np.ndarray, tol: float) -> bool:
        """Whether max |V g| <= tol."""
        a = self.coef @ g
        if len(self.watched) and np.abs(self._entries(a, self.watched)).max() > tol:
            return False
        d = self.x.shape[1]
        entries = np.concatenate([np.abs(self._entries(a, np.arange(i, min(i + self.CHUNK, d)))).max(axis=1)
                                  for i in range(0, d, self.CHUNK)])
        over = np.flatnonzero(entries > tol)
        self.watched = over[np.argsort(entries[over])[-self.WATCH:]]
        return not len(over)

    def _entries(self, a, columns: np.ndarray) -> np.ndarray:
        block = self.x[:, columns] if self.rows is None else self.x[np.ix_(self.rows, columns)]
        return np.asarray(block, np.float64).T @ a


@dataclasses.dataclass
class Fit:
    coef: np.ndarray       # (outputs, r): one row for two classes (scikit-learn's binomial model), else K
    intercept: np.ndarray  # (outputs,)
    n_iter: int
    converged: bool

    def decision(self, z: np.ndarray) -> np.ndarray:
        return z @ self.coef.T + self.intercept

    def predict(self, z: np.ndarray) -> np.ndarray:
        """Class indices in [0, K)."""
        d = self.decision(z)
        return (d[:, 0] > 0).astype(np.int64) if d.shape[1] == 1 else d.argmax(axis=1)


def fit(z: np.ndarray, y: np.ndarray, classes: int, c: float, basis: Basis, tol: float, max_iter: int,
        loss_dtype=np.float64) -> Fit:
    """One cold fit on row-space coordinates z (n, r) of labels y in [0, classes), as scikit-learn makes it:
    the binomial model for two classes, the multinomial one for more.

    `loss_dtype` float32 for float32 features: scikit-learn then keeps the per-sample losses (not the gradient)
    in float32 and sums them there, and its relative-decrease test (FTOL) sees that rounding."""
    n, r = z.shape
    outputs = 1 if classes == 2 else classes
    target = y[:, None].astype(np.float64) if outputs == 1 else np.eye(classes)[y]
    l2 = 1.0 / (c * n)
    last = {}

    def loss_gradient(w):
        coef, intercept = w[:outputs * r].reshape(outputs, r), w[outputs * r:]
        raw = z @ coef.T + intercept
        pointwise, residual = (_binomial if outputs == 1 else _multinomial)(raw, target)
        loss = float(np.sum(pointwise.astype(loss_dtype)) / n) + 0.5 * l2 * float(np.sum(coef * coef))
        residual /= n
        last.update(w=w.copy(), g_coef=residual.T @ z + l2 * coef, g_intercept=residual.sum(axis=0))
        return loss, np.concatenate([last["g_coef"].ravel(), last["g_intercept"]])

    def stop(intermediate_result):  # scikit-learn's test, on the D-space gradient
        if not np.array_equal(intermediate_result.x, last.get("w")):
            loss_gradient(intermediate_result.x)
        if np.abs(last["g_intercept"]).max() <= tol and basis.within(last["g_coef"].T, tol):
            last["converged"] = True
            raise StopIteration

    done = optimize.minimize(loss_gradient, np.zeros(outputs * (r + 1)), method="L-BFGS-B", jac=True,
                             callback=stop,
                             options={"maxiter": max_iter, "maxls": MAX_LINE_SEARCH, "gtol": 0.0, "ftol": FTOL})
    w = done.x
    # converged as scikit-learn counts it: its gradient test (ours), or scipy's own ending without a warning
    converged = bool(last.get("converged")) or done.status == 0
    return Fit(w[:outputs * r].reshape(outputs, r), w[outputs * r:], int(done.nit), converged)


def _binomial(raw, target):
    """Per-sample log-loss and its gradient for one logit per row (scikit-learn's HalfBinomialLoss)."""
    return np.logaddexp(0.0, raw[:, 0]) - target[:, 0] * raw[:, 0], expit(raw) - target


def _multinomial(raw, onehot):
    """Per-sample cross-entropy and its gradient for K logits per row (scikit-learn's HalfMultinomialLoss)."""
    top = raw.max(axis=1, keepdims=True)
    e = np.exp(raw - top)
    total = e.sum(axis=1, keepdims=True)
    return top[:, 0] + np.log(total[:, 0]) - np.sum(raw * onehot, axis=1), e / total - onehot
