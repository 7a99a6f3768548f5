"""ResNet in the two layouts users have weights for.

`keras` is ResNet v1 as keras.applications builds it: the stride on the first 1x1 conv, conv biases, BN epsilon
1.001e-5. `torchvision` is v1.5: the stride on the 3x3 conv, no conv biases, BN epsilon 1e-5. Param paths are
the same in both (`stem/conv1`, `stage3/block2/conv2`, `stage1/block1/downsample/conv`), so freeze rules and
tap names do not depend on where the weights came from.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.models import layers

TAPS = ("stem", "stage1", "stage2", "stage3", "stage4", "pre_logits", "logits")


class Block(nn.Module):
    """A basic (two 3x3) or bottleneck (1x1-3x3-1x1, 4x expansion) residual block."""
    features: int
    stride: int
    bottleneck: bool
    layout: str
    downsample: bool
    conv: Any
    norm: Any

    def _convs(self):
        """(kernel, features, stride) of each conv; where the stride sits is the v1 / v1.5 difference."""
        s = self.stride
        if not self.bottleneck:
            return [(3, self.features, s), (3, self.features, 1)]
        first, middle = (s, 1) if self.layout == "keras" else (1, s)
        return [(1, self.features, first), (3, self.features, middle), (1, 4 * self.features, 1)]

    @nn.compact
    def __call__(self, x):
        residual = x
        convs = self._convs()
        for i, (kernel, features, stride) in enumerate(convs, start=1):
            x = self.conv(features, (kernel, kernel), (stride, stride), padding=layers.pad(kernel // 2),
                          name=f"conv{i}")(x)
            x = self.norm(name=f"bn{i}")(x)
            if i < len(convs):
                x = nn.relu(x)
        if self.downsample:
            residual = Downsample(convs[-1][1], self.stride, self.conv, self.norm, name="downsample")(residual)
        return nn.relu(x + residual)


class Downsample(nn.Module):
    features: int
    stride: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        x = self.conv(self.features, (1, 1), (self.stride, self.stride), padding=layers.pad(0), name="conv")(x)
        return self.norm(name="bn")(x)


class Stage(nn.Module):
    blocks: int
    features: int
    stride: int
    bottleneck: bool
    layout: str
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        for j in range(self.blocks):
            first = j == 0
            out_features = self.features * (4 if self.bottleneck else 1)
            needs_projection = first and (self.stride != 1 or x.shape[-1] != out_features)
            x = Block(self.features, self.stride if first else 1, self.bottleneck, self.layout,
                      needs_projection, self.conv, self.norm, name=f"block{j + 1}")(x)
        return x


class ResNet(nn.Module):
    """Returns a dict of the requested taps; computes nothing past the deepest one."""
    stage_sizes: Sequence[int]
    bottleneck: bool
    layout: str = "torchvision"
    num_classes: int = 1000
    dtype: Any = jnp.float32
    frozen_bn: frozenset = frozenset()  # BatchNorm paths kept in inference mode when training

    @nn.compact
    def __call__(self, x, train: bool = False, taps: Sequence[str] = ("logits",)):
        bn = layers.BN_SETTINGS[self.layout]
        conv = layers.conv_partial(self.dtype, use_bias=self.layout == "keras")
        norm = layers.norm_partial(self.dtype, train, **bn, frozen=self.frozen_bn)
        got = layers.TapCollector(taps)

        x = Stem(conv, norm, name="stem")(x.astype(self.dtype))
        if got.add("stem", x):
            return got.out
        for i, blocks in enumerate(self.stage_sizes):
            x = Stage(blocks, 64 * 2 ** i, 1 if i == 0 else 2, self.bottleneck, self.layout, conv, norm,
                      name=f"stage{i + 1}")(x)
            if got.add(f"stage{i + 1}", x):
                return got.out
        x = jnp.mean(x, axis=(1, 2))
        if got.add("pre_logits", x) or not self.num_classes:
            return got.out
        got.add("logits", layers.Head(self.num_classes, self.dtype, name="head")(x))
        return got.out


class Stem(nn.Module):
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        x = self.conv(64, (7, 7), (2, 2), padding=layers.pad(3), name="conv1")(x)
        x = nn.relu(self.norm(name="bn1")(x))
        return layers.max_pool(x, 3, 2, padding=1)


STAGE_SIZES = {
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
    "resnet101": ((3, 4, 23, 3), True),
    "resnet152": ((3, 8, 36, 3), True),
}
