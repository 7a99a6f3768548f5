"""ResNet v2 (pre-activation) as keras.applications builds it: ResNet50V2, ResNet101V2, ResNet152V2.

Keras' v2 follows TF-slim, not the paper's layout: each block is BN, ReLU (`preact`), then 1x1, 3x3, 1x1 convs
(the 1x1s to 4x width carry biases, the others BN + ReLU after them); the first block of each of Keras' stacks
(conv2..conv5) projects the pre-activated input with a 1x1 conv (`_0_conv`, bias, stride 1); the *last* block of
conv2..conv4 has the stride, on its 3x3 conv (zero-padded by 1), and its shortcut is a 1x1 max-pool of stride 2
(a subsampling `x[::2, ::2]`). The stem is a 7x7 conv with bias and no BN, then a max-pool whose padding is
zeros (not -inf: no ReLU precedes it). After the last block, `post_bn` + ReLU; all BN epsilon 1.001e-5.

Stages here are resolutions, as in every family: `stage1`..`stage4` end where the map is 1/4, 1/8, 1/16, 1/32 of
the input, so a strided block starts the next stage (Keras `conv2_block3` is `stage2/block1`, `conv3_block1`
`stage2/block2`; ResNet50V2 has 2, 4, 6, 4 blocks per stage) and each stage tap has the channels of ResNet v1's
(256, 512, 1024, 2048). `stem` is the max-pool (1/4); `top` is `post_bn` + ReLU (what Keras returns without its
top); `pre_logits` its global average; `logits` pre-softmax.

Param paths: `stem/conv1`, `stage{s}/block{j}/{preact_bn, conv1, bn1, conv2, bn2, conv3, shortcut}`, `top/bn`,
`head/fc`.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.models import heads, layers
from research.models.blocks import BNReLU
from research.models.registry import Arch, Family, Source, TapCollector, arch_by_counts

TAPS = ("stem", "stage1", "stage2", "stage3", "stage4", "top", "pre_logits", "logits")
# arch -> blocks in Keras' stacks conv2..conv5 (bottleneck widths 64, 128, 256, 512)
KERAS_STACKS = {"resnet50_v2": (3, 4, 6, 3), "resnet101_v2": (3, 4, 23, 3), "resnet152_v2": (3, 8, 36, 3)}
WIDTHS = (64, 128, 256, 512)


def blocks(stacks: Sequence[int]) -> list[list[tuple[int, int, int, int, bool]]]:
    """Keras' blocks regrouped into stages by resolution: per stage, per block (Keras group, Keras block,
    width, stride, projection shortcut). Keras groups count the stem as group 1 (conv2 is the first stack)."""
    stages = [[]]
    for i, (n, width) in enumerate(zip(stacks, WIDTHS)):
        for b in range(1, n + 1):
            stride = 2 if b == n and i < len(stacks) - 1 else 1
            if stride == 2:
                stages.append([])
            stages[-1].append((i + 2, b, width, stride, b == 1))
    return stages


class Block(nn.Module):
    """Pre-activation bottleneck; the shortcut reads the pre-activation where it projects, else the input."""
    features: int
    stride: int
    projection: bool
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        preact = nn.relu(self.norm(name="preact_bn")(x))
        if self.projection:
            shortcut = self.conv(4 * self.features, (1, 1), padding=layers.pad(0), use_bias=True,
                                 name="shortcut")(preact)
        else:
            shortcut = x[:, ::self.stride, ::self.stride] if self.stride > 1 else x  # Keras' 1x1 max-pool
        y = self.conv(self.features, (1, 1), padding=layers.pad(0), name="conv1")(preact)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.features, (3, 3), (self.stride, self.stride), padding=layers.pad(1), name="conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = self.conv(4 * self.features, (1, 1), padding=layers.pad(0), use_bias=True, name="conv3")(y)
        return shortcut + y


class Stage(nn.Module):
    blocks: Sequence[tuple]
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        for j, (_group, _block, width, stride, projection) in enumerate(self.blocks, start=1):
            x = Block(width, stride, projection, self.conv, self.norm, name=f"block{j}")(x)
        return x


class Stem(nn.Module):
    conv: Any

    @nn.compact
    def __call__(self, x):
        x = self.conv(64, (7, 7), (2, 2), padding=layers.pad(3), use_bias=True, name="conv1")(x)
        x = jnp.pad(x, ((0, 0), *layers.pad(1), (0, 0)))  # Keras' ZeroPadding2D: zeros, after no ReLU
        return layers.max_pool(x, 3, 2)


class ResNetV2(nn.Module):
    """Returns a dict of the requested taps; computes nothing past the deepest one."""
    stacks: Sequence[int]
    num_classes: int = 1000
    dtype: Any = jnp.float32
    frozen_bn: frozenset = frozenset()  # BatchNorm paths kept in inference mode when training

    @nn.compact
    def __call__(self, x, train: bool = False, taps: Sequence[str] = ("logits",)):
        conv = layers.conv_partial(self.dtype, use_bias=False)
        norm = layers.norm_partial(self.dtype, train, **layers.BN_SETTINGS["keras"], frozen=self.frozen_bn)
        got = TapCollector(taps)

        x = Stem(conv, name="stem")(x.astype(self.dtype))
        if got.add("stem", x):
            return got.out
        for s, stage in enumerate(blocks(self.stacks), start=1):
            x = Stage(tuple(stage), conv, norm, name=f"stage{s}")(x)
            if got.add(f"stage{s}", x):
                return got.out
        x = BNReLU(norm, name="top")(x)
        if got.add("top", x):
            return got.out
        return heads.pooled_logits(got, x, self.num_classes, self.dtype)


# Keras' layer suffix within a block -> (our module within the block, kind)
KERAS_BLOCK_NAMES = {"preact_bn": ("preact_bn", "bn"), "1_conv": ("conv1", "conv"), "1_bn": ("bn1", "bn"),
                     "2_conv": ("conv2", "conv"), "2_bn": ("bn2", "bn"), "3_conv": ("conv3", "conv"),
                     "0_conv": ("shortcut", "conv")}
KERAS_OTHER_NAMES = {"conv1_conv": ("stem/conv1", "conv"), "post_bn": ("top/bn", "bn"),
                     "predictions": ("head/fc", "dense")}


def keras_names(arch: str) -> dict[str, tuple[str, str]]:
    table = dict(KERAS_OTHER_NAMES)
    for s, stage in enumerate(blocks(KERAS_STACKS[arch]), start=1):
        for j, (group, block, *_rest) in enumerate(stage, start=1):
            for suffix, (module, kind) in KERAS_BLOCK_NAMES.items():
                table[f"conv{group}_block{block}_{suffix}"] = (f"stage{s}/block{j}/{module}", kind)
    return table


def detect_keras(names: dict) -> str | None:
    if "conv2_block1_preact_bn" not in names:
        return None
    return arch_by_counts(names, r"conv{}_block\d+_1_conv", range(2, 6), KERAS_STACKS, "ResNetV2")


def build(spec, config, **common):
    return ResNetV2(config, **common)


FAMILY = Family(
    name="resnet_v2",
    archs={arch: Arch(stacks, ("keras",)) for arch, stacks in KERAS_STACKS.items()},
    build=build,
    taps=TAPS,
    modules=("stem", "stage1", "stage2", "stage3", "stage4", "top", "head"),
    top_block="stage4",
    bn={"keras": layers.BN_SETTINGS["keras"]},
    sources={"keras": Source("tf", keras_names, detect_keras, "ResNet50V2/101V2/152V2")},
)
