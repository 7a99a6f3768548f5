"""Multinomial logistic regression in JAX, solved with optax's L-BFGS (Kornblith et al. 2019, "Do Better
ImageNet Models Transfer Better?").

Objective, for features X (N, D), labels y, weights W (D, K) and bias b (K):

    loss(W, b) = mean_i CE(softmax(x_i W + b), y_i) + lam / 2 * ||W||^2      (the bias is not penalised)

scikit-learn minimises C * sum_i CE + 1/2 * ||W||^2; dividing by C * N gives the same minimiser with
lam = 1 / (C * N), so C = 1 / (lam * N), N being the number of samples the model is fitted on.

The strength is chosen as in the paper: 45 values log-spaced over [1e-6, 1e5], each fitted on a stratified,
seeded validation split carved from the training part, the best validation accuracy wins (ties: the lower
validation cross-entropy), then the model is refitted on train + validation at that strength. The sweep runs
from strong to weak regularisation inside one `lax.scan`, each solve warm-started from the previous one.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

L2_GRID = np.logspace(-6, 5, 45)
VALIDATION = 0.2  # fraction of each class carved from train to choose the strength
MAX_ITER = 1000   # L-BFGS iterations per strength
TOL = 1e-5        # stop when max |gradient| falls below this


def l2_to_C(lam: float, n: int) -> float:
    """scikit-learn's C for strength `lam` on n fitted samples (see the module docstring)."""
    return 1.0 / (lam * n)


@dataclasses.dataclass
class LinearSoftmax:
    """The fitted probe, pickled with joblib; `predict` mirrors scikit-learn's so both load the same way."""

    coef_: np.ndarray        # (D, K)
    intercept_: np.ndarray   # (K,)
    classes_: np.ndarray     # (K,) label ids
    mean_: np.ndarray | None = None   # standardisation fitted on the training part, if any
    scale_: np.ndarray | None = None

    def decision_function(self, x) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if self.mean_ is not None:
            x = (x - self.mean_) / self.scale_
        return x @ self.coef_ + self.intercept_

    def predict(self, x) -> np.ndarray:
        return self.classes_[np.argmax(self.decision_function(x), axis=1)]


def _loss(params, x, y, lam):
    logits = x @ params["W"] + params["b"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce + 0.5 * lam * jnp.sum(params["W"] ** 2)


def _solve(params, x, y, lam, max_iter: int, tol: float):
    """Minimise `_loss` from `params` with L-BFGS and optax's zoom linesearch; returns (params, iterations)."""
    value_fn = functools.partial(_loss, x=x, y=y, lam=lam)
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(value_fn)

    def step(carry):
        params, state, i, _, last = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=value_fn)
        params = optax.apply_updates(params, updates)
        return params, state, i + 1, _max_abs(grad), value

    def running(carry):
        _, state, i, gmax, last = carry
        new = optax.tree.get(state, "value")
        # Stop on a small gradient, or when float32 can no longer make progress (value stalled).
        return (i < max_iter) & (gmax > tol) & ((i < 2) | (new < last))

    init = (params, opt.init(params), jnp.int32(0), jnp.float32(jnp.inf), jnp.float32(jnp.inf))
    params, _, iters, _, _ = jax.lax.while_loop(running, step, init)
    return params, iters


def _max_abs(tree):
    return jnp.max(jnp.stack([jnp.max(jnp.abs(g)) for g in jax.tree.leaves(tree)]))


@functools.partial(jax.jit, static_argnames=("classes", "max_iter"))
def _sweep_and_refit(x, y, xv, yv, lams, classes: int, max_iter: int, tol: float):
    """Fit every strength in `lams` (in order, warm-started), choose one on the validation part, refit on both.

    One compiled program per problem shape: the sweep is a `lax.scan`, the choice and the refit follow it."""

    def body(params, lam):
        params, iters = _solve(params, x, y, lam, max_iter, tol)
        logits = xv @ params["W"] + params["b"]
        acc = jnp.mean(jnp.argmax(logits, 1) == yv)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, yv).mean()
        return params, (acc, ce, iters)

    _, (acc, ce, iters) = jax.lax.scan(body, _zeros(x.shape[1], classes), lams)
    best = choose(acc, ce)
    params, refit_iters = _solve(_zeros(x.shape[1], classes), jnp.concatenate([x, xv]),
                                 jnp.concatenate([y, yv]), lams[best], max_iter, tol)
    return params, best, acc, ce, iters, refit_iters


def _zeros(d: int, k: int) -> dict:
    return {"W": jnp.zeros((d, k), jnp.float32), "b": jnp.zeros((k,), jnp.float32)}


def choose(accuracy, ce):
    """Index of the best validation accuracy; ties go to the lower validation cross-entropy (jax or numpy)."""
    accuracy, ce = jnp.asarray(accuracy), jnp.asarray(ce)
    return jnp.argmin(jnp.where(accuracy == accuracy.max(), ce, jnp.inf))


def fit(x_train, y_train, x_val, y_val, standardize: bool = False, grid=L2_GRID,
        max_iter: int = MAX_ITER, tol: float = TOL) -> tuple[LinearSoftmax, dict]:
    """Choose the strength on (x_val, y_val), refit on train + validation; (model, record for the JSON)."""
    classes = np.unique(np.concatenate([y_train, y_val]))
    index = {c: i for i, c in enumerate(classes)}
    yt = np.array([index[c] for c in y_train], np.int32)
    yv = np.array([index[c] for c in y_val], np.int32)
    mean = scale = None
    if standardize:  # statistics of the training part only; the refit pools train + validation
        mean, scale = x_train.mean(0).astype(np.float32), _safe_std(x_train).astype(np.float32)
    prep = (lambda a: (a - mean) / scale) if standardize else (lambda a: a)
    order = np.argsort(grid)[::-1]  # strong to weak: each solve starts near the previous solution
    lams = np.asarray(grid, np.float32)[order]
    d, width = x_train.shape[1], padded_width(x_train.shape[1])
    params, best, acc, ce, iters, refit_iters = _sweep_and_refit(
        _pad(prep(x_train), width), yt, _pad(prep(x_val), width), yv, lams,
        classes=len(classes), max_iter=max_iter, tol=tol)
    acc, ce, iters = (np.asarray(a) for a in (acc, ce, iters))
    lam = float(lams[int(best)])
    model = LinearSoftmax(np.asarray(params["W"])[:d], np.asarray(params["b"]), classes, mean, scale)
    n_fit = len(y_train) + len(y_val)
    record = {"best_l2": lam, "best_C": l2_to_C(lam, n_fit), "n_validation": int(len(y_val)),
              "objective": "mean cross-entropy + l2/2 * ||W||^2 (bias unpenalised); C = 1 / (l2 * n_train)",
              "sweep": [{"l2": float(l), "val_accuracy": float(a), "val_ce": float(c), "iterations": int(i)}
                        for l, a, c, i in zip(lams, acc, ce, iters)],
              "refit_iterations": int(refit_iters)}
    return model, record


def padded_width(d: int) -> int:
    """Feature widths rounded up (a power of two, at least 64; then multiples of 1024) so that taps of
    different widths share one compiled sweep. Zero columns change nothing: their weights get no gradient
    but the L2 term's, so they stay at zero."""
    if d > 4096:
        return -(-d // 1024) * 1024
    return max(64, 1 << (d - 1).bit_length())


def _pad(x, width: int) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return np.pad(x, ((0, 0), (0, width - x.shape[1]))) if x.shape[1] < width else x


def _safe_std(x) -> np.ndarray:
    """Standard deviation with constant features left unscaled, as StandardScaler does."""
    std = x.std(0)
    return np.where(std > 0, std, 1.0)
