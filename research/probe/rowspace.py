"""The exact speed-up for wide features (D >> N): fit the probe in the span of its training rows.

With an L2 penalty on W (the intercept unpenalised), the minimiser of a linear softmax model's loss has
W = X^T A for some A: its gradient is X^T G + lam W, zero only when W lies in the row space of X (the
representer theorem). With X = U S V^T (thin SVD, rank r <= N), fitting on Z = X V = U S and mapping back
W = V W_z solves the same problem: Z W_z = X W and ||W_z|| = ||W||. Every gradient-based iterate started at
zero stays in that span, so even the solver's path is the same, up to rounding.

Everything comes from the N x N Gram matrix X X^T (one BLAS-3 product, in float64 so that small singular
values survive, and an eigendecomposition), never from V itself: other rows map to Z through their kernel
with the training rows, (X_new X^T) U S^-1, and the weights back through W = X^T (U S^-1 W_z). A QR or SVD of
the wide matrix is an order of magnitude slower on a CPU. With no per-fold scaling, one Gram of all the
training rows serves every fold (its blocks). Directions with a singular value below RCOND times the largest
are dropped: they move no prediction by more than that fraction.
"""
from __future__ import annotations

import dataclasses

import numpy as np

RCOND = 1e-6
WIDE = 2.0  # reduce when D > WIDE * N: below that, the Gram costs about what it saves


def wide(d: int, n: int) -> bool:
    """Whether fitting in the row space saves time for n training rows of d features."""
    return d > WIDE * n


def gram(a, b=None) -> np.ndarray:
    """a b^T (b defaults to a) in float64."""
    a = np.asarray(a, np.float64)
    return a @ (a if b is None else np.asarray(b, np.float64)).T


@dataclasses.dataclass
class RowSpace:
    """Coordinates in the span of the training rows: `z` (N, r) for the training rows themselves."""

    z: np.ndarray     # (N, r) float64: U S
    coef: np.ndarray  # (N, r) float64: U S^-1

    @property
    def rank(self) -> int:
        return self.z.shape[1]

    def project(self, kernel) -> np.ndarray:
        """(M, r) coordinates of M other rows from their kernel (M, N) with the training rows."""
        return np.asarray(kernel, np.float64) @ self.coef

    def lift(self, x_train, w_z) -> np.ndarray:
        """(D, K) weights on the original features: X^T U S^-1 W_z."""
        return np.asarray(x_train, np.float64).T @ (self.coef @ np.asarray(w_z, np.float64))


def fit(gram_train) -> RowSpace:
    """The row space of the training rows from their Gram matrix (N, N)."""
    lam, u = np.linalg.eigh(np.asarray(gram_train, np.float64))
    keep = lam > RCOND ** 2 * max(float(lam[-1]), np.finfo(np.float64).tiny)
    u, s = u[:, keep], np.sqrt(lam[keep])
    return RowSpace(u * s, u / s)
