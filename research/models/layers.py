"""Building blocks shared by the model families.

Padding is always explicit and symmetric: XLA's "SAME" pads stride-2 convolutions on the bottom/right only,
which is not what Keras' ZeroPadding2D or torch's `padding=` do, and would break parity.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from research.errors import UserError
from research.models.lowering import conv_general_dilated, windows

# BatchNorm settings of each source. Flax's momentum is the weight of the old running value: torch's 0.1 is 0.9.
BN_SETTINGS = {
    "keras": dict(epsilon=1.001e-5, momentum=0.99),
    "torchvision": dict(epsilon=1e-5, momentum=0.9),
}


def conv_partial(dtype: Any, use_bias: bool):
    """A Conv whose params stay float32 while it computes in `dtype`."""
    return functools.partial(nn.Conv, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                             conv_general_dilated=conv_general_dilated)


PADDINGS = ("same", "symmetric")


def conv_padding(size, kernel: int, stride: int, mode: str = "same"):
    """Explicit ((top, bottom), (left, right)) padding for a square conv on an input of spatial `size`.

    "same" is TF's SAME, whose extra pixel for stride 2 goes bottom/right (TF-trained weights need it);
    "symmetric" is kernel // 2 on every side, as torch pads."""
    if mode == "symmetric":
        return pad(kernel // 2)
    if mode != "same":
        raise ValueError(f"unknown padding {mode!r}; known: {', '.join(PADDINGS)}")
    out = []
    for n in size:
        total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
        out.append((total // 2, total - total // 2))
    return tuple(out)


def relu6(x):
    return jnp.minimum(nn.relu(x), 6.0)


class ConvBN(nn.Module):
    """Conv, BatchNorm, ReLU6: the stems and tops of EfficientNet-Lite and MobileNet (params `conv`, `bn`)."""
    features: int
    kernel: int
    stride: int
    padding: str
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        x = self.conv(self.features, (self.kernel, self.kernel), (self.stride, self.stride),
                      padding=conv_padding(x.shape[1:3], self.kernel, self.stride, self.padding), name="conv")(x)
        return relu6(self.norm(name="bn")(x))


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
    """Max-pool padded with -inf, as torch does; after a ReLU this equals Keras' zero padding.

    Written as the maximum of the window's strided slices rather than a reduce_window: the same values, and it
    stays out of the YNNPACK reduction fusions research/xla.py keeps on CPU, which would otherwise take in VGG's
    convolutions and run them up to 1.2x slower (benchmarks/results/cpu_lowering.md)."""
    if padding:
        x = jnp.pad(x, ((0, 0), *pad(padding), (0, 0)), constant_values=-jnp.inf)
    return functools.reduce(jnp.maximum, windows(x, (window, window), (stride, stride)))


def adaptive_avg_pool(x, size: int):
    """torch's AdaptiveAvgPool2d on NHWC: bin i spans [floor(i*n/size), ceil((i+1)*n/size))."""
    if x.shape[1] == size and x.shape[2] == size:
        return x

    def bins(n):
        return [(i * n // size, -(-(i + 1) * n // size)) for i in range(size)]

    rows = [jnp.stack([x[:, h0:h1, w0:w1].mean(axis=(1, 2)) for w0, w1 in bins(x.shape[2])], axis=1)
            for h0, h1 in bins(x.shape[1])]
    return jnp.stack(rows, axis=1)


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """The classifier's shape, hashable so a spec can key the jit cache; the default is the linear head.

    `hidden`: widths of the ReLU dense layers before the final one. `dropout`: the rate before each dense layer,
    one float for all or one per layer (seed 004's Flatten-Dense(256)-Dropout(0.5)-Dense is hidden=(256,),
    dropout=(0, 0.5)). `batch_norm`: BN before each dropout+dense (seed 000's GAP-BN-Dropout-Dense(512)-BN-Dropout-
    Dense). `pool`: how a spatial input (VGG's block5_pool when there is no top) becomes a vector.
    """
    hidden: tuple = ()
    dropout: Any = 0.0
    batch_norm: bool = False
    pool: str = "flatten"

    def __post_init__(self):
        hidden = tuple(int(h) for h in self.hidden)
        rates = self.dropout if isinstance(self.dropout, (tuple, list)) else (self.dropout,) * (len(hidden) + 1)
        rates = tuple(float(r) for r in rates)
        if len(rates) != len(hidden) + 1 or not all(0.0 <= r < 1.0 for r in rates):
            raise UserError(f"head dropout must be one rate in [0, 1) or one per dense layer "
                            f"({len(hidden) + 1}), got {self.dropout!r}")
        if any(h < 1 for h in hidden):
            raise UserError(f"head hidden widths must be positive, got {self.hidden!r}")
        if self.pool not in HEAD_POOLS:
            raise UserError(f"unknown head pool {self.pool!r}; known: {', '.join(HEAD_POOLS)}")
        object.__setattr__(self, "hidden", hidden)
        object.__setattr__(self, "dropout", rates)
        object.__setattr__(self, "batch_norm", bool(self.batch_norm))

    @property
    def is_linear(self) -> bool:
        return self == HeadSpec()

    @classmethod
    def of(cls, value) -> "HeadSpec":
        """A HeadSpec from itself, a dict (as stored in research.json) or None (the linear head)."""
        if value is None or isinstance(value, cls):
            return value or cls()
        return cls(**dict(value))


HEAD_POOLS = ("flatten", "avg")


class Head(nn.Module):
    """The classifier: ImageNet's own, or a fresh one of any size and `spec`; the final dense layer is `fc`,
    hidden ones `fc1`, `fc2`..., the BN before dense layer k `bn{k}` (the last one's k is len(hidden) + 1)."""
    num_classes: int
    dtype: Any = jnp.float32
    spec: HeadSpec = HeadSpec()
    train: bool = False
    norm: Any = None  # a BatchNorm partial, needed when spec.batch_norm

    @nn.compact
    def __call__(self, x):
        if x.ndim == 4:
            x = x.reshape(x.shape[0], -1) if self.spec.pool == "flatten" else jnp.mean(x, axis=(1, 2))
        widths = self.spec.hidden + (self.num_classes,)
        for k, (width, rate) in enumerate(zip(widths, self.spec.dropout), start=1):
            if self.spec.batch_norm:
                x = self.norm(name=f"bn{k}")(x)
            if rate:
                x = nn.Dropout(rate, deterministic=not self.train)(x)
            last = k == len(widths)
            x = nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32, name="fc" if last else f"fc{k}")(x)
            if not last:
                x = nn.relu(x)
        return x


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
