"""Blocks that several families share, with the param names of the sources (`expand_conv`, `depthwise_bn`, ...).

The reduced-precision rule of the mobile families holds here: depthwise convs compute in float32 (see
`mobile_partials`); the `conv` and `norm` partials injected by the family decide the rest.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from research.models import layers, lowering


def depthwise(conv, x, kernel: int, stride: int, padding, name: str):
    """A depthwise kxk conv (one filter per channel), in float32 whatever the compute dtype."""
    c = x.shape[-1]
    return conv(c, (kernel, kernel), (stride, stride), padding=padding, feature_group_count=c, dtype=jnp.float32,
                name=name)(x)


class SeparableConv(nn.Module):
    """Keras' SeparableConv2D without bias, TF SAME padding: the kxk `depthwise` conv (carrying the stride), then
    the 1x1 `pointwise` conv (Xception, NASNet)."""
    features: int
    conv: Any
    kernel: int = 3
    stride: int = 1

    @nn.compact
    def __call__(self, x):
        k, s = self.kernel, self.stride
        x = depthwise(self.conv, x, k, s, layers.conv_padding(x.shape[1:3], k, s), "depthwise")
        return self.conv(self.features, (1, 1), padding=layers.pad(0), name="pointwise")(x)


class ConvBN(nn.Module):
    """Conv, BatchNorm, activation: the stems and tops of EfficientNet and MobileNet (params `conv`, `bn`)."""
    features: int
    kernel: int
    stride: int
    padding: str
    conv: Any
    norm: Any
    activation: Callable = layers.relu6

    @nn.compact
    def __call__(self, x):
        x = self.conv(self.features, (self.kernel, self.kernel), (self.stride, self.stride),
                      padding=layers.conv_padding(x.shape[1:3], self.kernel, self.stride, self.padding),
                      name="conv")(x)
        return self.activation(self.norm(name="bn")(x))


def squeeze_excite(conv, x, squeezed: int, activation, gate: Callable = nn.sigmoid):
    """EfficientNet's squeeze-excitation: the global average, a 1x1 conv to `squeezed` channels with `activation`,
    a 1x1 conv back with `gate` (a sigmoid; MobileNetV3's is hard), scaling `x` per channel (params `se_reduce`,
    `se_expand`, with biases)."""
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = activation(conv(squeezed, (1, 1), padding=layers.pad(0), use_bias=True, name="se_reduce")(s))
    return x * gate(conv(x.shape[-1], (1, 1), padding=layers.pad(0), use_bias=True, name="se_expand")(s))


def residual(x, shortcut, drop_connect: float, train: bool):
    """x + shortcut, x dropped per sample with rate `drop_connect` in training (stochastic depth, Keras'
    Dropout(noise_shape=(None, 1, 1, 1)); needs a `dropout` rng). Call inside a compact module."""
    if drop_connect:
        x = nn.Dropout(drop_connect, broadcast_dims=(1, 2, 3), deterministic=not train)(x)
    return x + shortcut


class InvertedResidual(nn.Module):
    """MobileNetV2's inverted residual, EfficientNet's MBConv: 1x1 expand, kxk depthwise, 1x1 linear projection;
    a skip where stride 1 and in == out. Params `expand_{conv,bn}` (none at expansion 1), `depthwise_{conv,bn}`,
    `project_{conv,bn}`.

    `padding` is a `layers.conv_padding` mode: "same" is TF's SAME, which equals keras.applications'
    `correct_pad` + "valid" before stride-2 depthwise convs. `activation` follows the expansion and the depthwise
    conv; with `se_ratio` a squeeze-excitation to max(1, int(input channels * se_ratio)) channels sits between
    the depthwise activation and the projection (EfficientNet's `se_reduce`, `se_expand`). `drop_connect`:
    stochastic depth on the residual branch in training (needs a `dropout` rng).

    MobileNetV3 rounds its widths (Keras' `_depth`), so it gives them: `expanded` (the expansion's width, else
    input channels * expansion) and `se_features` (the squeezed width, else from `se_ratio`), with its own
    squeeze-excitation activation (`se_activation`, else `activation`) and `se_gate`."""
    expansion: int
    kernel: int
    stride: int
    features: int
    conv: Any
    norm: Any
    padding: str = "same"
    activation: Callable = layers.relu6
    drop_connect: float = 0.0
    train: bool = False
    se_ratio: float = 0.0
    expanded: int = 0
    se_features: int = 0
    se_activation: Callable | None = None
    se_gate: Callable = nn.sigmoid

    @nn.compact
    def __call__(self, x):
        shortcut = x
        if self.expansion != 1:
            width = self.expanded or x.shape[-1] * self.expansion
            x = self.conv(width, (1, 1), padding=layers.pad(0), name="expand_conv")(x)
            x = self.activation(self.norm(name="expand_bn")(x))
        k, s = self.kernel, self.stride
        x = depthwise(self.conv, x, k, s, layers.conv_padding(x.shape[1:3], k, s, self.padding), "depthwise_conv")
        x = self.activation(self.norm(name="depthwise_bn")(x))
        if self.se_ratio or self.se_features:
            squeezed = self.se_features or max(1, int(shortcut.shape[-1] * self.se_ratio))
            x = squeeze_excite(self.conv, x, squeezed, self.se_activation or self.activation, self.se_gate)
        x = self.conv(self.features, (1, 1), padding=layers.pad(0), name="project_conv")(x)
        x = self.norm(name="project_bn")(x)
        if self.stride == 1 and shortcut.shape[-1] == self.features:
            x = residual(x, shortcut, self.drop_connect, self.train)
        return x


def mobile_partials(dtype: Any, train: bool, bn, frozen_bn: frozenset):
    """(conv, norm) partials of the mobile families. With a reduced-precision `dtype`, depthwise convs run in
    float32 (`depthwise`), the other convs multiply in `dtype` but accumulate into and return float32, and
    BatchNorm runs in float32: depthwise convs sum a few large terms that nearly cancel, and conv outputs sit far
    from zero relative to their spread, so rounding either to bfloat16 before BatchNorm normalises it amplifies
    the error (all-bfloat16 put EfficientNet-Lite's stage taps 10-15% off, this keeps them within ~3%;
    tests/test_efficientnet_lite.py)."""
    conv = layers.conv_partial(dtype, use_bias=False)
    if dtype != jnp.float32:
        conv = functools.partial(conv, conv_general_dilated=functools.partial(
            lowering.conv_general_dilated, preferred_element_type=jnp.float32))
    return conv, layers.norm_partial(jnp.float32, train, **bn, frozen=frozen_bn)


class BNReLU(nn.Module):
    """BatchNorm then ReLU (param `bn`): the final norm of pre-activation nets (ResNetV2's `post_bn`, DenseNet's
    `bn`), whose blocks end unnormalised."""
    norm: Any

    @nn.compact
    def __call__(self, x):
        return nn.relu(self.norm(name="bn")(x))
