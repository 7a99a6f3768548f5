"""Xception as keras.applications builds it (Chollet 2017).

Separable convs (a 3x3 depthwise conv, then a 1x1 pointwise conv; no biases, no activation between them), each
followed by BatchNorm (epsilon 1e-3, with scale); ReLU; input scaled to [-1, 1] (Keras' "tf" preprocessing);
default input 299 px, any size from 71 px.

Stages by resolution (Keras block ids): `stem` = block1, the two 3x3 convs (VALID, the first stride 2) at 1/2;
`stage1` = block2 (1/4), `stage2` = block3 (1/8), `stage3` = block4 and the eight middle-flow blocks 5-12 (1/16),
`stage4` = block13 and block14 (1/32). Each tap is the output of the last block at that resolution; block2, 3, 4
and 13 end with a 3x3 stride-2 max-pool (TF SAME, padded with -inf) added to a 1x1 stride-2 projection of their
input; blocks 5-12 add their input; block14 has no shortcut. `pre_logits` is the global average pool of block14,
`logits` the pre-softmax classifier.

Param paths: `stem/{conv,bn}{1,2}`; `stage{s}/block{j}/sepconv{k}/{depthwise,pointwise}`,
`stage{s}/block{j}/bn{k}`, `stage{s}/block{j}/downsample/{conv,bn}`; `head/fc`. Keras names the four projections
and their BatchNorms automatically (`conv2d`, `batch_normalization`, numbered per session): they are matched
in creation order (`registry.keras_auto_names`).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.models import heads, layers
from research.models.blocks import SeparableConv, mobile_partials
from research.models.resnet import Downsample
from research.models.registry import Arch, Family, Source, TapCollector, keras_auto_names

TAPS = ("stem", "stage1", "stage2", "stage3", "stage4", "pre_logits", "logits")
BN_SETTINGS = dict(epsilon=1e-3, momentum=0.99)  # Keras' BatchNormalization defaults
STEM = (32, 64)  # the two 3x3 convs of block1

# Per stage, per block: (widths of its separable convs, shortcut). "project": the block ends with a stride-2
# max-pool and adds a 1x1 stride-2 projection of its input; "identity": it adds its input. Blocks with a shortcut
# are pre-activation (ReLU, sepconv, BN); block14, without one, is post-activation (sepconv, BN, ReLU).
STAGES = (
    (((128, 128), "project"),),
    (((256, 256), "project"),),
    (((728, 728), "project"),) + (((728, 728, 728), "identity"),) * 8,
    (((728, 1024), "project"), ((1536, 2048), None)),
)


def max_pool_same(x, window: int, stride: int):
    """Max-pool with TF's SAME padding (the extra pixel bottom/right), padded with -inf."""
    padding = layers.conv_padding(x.shape[1:3], window, stride)
    return layers.max_pool(jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf), window, stride)


class Block(nn.Module):
    widths: Sequence[int]
    shortcut: str | None
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        residual = x
        preact = self.shortcut is not None
        for k, width in enumerate(self.widths, start=1):
            x = nn.relu(x) if preact else x
            x = self.norm(name=f"bn{k}")(SeparableConv(width, self.conv, name=f"sepconv{k}")(x))
            x = x if preact else nn.relu(x)
        if self.shortcut == "project":
            x = max_pool_same(x, 3, 2)
            residual = Downsample(x.shape[-1], 2, self.conv, self.norm, name="downsample")(residual)
        return x + residual if self.shortcut else x


class Stem(nn.Module):
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        for k, (features, stride) in enumerate(zip(STEM, (2, 1)), start=1):
            x = self.conv(features, (3, 3), (stride, stride), padding=layers.pad(0), name=f"conv{k}")(x)
            x = nn.relu(self.norm(name=f"bn{k}")(x))
        return x


class Stage(nn.Module):
    blocks: Sequence
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        for j, (widths, shortcut) in enumerate(self.blocks, start=1):
            x = Block(widths, shortcut, self.conv, self.norm, name=f"block{j}")(x)
        return x


class Xception(nn.Module):
    """Returns a dict of the requested taps; computes nothing past the deepest one."""
    num_classes: int = 1000
    dtype: Any = jnp.float32
    frozen_bn: frozenset = frozenset()  # BatchNorm paths kept in inference mode when training

    @nn.compact
    def __call__(self, x, train: bool = False, taps: Sequence[str] = ("logits",)):
        # Depthwise convs and BatchNorm in float32 under bf16, as in the mobile families (blocks.mobile_partials).
        conv, norm = mobile_partials(self.dtype, train, BN_SETTINGS, self.frozen_bn)
        got = TapCollector(taps)

        x = Stem(conv, norm, name="stem")(x.astype(self.dtype))
        if got.add("stem", x):
            return got.out
        for s, blocks in enumerate(STAGES, start=1):
            x = Stage(blocks, conv, norm, name=f"stage{s}")(x)
            if got.add(f"stage{s}", x):
                return got.out
        return heads.pooled_logits(got, x, self.num_classes, self.dtype)


AUTO_NAMED = ("conv2d", "batch_normalization")  # the projections' layers, named by Keras' session counters


def keras_names(arch: str) -> dict[str, tuple[str, str]]:
    table = {"predictions": ("head/fc", "dense")}
    for k in (1, 2):
        table[f"block1_conv{k}"] = (f"stem/conv{k}", "conv")
        table[f"block1_conv{k}_bn"] = (f"stem/bn{k}", "bn")
    block_id, projection = 2, 1
    for s, blocks in enumerate(STAGES, start=1):
        for j, (widths, shortcut) in enumerate(blocks, start=1):
            path = f"stage{s}/block{j}"
            for k in range(1, len(widths) + 1):
                table[f"block{block_id}_sepconv{k}"] = (f"{path}/sepconv{k}", "separable")
                table[f"block{block_id}_sepconv{k}_bn"] = (f"{path}/bn{k}", "bn")
            if shortcut == "project":
                table[f"conv2d_{projection}"] = (f"{path}/downsample/conv", "conv")
                table[f"batch_normalization_{projection}"] = (f"{path}/downsample/bn", "bn")
                projection += 1
            block_id += 1
    return table


def canonical_keras_names(layers: dict) -> dict[str, str]:
    return keras_auto_names(layers, AUTO_NAMED)


def detect_keras(layers: dict) -> str | None:
    return "xception" if "block1_conv1" in layers and "block14_sepconv2" in layers else None


def build(spec, config, **common):
    return Xception(**common)


FAMILY = Family(
    name="xception",
    archs={"xception": Arch(STAGES, ("keras",), input_size=299)},
    build=build,
    taps=TAPS,
    modules=("stem", "stage1", "stage2", "stage3", "stage4", "head"),
    top_block="stage4",
    bn={"keras": BN_SETTINGS},
    sources={"keras": Source("tf", keras_names, detect_keras, "Xception", canonical_keras_names)},
)
