"""The few-shot probe of big_vision's `fewshot_lsr` evaluator, in JAX: closed-form L2-regularised least squares
from n training rows per class to +-1 targets (the "few-shot accuracy" of ViT, Dosovitskiy et al. 2021, 4.1).

For each seed, each class's training rows are shuffled by `np.random.default_rng(seed)` (classes in id order)
and the first n of them taken, for every n in `shots`, so the 1-shot set lies inside the 5-shot set; a class
with fewer rows gives all it has (recorded). On those rows, as big_vision:
- features are L2-normalised (the issue's protocol), then whitened with the chosen rows' per-feature mean and
  standard deviation (+1e-5), and a constant column of 100 is appended: a bias, almost unregularised;
- targets are the one-hot labels scaled to +-1 (2 * onehot - 1);
- W = (X^T X + l2 I)^-1 X^T Y, or X^T (X X^T + l2 I)^-1 Y when the rows are fewer than the columns (the same
  solution, the smaller system), solved by Cholesky; l2 = 2^10, big_vision's fixed setting (its configs'
  `l2_reg = 2.0 ** 10`; big_vision also chooses no l2 on validation);
- a test row's class is the argmax of its whitened row times W; ties go to the lower class index.
Scores are averaged over seeds (big_vision runs 3; 5 by default here) and reported per shot count; the largest
shot count is the primary one (its mean is the JSON's `accuracy`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from research.errors import UserError
from research.probe import metrics
from research.probe.knn import normalize

SHOTS = (1, 5, 10, 25)
SEEDS = 5
L2 = 2.0 ** 10
BIAS = 100.0
STD_EPS = 1e-5
HIGHEST = jax.lax.Precision.HIGHEST


def sample(y, classes: int, shots, seed: int) -> dict:
    """{n: training row indices, n per class (fewer where a class has fewer)} for one seed; nested in n."""
    rng = np.random.default_rng(seed)
    order = [rng.permutation(np.flatnonzero(y == c)) for c in range(classes)]
    return {n: np.sort(np.concatenate([rows[:n] for rows in order])) for n in shots}


def _design(x, mean, std):
    z = (normalize(x) - mean) / std
    return jnp.pad(z, ((0, 0), (0, 1)), constant_values=BIAS)


@functools.partial(jax.jit, static_argnames=("classes",))
def fit(x, y, classes: int, l2: float = L2):
    """(W (D+1, C), mean, std) of the ridge regression above, from rows x (n, D) and class ids y (n,)."""
    u = normalize(x)
    mean, std = u.mean(0), u.std(0) + STD_EPS
    z = _design(x, mean, std)
    targets = 2.0 * jax.nn.one_hot(y, classes) - 1.0
    n, d = z.shape
    solve = functools.partial(jax.scipy.linalg.solve, assume_a="pos")
    if n >= d:
        w = solve(jnp.dot(z.T, z, precision=HIGHEST) + l2 * jnp.eye(d), jnp.dot(z.T, targets, precision=HIGHEST))
    else:
        w = jnp.dot(z.T, solve(jnp.dot(z, z.T, precision=HIGHEST) + l2 * jnp.eye(n), targets), precision=HIGHEST)
    return w, mean, std


@jax.jit
def decision(w, mean, std, x):
    """Regression outputs (M, C) for test rows x."""
    return jnp.dot(_design(x, mean, std), w, precision=HIGHEST)


class Ridge:
    """A fitted few-shot model, pickled with joblib; `predict` as scikit-learn's."""

    def __init__(self, w, mean, std):
        self.w, self.mean, self.std = (np.asarray(a) for a in (w, mean, std))

    def decision_function(self, x) -> np.ndarray:
        return np.asarray(decision(self.w, self.mean, self.std, jnp.asarray(x, jnp.float32)))

    def predict(self, x) -> np.ndarray:
        return np.argmax(self.decision_function(x), axis=1)


def run(train_x, train_y, test_x, test_y, classes: int, shots=SHOTS, seeds: int = SEEDS, l2: float = L2):
    """Every (shots, seed) fit scored on the test rows: (model and test predictions of seed 0 at the largest
    shot count, record for the JSON with per-shot means, spreads and per-seed scores)."""
    shots = sorted({int(n) for n in shots})
    if not shots or shots[0] < 1 or int(seeds) < 1:
        raise UserError(f"--shots must be positive integers and --seeds at least 1, got {shots} and {seeds}")
    test_x = jnp.asarray(test_x, jnp.float32)
    per_shot = {n: [] for n in shots}
    short = {}
    first = None
    for seed in range(int(seeds)):
        for n, rows in sample(train_y, classes, shots, seed).items():
            model = Ridge(*fit(jnp.asarray(train_x[rows], jnp.float32), jnp.asarray(train_y[rows], jnp.int32),
                               classes=classes, l2=float(l2)))
            pred = model.predict(test_x)
            per_shot[n].append({"seed": seed, "n_train": int(len(rows)), "accuracy": metrics.accuracy(test_y, pred),
                                "mean_per_class_accuracy": metrics.mean_per_class_accuracy(test_y, pred)})
            if len(rows) < n * classes:
                short[str(n)] = int(n * classes - len(rows))
            if seed == 0 and n == shots[-1]:
                first = (model, pred)
    summary = {str(n): _summary(scores) for n, scores in per_shot.items()}
    top = summary[str(shots[-1])]
    record = {"accuracy": top["accuracy"], "mean_per_class_accuracy": top["mean_per_class_accuracy"],
              "primary_shots": shots[-1], "shots": summary, "seeds": int(seeds), "l2": float(l2),
              "n_train": per_shot[shots[-1]][0]["n_train"], "n_train_available": int(len(train_y)),
              "rows_missing_per_shots": short,
              "report_of": f"seed 0 at {shots[-1]} shots (classification report, confusion matrix, saved model)",
              "protocol": "big_vision fewshot_lsr: L2-normalised, whitened on the chosen rows, bias column 100, "
                          "+-1 one-hot targets, closed-form ridge"}
    return first[0], first[1], record


def _summary(scores: list) -> dict:
    out = {}
    for key in ("accuracy", "mean_per_class_accuracy"):
        values = np.array([s[key] for s in scores])
        out[key], out[f"{key}_std"] = float(values.mean()), float(values.std())
    return {**out, "per_seed": scores}
