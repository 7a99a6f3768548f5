"""Multinomial logistic regression in JAX, solved with optax's L-BFGS (Kornblith et al. 2019, "Do Better
ImageNet Models Transfer Better?").

Objective, for features X (N, D), labels y, weights W (D, K) and bias b (K):

    loss(W, b) = mean_i CE(softmax(x_i W + b), y_i) + lam / 2 * ||W||^2      (the bias is not penalised)

scikit-learn minimises C * sum_i CE + 1/2 * ||W||^2; dividing by C * N gives the same minimiser with
lam = 1 / (C * N), so C = 1 / (lam * N), N being the number of samples the model is fitted on.

The strength is chosen as in the paper: 45 values log-spaced over [1e-6, 1e5], each fitted on a stratified,
seeded validation split carved from the training part, the best validation accuracy wins (ties: the lower
validation cross-entropy), then the model is refitted on train + validation at that strength. On a CPU the
sweep runs from strong to weak regularisation, each solve warm-started from the previous one; on an
accelerator, strengths are solved BATCH at a time under `vmap`. Wide features are fitted in the span of the
training rows (`research.probe.rowspace`), exactly, and the weights mapped back to the D features.
"""
from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.probe import progress as progress_
from research.probe import rowspace

L2_GRID = np.logspace(-6, 5, 45)
VALIDATION = 0.2  # fraction of each class carved from train to choose the strength
MAX_ITER = 1000   # L-BFGS iterations per strength
TOL = 1e-5        # stop when max |gradient| falls below this
BATCH = 15        # strengths per vmapped call on an accelerator: three calls, three progress steps


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


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _fit_one(params, x, y, xv, yv, lam, max_iter: int, tol: float):
    """Fit one strength from `params` (the previous strength's solution); score it on the validation part."""
    params, iters = _solve(params, x, y, lam, max_iter, tol)
    acc, ce = _score(params, xv, yv)
    return params, acc, ce, iters


@functools.partial(jax.jit, static_argnames=("classes", "max_iter"))
def _fit_batch(x, y, xv, yv, lams, classes: int, max_iter: int, tol: float):
    """Fit every strength in `lams` at once from zero (vmap): one wide program for an accelerator."""
    def one(lam):
        params, iters = _solve(_zeros(x.shape[1], classes), x, y, lam, max_iter, tol)
        return (*_score(params, xv, yv), iters)
    return jax.vmap(one)(lams)


@functools.partial(jax.jit, static_argnames=("classes", "max_iter"))
def _refit(x, y, lam, classes: int, max_iter: int, tol: float):
    return _solve(_zeros(x.shape[1], classes), x, y, lam, max_iter, tol)


def _score(params, xv, yv):
    logits = xv @ params["W"] + params["b"]
    return (jnp.mean(jnp.argmax(logits, 1) == yv),
            optax.softmax_cross_entropy_with_integer_labels(logits, yv).mean())


def _sweep(x, y, xv, yv, lams, classes: int, batch: int, max_iter: int, tol: float, bar):
    """(validation accuracy, cross-entropy, iterations) per strength. batch 0: one strength at a time, strong
    to weak, each warm-started from the last (fewest iterations on a CPU); else `batch` strengths per vmapped
    call, from zero (the last call padded by repeating its last strength)."""
    x, y, xv, yv = (jnp.asarray(a) for a in (x, y, xv, yv))
    out = []
    if not batch:
        params = _zeros(x.shape[1], classes)
        for lam in lams:
            params, *scores = _fit_one(params, x, y, xv, yv, jnp.float32(lam), max_iter=max_iter, tol=tol)
            out.append(jax.device_get(scores))
            bar.update()
        return (np.array(a) for a in zip(*out))
    for i in range(0, len(lams), batch):
        chunk = np.asarray(lams[i:i + batch], np.float32)
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk))])
        scores = jax.device_get(_fit_batch(x, y, xv, yv, padded, classes=classes, max_iter=max_iter, tol=tol))
        out.append([a[:len(chunk)] for a in scores])
        bar.update(len(chunk))
    return (np.concatenate(a) for a in zip(*out))


def _zeros(d: int, k: int) -> dict:
    return {"W": jnp.zeros((d, k), jnp.float32), "b": jnp.zeros((k,), jnp.float32)}


def choose(accuracy, ce):
    """Index of the best validation accuracy; ties go to the lower validation cross-entropy (jax or numpy)."""
    accuracy, ce = jnp.asarray(accuracy), jnp.asarray(ce)
    return jnp.argmin(jnp.where(accuracy == accuracy.max(), ce, jnp.inf))


def fit(x_train, y_train, x_val, y_val, standardize: bool = False, grid=L2_GRID, max_iter: int = MAX_ITER,
        tol: float = TOL, reduce=None, batch=None, progress=None) -> tuple[LinearSoftmax, dict]:
    """Choose the strength on (x_val, y_val), refit on train + validation; (model, record for the JSON).

    reduce: fit in the span of the training rows (`research.probe.rowspace`; None: when the features are wide);
    batch: strengths per vmapped call (None: BATCH on an accelerator, 0 = warm-started one by one on a CPU);
    progress: a `progress.bar`-like factory (None: silent)."""
    classes = np.unique(np.concatenate([y_train, y_val]))
    index = {c: i for i, c in enumerate(classes)}
    yt = np.array([index[c] for c in y_train], np.int32)
    yv = np.array([index[c] for c in y_val], np.int32)
    mean = scale = None
    if standardize:  # statistics of the training part only; the refit pools train + validation
        mean, scale = x_train.mean(0).astype(np.float32), _safe_std(x_train).astype(np.float32)
    prep = (lambda a: (a - mean) / scale) if standardize else (lambda a: np.asarray(a, np.float32))
    x_train, x_val = prep(x_train), prep(x_val)
    order = np.argsort(grid)[::-1]  # strong to weak: each solve starts near the previous solution
    lams = np.asarray(grid, np.float32)[order]
    d = x_train.shape[1]
    reduce = rowspace.wide(d, len(x_train)) if reduce is None else bool(reduce)
    batch = (BATCH if jax.default_backend() != "cpu" else 0) if batch is None else int(batch)
    start = time.perf_counter()
    with (progress or progress_.quiet)(len(lams) + 1, "lbfgs: strengths", "fit") as bar:
        x_all, y_all, n = np.concatenate([x_train, x_val]), np.concatenate([yt, yv]), len(x_train)
        kernel = rowspace.gram(x_all) if reduce else None  # its blocks serve the sweep and the refit
        space = rowspace.fit(kernel[:n, :n]) if reduce else None
        z, zv = (space.z, space.project(kernel[n:, :n])) if reduce else (x_train, x_val)
        width = padded_width(z.shape[1])
        acc, ce, iters = _sweep(_pad(z, width), yt, _pad(zv, width), yv, lams, len(classes), batch, max_iter,
                                tol, bar)
        sweep_time = time.perf_counter() - start
        best = int(choose(acc, ce))
        lam = float(lams[best])
        space_all = rowspace.fit(kernel) if reduce else None
        z_all = space_all.z if reduce else x_all
        params, refit_iters = _refit(_pad(z_all, padded_width(z_all.shape[1])), y_all, jnp.float32(lam),
                                     classes=len(classes), max_iter=max_iter, tol=tol)
        w = np.asarray(params["W"])[:z_all.shape[1]]
        coef = space_all.lift(x_all, w).astype(np.float32) if reduce else w  # W = V W_z
        bar.update()
    model = LinearSoftmax(coef, np.asarray(params["b"]), classes, mean, scale)
    n_fit = len(y_train) + len(y_val)
    record = {"best_l2": lam, "best_C": l2_to_C(lam, n_fit), "n_validation": int(len(y_val)),
              "objective": "mean cross-entropy + l2/2 * ||W||^2 (bias unpenalised); C = 1 / (l2 * n_train)",
              "sweep": [{"l2": float(l), "val_accuracy": float(a), "val_ce": float(c), "iterations": int(i)}
                        for l, a, c, i in zip(lams, acc, ce, iters)],
              "refit_iterations": int(refit_iters), "fits": len(lams) + 1, "cv_time_s": sweep_time,
              "refit_time_s": time.perf_counter() - start - sweep_time,
              "paths": {"row_space": reduce, "dim": int(d),
                        "rank": [space.rank, space_all.rank] if reduce else None,
                        "warm_start": not batch, "lambda_batch": batch, "backend": jax.default_backend(),
                        "iterations": int(np.sum(iters) + refit_iters)}}
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
