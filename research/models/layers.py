"""Building blocks shared by the model families.

Padding is always explicit and symmetric: XLA's "SAME" pads stride-2 convolutions on the bottom/right only,
which is not what Keras' ZeroPadding2D or torch's `padding=` do, and would break parity.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# BatchNorm settings of each source. Flax's momentum is the weight of the old running value: torch's 0.1 is 0.9.
BN_SETTINGS = {
    "keras": dict(epsilon=1.001e-5, momentum=0.99),
    "torchvision": dict(epsilon=1e-5, momentum=0.9),
}
# Keras' VGG has BatchNorm nowhere; its models use the Keras default epsilon where they do.
KERAS_DEFAULT_BN = dict(epsilon=1e-3, momentum=0.99)


def conv_partial(dtype: Any, use_bias: bool):
    """A Conv whose params stay float32 while it computes in `dtype`."""
    return functools.partial(nn.Conv, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32)


class BatchNorm(nn.BatchNorm):
    """BatchNorm that stays in inference mode, on its running statistics, where its path is frozen.

    A frozen layer must not normalise with batch statistics or update its running ones while the rest of the
    model trains (Keras' `trainable = False` behaviour); `frozen` holds such layers' paths, e.g. "stem/bn1".
    """
    train: bool = False
    frozen: frozenset = frozenset()

    def __call__(self, x):
        inference = not self.train or "/".join(self.path) in self.frozen
        return super().__call__(x, use_running_average=inference)


def norm_partial(dtype: Any, train: bool, epsilon: float, momentum: float, frozen: frozenset = frozenset()):
    return functools.partial(BatchNorm, train=train, frozen=frozen, epsilon=epsilon, momentum=momentum,
                             dtype=dtype, param_dtype=jnp.float32)


def pad(size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    return ((size, size), (size, size))


def max_pool(x, window: int, stride: int, padding: int = 0):
    """Max-pool padded with -inf, as torch does; after a ReLU this equals Keras' zero padding."""
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding=pad(padding))


def adaptive_avg_pool(x, size: int):
    """torch's AdaptiveAvgPool2d on NHWC: bin i spans [floor(i*n/size), ceil((i+1)*n/size))."""
    if x.shape[1] == size and x.shape[2] == size:
        return x

    def bins(n):
        return [(i * n // size, -(-(i + 1) * n // size)) for i in range(size)]

    rows = [jnp.stack([x[:, h0:h1, w0:w1].mean(axis=(1, 2)) for w0, w1 in bins(x.shape[2])], axis=1)
            for h0, h1 in bins(x.shape[1])]
    return jnp.stack(rows, axis=1)


class LinearHead(nn.Module):
    """The classifier: ImageNet's own, or a fresh one with any number of classes."""
    num_classes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="fc")(x)


class TapCollector:
    """Collects the requested taps and says when the forward can stop."""

    def __init__(self, taps):
        self.wanted = set(taps)
        self.out = {}

    def add(self, name, value) -> bool:
        """Records `value` if asked for; True once every requested tap is in."""
        if name in self.wanted:
            self.out[name] = value
        return self.wanted.issubset(self.out)
