"""MobileNet (v1) and MobileNetV2 as keras.applications builds them, at every width Keras ships weights for.

Archs: `mobilenet_v1` and `mobilenet_v2` are alpha 1.0; other widths append alpha: `mobilenet_v1_{0.25,0.5,0.75}`,
`mobilenet_v2_{0.35,0.5,0.75,1.3,1.4}`. Widths as Keras computes them: v1 `int(channels * alpha)`; v2 the stem
`_make_divisible(32 * alpha, 8)`, each block's projection `_make_divisible(int(channels * alpha), 8)` (nearest
multiple of 8, at least 8, never more than 10% down), the expansion 6x the block's input, and the 1x1 conv to 1280
scaled only for alpha > 1.

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
the input size, v2's by `imagenet_utils.correct_pad` (equal to SAME, which `blocks.InvertedResidual` uses).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.errors import UserError
from research.models import heads, layers
from research.models.blocks import ConvBN, InvertedResidual, depthwise, mobile_partials
from research.models.registry import Arch, Family, Source, TapCollector

TAPS = ("stem", "stage1", "stage2", "stage3", "stage4", "stage5", "pre_logits", "logits")

# v1: (pointwise features, stride) of each block, per stage.
V1_STAGES = (((64, 1),), ((128, 2), (128, 1)), ((256, 2), (256, 1)), ((512, 2),) + ((512, 1),) * 5,
             ((1024, 2), (1024, 1)))
# v2: (expansion, features, stride) of each block, per stage.
V2_STAGES = (((1, 16, 1),), ((6, 24, 2), (6, 24, 1)), ((6, 32, 2), (6, 32, 1), (6, 32, 1)),
             ((6, 64, 2),) + ((6, 64, 1),) * 3 + ((6, 96, 1),) * 3,
             ((6, 160, 2), (6, 160, 1), (6, 160, 1), (6, 320, 1)))
STAGES = {1: V1_STAGES, 2: V2_STAGES}
# Keras' first block id of each version: v1 counts from 1 (conv_dw_1), v2 from 0 (expanded_conv, then block_1).
FIRST_BLOCK_ID = {1: 1, 2: 0}
STEM_FEATURES = 32
TOP_FEATURES = 1280  # v2's Conv_1
V1_DROPOUT = 1e-3  # Keras' default before conv_preds, in training
# The widths Keras publishes ImageNet weights for, per version; arch names: mobilenet_v{version}[_{alpha}].
ALPHAS = {1: (0.25, 0.5, 0.75, 1.0), 2: (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)}
ARCHS = {f"mobilenet_v{v}" + ("" if a == 1.0 else f"_{a}"): (v, a) for v, alphas in ALPHAS.items() for a in alphas}

BN_SETTINGS = {1: dict(epsilon=1e-3, momentum=0.99), 2: dict(epsilon=1e-3, momentum=0.999)}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Keras' `_make_divisible`: the nearest multiple of `divisor` (at least `divisor`), never below 90%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def widths(version: int, alpha: float):
    """(stem features, per stage the block args with alpha applied, v2's top features or None)."""
    if version == 1:
        stages = tuple(tuple((int(f * alpha), s) for f, s in stage) for stage in V1_STAGES)
        return int(STEM_FEATURES * alpha), stages, None
    stages = tuple(tuple((e, make_divisible(int(f * alpha)), s) for e, f, s in stage) for stage in V2_STAGES)
    top = make_divisible(TOP_FEATURES * alpha) if alpha > 1.0 else TOP_FEATURES
    return make_divisible(STEM_FEATURES * alpha), stages, top


def keras_blocks(version: int):
    """(Keras block id, stage, block within the stage), both 1-based, of each block in order."""
    block_id = FIRST_BLOCK_ID[version]
    for s, stage in enumerate(STAGES[version], start=1):
        for j in range(1, len(stage) + 1):
            yield block_id, s, j
            block_id += 1


V1_STRIDE2_PAD = ((0, 1), (0, 1))  # v1's ZeroPadding2D before its stride-2 depthwise convs


class V1Block(nn.Module):
    """Depthwise 3x3, BN, ReLU6, pointwise 1x1, BN, ReLU6."""
    features: int
    stride: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        padding = V1_STRIDE2_PAD if self.stride == 2 else layers.pad(1)
        x = depthwise(self.conv, x, 3, self.stride, padding, "depthwise_conv")
        x = layers.relu6(self.norm(name="depthwise_bn")(x))
        x = self.conv(self.features, (1, 1), padding=layers.pad(0), name="pointwise_conv")(x)
        return layers.relu6(self.norm(name="pointwise_bn")(x))


class Stage(nn.Module):
    blocks: Sequence[Sequence[int]]
    version: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        for j, args in enumerate(self.blocks, start=1):
            if self.version == 1:
                x = V1Block(*args, self.conv, self.norm, name=f"block{j}")(x)
            else:
                expansion, features, stride = args
                x = InvertedResidual(expansion, 3, stride, features, self.conv, self.norm, name=f"block{j}")(x)
        return x


class MobileNet(nn.Module):
    """Returns a dict of the requested taps; computes nothing past the deepest one. In training, v1's head dropout
    needs a `dropout` rng."""
    version: int = 2
    alpha: float = 1.0
    num_classes: int = 1000
    dtype: Any = jnp.float32
    frozen_bn: frozenset = frozenset()  # BatchNorm paths kept in inference mode when training

    @nn.compact
    def __call__(self, x, train: bool = False, taps: Sequence[str] = ("logits",)):
        version = self.version
        conv, norm = mobile_partials(self.dtype, train, BN_SETTINGS[version], self.frozen_bn)
        got = TapCollector(taps)
        stem, stages, top = widths(version, self.alpha)

        x = ConvBN(stem, 3, 2, "same", conv, norm, name="stem")(x.astype(self.dtype))
        if got.add("stem", x):
            return got.out
        for s, blocks in enumerate(stages, start=1):
            x = Stage(blocks, version, conv, norm, name=f"stage{s}")(x)
            if got.add(f"stage{s}", x):
                return got.out
        if version == 2:
            x = ConvBN(top, 1, 1, "symmetric", conv, norm, name="top")(x)
        return heads.pooled_logits(got, x, self.num_classes, self.dtype, train, V1_DROPOUT if version == 1 else 0.0)


# Keras' MobileNet layer names, by the Keras block id `i` (v1 from 1, v2 from 0; v2's block 0 is
# `expanded_conv`, prefix `p`): layer -> (our module within the block, kind).
KERAS_BLOCK_NAMES = {
    1: {"conv_dw_{i}": ("depthwise_conv", "depthwise"), "conv_dw_{i}_bn": ("depthwise_bn", "bn"),
                     "conv_pw_{i}": ("pointwise_conv", "conv"), "conv_pw_{i}_bn": ("pointwise_bn", "bn")},
    2: {"{p}_expand": ("expand_conv", "conv"), "{p}_expand_BN": ("expand_bn", "bn"),
                     "{p}_depthwise": ("depthwise_conv", "depthwise"), "{p}_depthwise_BN": ("depthwise_bn", "bn"),
                     "{p}_project": ("project_conv", "conv"), "{p}_project_BN": ("project_bn", "bn")},
}
# v1's `conv_preds` is a 1x1 conv with bias on a 1x1 map, converted to a dense layer (`conv_dense`).
KERAS_OTHER_NAMES = {
    1: {"conv1": ("stem/conv", "conv"), "conv1_bn": ("stem/bn", "bn"),
                     "conv_preds": ("head/fc", "conv_dense")},
    2: {"Conv1": ("stem/conv", "conv"), "bn_Conv1": ("stem/bn", "bn"), "Conv_1": ("top/conv", "conv"),
                     "Conv_1_bn": ("top/bn", "bn"), "predictions": ("head/fc", "dense")},
}
# Per version: a layer only it has, and the layers whose output channels tell the widths apart (v2's stem is 16
# at both 0.35 and 0.5).
KERAS_WIDTH_LAYERS = {1: ("conv_dw_1", ("conv1", "conv_pw_13")), 2: ("block_1_expand", ("Conv1", "block_16_project"))}


def keras_widths(version: int, alpha: float) -> dict[str, int]:
    stem, stages, _top = widths(version, alpha)
    return dict(zip(KERAS_WIDTH_LAYERS[version][1], (stem, stages[-1][-1][-2 if version == 2 else 0])))


def keras_names(arch: str) -> dict[str, tuple[str, str]]:
    version = ARCHS[arch][0]
    table = dict(KERAS_OTHER_NAMES[version])
    for i, stage, block in keras_blocks(version):
        prefix = f"block_{i}" if i else "expanded_conv"
        for name, (module, kind) in KERAS_BLOCK_NAMES[version].items():
            table[name.format(i=i, p=prefix)] = (f"stage{stage}/block{block}/{module}", kind)
    return table


def detect_keras(layers: dict) -> str | None:
    version = next((v for v, (mark, _) in KERAS_WIDTH_LAYERS.items() if mark in layers), None)
    if version is None:
        return None
    got = {name: layers[name][0].shape[-1] if name in layers else None for name in KERAS_WIDTH_LAYERS[version][1]}
    arch = next((a for a, (v, alpha) in ARCHS.items() if v == version and keras_widths(v, alpha) == got), None)
    if arch is None:
        raise UserError(f"a Keras MobileNet v{version} of a width Keras publishes no weights for (output channels "
                        f"{got}); known alphas: {', '.join(map(str, ALPHAS[version]))}")
    return arch


def build(spec, config, **common):
    return MobileNet(*config, **common)


FAMILY = Family(
    name="mobilenet",
    archs={arch: Arch(config, ("keras",), bn=BN_SETTINGS[config[0]]) for arch, config in ARCHS.items()},
    build=build,
    taps=TAPS,
    modules=("stem", *(f"stage{i}" for i in range(1, 6)), "top", "head"),  # only v2 has `top`
    top_block="stage5",
    sources={"keras": Source("tf", keras_names, detect_keras, "MobileNet/MobileNetV2 (every Keras alpha)")},
)
