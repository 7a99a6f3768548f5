"""The k-nearest-neighbour probe as DINO evaluates features (Caron et al. 2021, "Emerging Properties in
Self-Supervised Vision Transformers": a weighted k-NN, k = 20, temperature 0.07), in JAX.

Train and test rows are L2-normalised, so a dot product is the cosine similarity. Each test row takes its
k = 20 most similar training rows; neighbour j with similarity s_j votes exp(s_j / T), T = 0.07, for its class,
and the class with the largest summed vote wins. A plain majority vote over the same k neighbours is computed
alongside. Multi-label targets (1 / 0 / -1 ignored) vote the same way per class, and a class's score is its
share of the vote: its positive neighbours' weight over all k neighbours' weight (ignored counts as absent);
predicted present above one half. The majority vote's score is the share of neighbours.

Determinism, equal values broken the same way on every backend:
- neighbours: `jax.lax.top_k` keeps, of equally similar training rows, the lower row index;
- weighted vote: of classes with equal summed weight, the lower class index;
- majority vote: the most neighbours; then the larger summed similarity (the nearer neighbours); then the lower
  class index.

The training matrix is put on the default device once; test rows go through in chunks of `chunk` under one
`lax.map`, so memory holds a (chunk, N) similarity block, never (N_test, N): 100k x 2048 training rows are
800 MB in float32, a 256-row chunk's similarities 100 MB. Similarities are computed at float32 precision
(`Precision.HIGHEST`; a GPU's default TF32 would reorder near-equal neighbours).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from research.errors import UserError

K = 20
TEMPERATURE = 0.07
CHUNK = 256
EPS = 1e-12  # a zero row stays zero instead of dividing by zero


def normalize(x):
    """Rows scaled to unit L2 norm (jax)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), EPS)


@functools.partial(jax.jit, static_argnames=("k", "classes", "chunk"))
def neighbours_and_votes(train, targets, test, k: int, classes: int, temperature: float, chunk: int = CHUNK):
    """For every test row: (similarities (M, k), train indices (M, k), weighted votes (M, C), neighbour counts
    (M, C), summed similarities (M, C)). `targets` is (N,) class ids or an (N, C) 0/1 positive matrix."""
    train = normalize(train)
    m, d = test.shape
    padded = -(-m // chunk) * chunk
    blocks = jnp.pad(normalize(test), ((0, padded - m), (0, 0))).reshape(padded // chunk, chunk, d)

    def block(rows):
        sim = jnp.dot(rows, train.T, precision=jax.lax.Precision.HIGHEST)
        top, idx = jax.lax.top_k(sim, k)
        hits = (jax.nn.one_hot(targets[idx], classes) if targets.ndim == 1 else targets[idx]).astype(jnp.float32)
        weighted = jnp.einsum("mk,mkc->mc", jnp.exp(top / temperature), hits)
        return top, idx, weighted, hits.sum(1), jnp.einsum("mk,mkc->mc", top, hits)

    out = jax.lax.map(block, blocks)
    return tuple(o.reshape(padded, *o.shape[2:])[:m] for o in out)


def majority(counts, similarity):
    """The class most neighbours have; ties to the larger summed similarity, then the lower class index."""
    counts, similarity = np.asarray(counts), np.asarray(similarity)
    tied = counts == counts.max(axis=1, keepdims=True)
    return np.argmax(np.where(tied, similarity, -np.inf), axis=1)


def predict(train_x, train_y, test_x, classes: int, k: int = K, temperature: float = TEMPERATURE,
            chunk: int = CHUNK) -> dict:
    """kNN on numpy inputs: {"weighted": labels or (M, C) scores, "majority": likewise, "neighbours": (M, k)}.

    Single-label: predicted class ids. Multi-label ((N, C) targets): per-class vote shares in [0, 1]."""
    if not 0 < k <= len(train_x):
        raise UserError(f"--k {k} must lie in [1, {len(train_x)}] (the training rows)")
    if not temperature > 0:
        raise UserError(f"--temperature must be positive, got {temperature}")
    multilabel = np.ndim(train_y) == 2
    targets = (np.asarray(train_y) > 0) if multilabel else np.asarray(train_y, np.int32)
    top, idx, weighted, counts, sims = (np.asarray(a) for a in neighbours_and_votes(
        jnp.asarray(train_x, jnp.float32), jnp.asarray(targets), jnp.asarray(test_x, jnp.float32), k=k,
        classes=classes, temperature=float(temperature), chunk=min(chunk, max(1, len(test_x)))))
    if multilabel:
        total = np.exp(top / temperature).sum(1, keepdims=True)
        return {"weighted": weighted / total, "majority": counts / k, "neighbours": idx}
    return {"weighted": np.argmax(weighted, axis=1), "majority": majority(counts, sims), "neighbours": idx}


def fit_predict(train_x, train_y, test_x, classes: int, k: int = K, temperature: float = TEMPERATURE):
    """The runner's entry: (scores or labels of the weighted vote, of the majority vote, record for the JSON)."""
    out = predict(train_x, train_y, test_x, classes, k=k, temperature=temperature)
    record = {"k": int(k), "temperature": float(temperature), "similarity": "cosine (L2-normalised rows)",
              "vote": "weighted: sum of exp(similarity / temperature) per class (DINO); majority: one per neighbour",
              "ties": "neighbours: lower train row; weighted: lower class; majority: larger summed similarity, "
                      "then lower class"}
    return out["weighted"], out["majority"], record
