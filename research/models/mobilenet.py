"""MobileNet (v1) and MobileNetV2 as keras.applications builds them, width multiplier alpha = 1.0 only.

Both: ReLU6 throughout, no conv biases, BatchNorm epsilon 1e-3 (v1 with Keras' default momentum 0.99, v2 with
0.999), input scaled to [-1, 1] (Keras' "tf" preprocessing).

Param paths: `stem/conv`, `stem/bn`; v1 blocks `stage{s}/block{j}/{depthwise,pointwise}_{conv,bn}`; v2 blocks
`stage{s}/block{j}/{expand,depthwise,project}_{conv,bn}` (the first block has no expansion); v2's 1x1 conv to
1280 is `top/conv`, `top/bn`; the classifier is `head/fc` (v1's `conv_preds` is a 1x1 conv with bias on a 1x1 map,
i.e. a dense layer, and is converted to one).

Taps: `stem` is the first conv (stride 2); `stage1`..`stage5` end where the resolution is 1/2, 1/4, 1/8, 1/16 and
1/32 of the input, i.e. right before the next stride-2 block (Keras block ids, v1: 1 | 2-3 | 4-5 | 6-11 | 12-13;
v2: 0 | 1-2 | 3-5 | 6-12 | 13-16). `stage5` of v2 is block 16's projection (320 channels), before `top`;
`pre_logits` is the global average pool of the last feature map (after `top` in v2); `logits` are pre-softmax.

Padding is explicit: Keras' `padding="same"` (the stem conv, stride-1 depthwise convs) is TF's SAME, which for
stride 2 pads less on the top/left; v1's stride-2 depthwise convs pad ((0, 1), (0, 1)) by ZeroPadding2D whatever
the input size, v2's by `imagenet_utils.correct_pad` (equal to SAME for a 3x3 kernel).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from research.models import layers

TAPS = ("stem", "stage1", "stage2", "stage3", "stage4", "stage5", "pre_logits", "logits")

# v1: (pointwise features, stride) of each block, per stage.
V1_STAGES = (((64, 1),), ((128, 2), (128, 1)), ((256, 2), (256, 1)), ((512, 2),) + ((512, 1),) * 5,
             ((1024, 2), (1024, 1)))
# v2: (expansion, features, stride) of each block, per stage.
V2_STAGES = (((1, 16, 1),), ((6, 24, 2), (6, 24, 1)), ((6, 32, 2), (6, 32, 1), (6, 32, 1)),
             ((6, 64, 2),) + ((6, 64, 1),) * 3 + ((6, 96, 1),) * 3,
             ((6, 160, 2), (6, 160, 1), (6, 160, 1), (6, 320, 1)))
VARIANTS = {"mobilenet_v1": V1_STAGES, "mobilenet_v2": V2_STAGES}
# Keras' first block id of each version: v1 counts from 1 (conv_dw_1), v2 from 0 (expanded_conv, then block_1).
FIRST_BLOCK_ID = {"mobilenet_v1": 1, "mobilenet_v2": 0}
STEM_FEATURES = 32
TOP_FEATURES = 1280  # v2's Conv_1
V1_DROPOUT = 1e-3  # Keras' default before conv_preds, in training

BN_SETTINGS = {"mobilenet_v1": dict(epsilon=1e-3, momentum=0.99),
               "mobilenet_v2": dict(epsilon=1e-3, momentum=0.999)}


def keras_blocks(arch: str):
    """(Keras block id, stage, block within the stage), both 1-based, of each block in order."""
    block_id = FIRST_BLOCK_ID[arch]
    for s, stage in enumerate(VARIANTS[arch], start=1):
        for j in range(1, len(stage) + 1):
            yield block_id, s, j
            block_id += 1


def correct_pad(size: Sequence[int], kernel: int):
    """keras.applications.imagenet_utils.correct_pad, before v2's stride-2 depthwise convs."""
    return tuple((kernel // 2 - (1 - n % 2), kernel // 2) for n in size)


V1_STRIDE2_PAD = ((0, 1), (0, 1))  # v1's ZeroPadding2D before its stride-2 depthwise convs


def depthwise(conv, x, stride: int, padding, name: str):
    """A 3x3 depthwise conv, in float32 (see MobileNet._partials)."""
    c = x.shape[-1]
    return conv(c, (3, 3), (stride, stride), padding=padding, feature_group_count=c, dtype=jnp.float32,
                name=name)(x)


class V1Block(nn.Module):
    """Depthwise 3x3, BN, ReLU6, pointwise 1x1, BN, ReLU6."""
    features: int
    stride: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        padding = V1_STRIDE2_PAD if self.stride == 2 else layers.pad(1)
        x = depthwise(self.conv, x, self.stride, padding, "depthwise_conv")
        x = layers.relu6(self.norm(name="depthwise_bn")(x))
        x = self.conv(self.features, (1, 1), padding=layers.pad(0), name="pointwise_conv")(x)
        return layers.relu6(self.norm(name="pointwise_bn")(x))


class V2Block(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 linear projection; a skip where stride 1 and in == out."""
    expansion: int
    features: int
    stride: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        residual = x
        if self.expansion != 1:
            x = self.conv(x.shape[-1] * self.expansion, (1, 1), padding=layers.pad(0), name="expand_conv")(x)
            x = layers.relu6(self.norm(name="expand_bn")(x))
        padding = correct_pad(x.shape[1:3], 3) if self.stride == 2 else layers.pad(1)
        x = depthwise(self.conv, x, self.stride, padding, "depthwise_conv")
        x = layers.relu6(self.norm(name="depthwise_bn")(x))
        x = self.conv(self.features, (1, 1), padding=layers.pad(0), name="project_conv")(x)
        x = self.norm(name="project_bn")(x)
        if self.stride == 1 and residual.shape[-1] == self.features:
            x = x + residual
        return x


class Stage(nn.Module):
    blocks: Sequence[Sequence[int]]
    version: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        block = V1Block if self.version == 1 else V2Block
        for j, args in enumerate(self.blocks, start=1):
            x = block(*args, self.conv, self.norm, name=f"block{j}")(x)
        return x


class MobileNet(nn.Module):
    """Returns a dict of the requested taps; computes nothing past the deepest one. In training, v1's head dropout
    needs a `dropout` rng."""
    arch: str = "mobilenet_v2"
    layout: str = "keras"
    num_classes: int = 1000
    dtype: Any = jnp.float32
    frozen_bn: frozenset = frozenset()  # BatchNorm paths kept in inference mode when training

    def _partials(self, train: bool):
        """As in EfficientNetLite: with a reduced-precision `dtype`, depthwise convs run in float32, the other
        convs accumulate into float32 and BatchNorm runs in float32."""
        conv = layers.conv_partial(self.dtype, use_bias=False)
        if self.dtype != jnp.float32:
            conv = functools.partial(conv, conv_general_dilated=functools.partial(
                lax.conv_general_dilated, preferred_element_type=jnp.float32))
        return conv, layers.norm_partial(jnp.float32, train, **BN_SETTINGS[self.arch], frozen=self.frozen_bn)

    @nn.compact
    def __call__(self, x, train: bool = False, taps: Sequence[str] = ("logits",)):
        version = 1 if self.arch == "mobilenet_v1" else 2
        conv, norm = self._partials(train)
        got = layers.TapCollector(taps)

        x = layers.ConvBN(STEM_FEATURES, 3, 2, "same", conv, norm, name="stem")(x.astype(self.dtype))
        if got.add("stem", x):
            return got.out
        for s, blocks in enumerate(VARIANTS[self.arch], start=1):
            x = Stage(blocks, version, conv, norm, name=f"stage{s}")(x)
            if got.add(f"stage{s}", x):
                return got.out
        if version == 2:
            x = layers.ConvBN(TOP_FEATURES, 1, 1, "symmetric", conv, norm, name="top")(x)
        x = jnp.mean(x, axis=(1, 2))
        if got.add("pre_logits", x) or not self.num_classes:
            return got.out
        if version == 1:
            x = nn.Dropout(V1_DROPOUT, deterministic=not train)(x)
        got.add("logits", layers.Head(self.num_classes, self.dtype, name="head")(x))
        return got.out
