"""The exact speed-up for wide features (D >> N): fit the probe in the span of its training rows.

With an L2 penalty on W (the intercept unpenalised), the minimiser of a linear softmax model's loss has
W = X^T A for some A: its gradient is X^T G + lam W, zero only when W lies in the row space of X (the
representer theorem). So with V (D, r) an orthonormal basis of that row space (r <= N), fitting on Z = X V and
mapping back W = V W_z solves the same problem: Z W_z = X W, and ||W_z|| = ||W||. Every gradient-based
iterate started at zero stays in that span, so even the solver's path is the same, up to rounding.

V comes from the N x N Gram matrix (one BLAS-3 product and an eigendecomposition), in float64 so that small
singular values survive; a QR or SVD of the wide matrix itself is an order of magnitude slower on a CPU.
Directions with a singular value below RCOND times the largest are dropped: they move no prediction by more
than that fraction.
"""
from __future__ import annotations

import numpy as np

RCOND = 1e-6
WIDE = 2.0  # reduce when D > WIDE * N: below that, the Gram and the projection cost about what they save


def wide(d: int, n: int) -> bool:
    """Whether fitting in the row space saves time for n training rows of d features."""
    return d > WIDE * n


def basis(x) -> np.ndarray:
    """(D, r) float32 orthonormal basis of the span of the rows of x (N, D), r <= N."""
    x = np.asarray(x, np.float64)
    lam, u = np.linalg.eigh(x @ x.T)
    keep = lam > RCOND ** 2 * max(float(lam[-1]), np.finfo(np.float64).tiny)
    u, s = u[:, keep], np.sqrt(lam[keep])
    return ((x.T @ u) / s).astype(np.float32)


def project(x, v: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32) @ v
