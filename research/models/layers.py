"""The layers every family builds from: conv and BatchNorm partials, explicit padding, pooling.

Padding is always explicit and symmetric: XLA's "SAME" pads stride-2 convolutions on the bottom/right only,
which is not what Keras' ZeroPadding2D or torch's `padding=` do, and would break parity.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

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


swish = nn.swish  # x * sigmoid(x), Keras' "swish" (EfficientNet)


def hard_sigmoid(x):
    """relu6(x + 3) / 6, as MobileNetV3 writes it (Keras' own `hard_sigmoid` activation has another slope)."""
    return relu6(x + 3.0) * (1.0 / 6.0)


def hard_swish(x):
    """x * relu6(x + 3) / 6: Keras' "hard_swish" (MobileNetV3)."""
    return x * (relu6(x + 3.0) / 6.0)

KERAS_EPSILON = 1e-7  # keras.backend.epsilon(): the floor of Normalization's sqrt(variance)


class Normalization(nn.Module):
    """In-model preprocessing: Keras' Rescaling(scale, offset) then Normalization, per channel, in float32:
    (x * scale + offset - mean) / max(sqrt(var), 1e-7); the model then takes 0-255 pixels (preprocessing "raw").

    `stored`: mean and var are variables in `batch_stats` (`<name>/mean`, `<name>/var`), where a weight file's
    Normalization layer puts its adapted statistics: non-trainable, never updated by training, saved with the
    checkpoint. Otherwise they are the family's constants `mean`, `var` (default: none, a plain rescale).
    `std_in_var`: values that, found in the stored var, mean it holds standard deviations, not variances (Keras'
    EfficientNet ImageNet files; see research/models/efficientnet.py): the output is then divided by
    sqrt(std_in_var) once more, as Keras' extra Rescaling does for those files."""
    scale: float = 1.0
    offset: float = 0.0
    mean: tuple = (0.0, 0.0, 0.0)
    var: tuple = (1.0, 1.0, 1.0)
    stored: bool = False
    std_in_var: tuple | None = None

    @nn.compact
    def __call__(self, x):
        x = x.astype(jnp.float32) * jnp.float32(self.scale) + jnp.float32(self.offset)
        mean, var = jnp.asarray(self.mean, jnp.float32), jnp.asarray(self.var, jnp.float32)
        if self.stored:
            mean = self.variable("batch_stats", "mean", jnp.zeros, (x.shape[-1],), jnp.float32).value
            var = self.variable("batch_stats", "var", jnp.ones, (x.shape[-1],), jnp.float32).value
        x = (x - mean) / jnp.maximum(jnp.sqrt(var), KERAS_EPSILON)
        if self.std_in_var is not None:
            std = jnp.asarray(self.std_in_var, jnp.float32)
            holds_std = jnp.all(jnp.abs(var - std) <= 1e-6 * std)
            x = x * jnp.where(holds_std, 1.0 / jnp.sqrt(std), 1.0)
        return x


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


class LayerScale(nn.Module):
    """A learned per-channel scale on a residual branch (ConvNeXt, DeiT III, DINOv2), stored as `gamma`;
    `init` is the source's initial value (1e-6 ConvNeXt, 1e-5 timm's ViTs)."""
    init: float = 1e-6

    @nn.compact
    def __call__(self, x):
        gamma = self.param("gamma", nn.initializers.constant(self.init), (x.shape[-1],), jnp.float32)
        return x * gamma.astype(x.dtype)


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
