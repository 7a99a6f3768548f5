"""MobileNetV3Small and MobileNetV3Large as keras.applications builds them: width 1.0 and 0.75, and the
minimalistic variants (3x3 kernels, ReLU, no squeeze-excitation): the six that Keras publishes ImageNet weights for.

Arch names: `mobilenet_v3_{small,large}` (alpha 1.0), `mobilenet_v3_{small,large}_075` (alpha 0.75),
`mobilenet_v3_{small,large}_minimalistic` (alpha 1.0).

Blocks are `blocks.InvertedResidual` with Keras' rounding (`_depth`: to a multiple of 8, never more than 10%
down) of the expanded and squeezed widths, per-block ReLU or hard-swish, and a squeeze-excitation with a ReLU
and a hard-sigmoid gate; BatchNorm epsilon 1e-3, momentum 0.999; stride-2 depthwise convs pad as TF's SAME
(Keras' `correct_pad` + "valid").

Param paths: `stem/conv`, `stem/bn`; `stage{s}/block{j}/{expand,depthwise,project}_{conv,bn}` and
`stage{s}/block{j}/se_{reduce,expand}`; Keras' `conv_1` (1x1 to 6x the last block's width, BN, activation) is
`top/conv`, `top/bn`; Keras' `conv_2` (a 1x1 conv with bias on the pooled 1x1 map, i.e. a dense layer, followed
by the activation) is `top_fc`; the classifier (Keras' `logits`, also a 1x1 conv on a 1x1 map) is `head/fc`.

Taps: `stem` (1/2); `stage1`..`stage4` end the 1/4, 1/8, 1/16, 1/32 resolutions (Keras block ids, Small:
0 | 1-2 | 3-7 | 8-10; Large: 0-2 | 3-5 | 6-11 | 12-14); `top` is `conv_1`'s output; `pool` its global average
(what a Keras model without top gives with pooling="avg"); `pre_logits` is the vector the classifier reads,
`top_fc`'s output after its activation (1024 wide for Small, 1280 for Large), so only a file with its top has it;
`logits` pre-softmax. A fresh head reads `pre_logits` where the file has it, else `pool`.

Input: 0-255 pixels (preprocessing "raw"); the model rescales to [-1, 1] inside, as Keras'
`include_preprocessing=True` Rescaling(1/127.5, offset=-1) does (a constant: it holds no weights, so a file
saved with `include_preprocessing=False` cannot be told apart and would be fed [-1, 1] pixels scaled twice).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.errors import UserError
from research.models import layers
from research.models.blocks import ConvBN, InvertedResidual, mobile_partials
from research.models.heads import Head
from research.models.registry import HEAD, Arch, Family, Source, TapCollector

TAPS = ("stem", "stage1", "stage2", "stage3", "stage4", "top", "pool", "pre_logits", "logits")
STEM_FEATURES = 16
SE_RATIO = 0.25
DROPOUT = 0.2  # Keras' default before `logits`, in training
BN_SETTINGS = dict(epsilon=1e-3, momentum=0.999)

# Keras' blocks: (expansion, out channels, kernel, stride, squeeze-excitation, activation). Kernel "k" is 5
# (3 when minimalistic); activation "relu" is always ReLU, "act" hard-swish (ReLU when minimalistic); SE is
# dropped when minimalistic. Grouped into the four stages.
SMALL = (((1, 16, 3, 2, True, "relu"),),
         ((72 / 16, 24, 3, 2, False, "relu"), (88 / 24, 24, 3, 1, False, "relu")),
         ((4, 40, "k", 2, True, "act"), (6, 40, "k", 1, True, "act"), (6, 40, "k", 1, True, "act"),
          (3, 48, "k", 1, True, "act"), (3, 48, "k", 1, True, "act")),
         ((6, 96, "k", 2, True, "act"), (6, 96, "k", 1, True, "act"), (6, 96, "k", 1, True, "act")))
LARGE = (((1, 16, 3, 1, False, "relu"), (4, 24, 3, 2, False, "relu"), (3, 24, 3, 1, False, "relu")),
         ((3, 40, "k", 2, True, "relu"), (3, 40, "k", 1, True, "relu"), (3, 40, "k", 1, True, "relu")),
         ((6, 80, 3, 2, False, "act"), (2.5, 80, 3, 1, False, "act"), (2.3, 80, 3, 1, False, "act"),
          (2.3, 80, 3, 1, False, "act"), (6, 112, 3, 1, True, "act"), (6, 112, 3, 1, True, "act")),
         ((6, 160, "k", 2, True, "act"), (6, 160, "k", 1, True, "act"), (6, 160, "k", 1, True, "act")))
LAST_POINT = {"small": 1024, "large": 1280}  # Keras' `last_point_ch`: conv_2's width (alpha <= 1 keeps it)


def depth(v: float, divisor: int = 8) -> int:
    """Keras' `_depth`: the nearest multiple of `divisor` (at least `divisor`), one more if that is >10% down."""
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * v else rounded


@dataclasses.dataclass(frozen=True)
class Block:
    expansion: float
    expanded: int
    features: int
    kernel: int
    stride: int
    se_features: int  # 0: none
    hard: bool  # hard-swish, else ReLU


@dataclasses.dataclass(frozen=True)
class Config:
    stages: tuple  # of tuples of Block
    top: int
    last_point: int
    hard: bool  # the stem's, top's and top_fc's activation: hard-swish, else ReLU


def config(size: str, alpha: float = 1.0, minimalistic: bool = False) -> Config:
    """A member's widths and block options, rounded as keras.applications' MobileNetV3 does."""
    stages, channels = [], STEM_FEATURES
    for stage in {"small": SMALL, "large": LARGE}[size]:
        blocks = []
        for expansion, out, kernel, stride, se, act in stage:
            expanded = depth(channels * expansion) if expansion != 1 else channels
            kernel = (3 if minimalistic else 5) if kernel == "k" else kernel
            se_features = depth(expanded * SE_RATIO) if se and not minimalistic else 0
            features = depth(out * alpha)
            blocks.append(Block(expansion, expanded, features, kernel, stride, se_features,
                                act == "act" and not minimalistic))
            channels = features
        stages.append(tuple(blocks))
    return Config(tuple(stages), depth(channels * 6), LAST_POINT[size], not minimalistic)


VARIANTS = {f"mobilenet_v3_{size}{suffix}": config(size, alpha, minimalistic)
            for size in ("small", "large")
            for suffix, alpha, minimalistic in (("", 1.0, False), ("_075", 0.75, False), ("_minimalistic", 1.0, True))}


def activation(hard: bool) -> Callable:
    return layers.hard_swish if hard else nn.relu


class Stage(nn.Module):
    blocks: Sequence[Block]
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        for j, b in enumerate(self.blocks, start=1):
            x = InvertedResidual(b.expansion, b.kernel, b.stride, b.features, self.conv, self.norm,
                                 activation=activation(b.hard), expanded=b.expanded, se_features=b.se_features,
                                 se_activation=nn.relu, se_gate=layers.hard_sigmoid, name=f"block{j}")(x)
        return x


class MobileNetV3(nn.Module):
    """Returns a dict of the requested taps; computes nothing past the deepest one. In training, the dropout
    before the classifier needs a `dropout` rng."""
    config: Config
    include_top: bool = True
    num_classes: int = 1000
    dtype: Any = jnp.float32
    frozen_bn: frozenset = frozenset()  # BatchNorm paths kept in inference mode when training

    @nn.compact
    def __call__(self, x, train: bool = False, taps: Sequence[str] = ("logits",)):
        cfg = self.config
        act = activation(cfg.hard)
        conv, norm = mobile_partials(self.dtype, train, BN_SETTINGS, self.frozen_bn)
        got = TapCollector(taps)

        x = layers.Normalization(1 / 127.5, -1.0)(x).astype(self.dtype)
        x = ConvBN(STEM_FEATURES, 3, 2, "same", conv, norm, act, name="stem")(x)
        if got.add("stem", x):
            return got.out
        for s, blocks in enumerate(cfg.stages, start=1):
            x = Stage(blocks, conv, norm, name=f"stage{s}")(x)
            if got.add(f"stage{s}", x):
                return got.out
        x = ConvBN(cfg.top, 1, 1, "symmetric", conv, norm, act, name="top")(x)
        if got.add("top", x):
            return got.out
        x = jnp.mean(x, axis=(1, 2))
        if got.add("pool", x) or not (self.include_top or self.num_classes):
            return got.out
        if self.include_top:
            x = act(nn.Dense(cfg.last_point, dtype=self.dtype, param_dtype=jnp.float32, name="top_fc")(x))
            if got.add("pre_logits", x) or not self.num_classes:
                return got.out
        x = nn.Dropout(DROPOUT, deterministic=not train)(x)
        got.add("logits", Head(self.num_classes, self.dtype, name=HEAD)(x))
        return got.out


# Keras' layer names per block, prefix `expanded_conv_` (block 0) or `expanded_conv_{i}_`.
KERAS_BLOCK_NAMES = {
    "expand": ("expand_conv", "conv"), "expand_bn": ("expand_bn", "bn"),
    "depthwise": ("depthwise_conv", "depthwise"), "depthwise_bn": ("depthwise_bn", "bn"),
    "squeeze_excite_conv": ("se_reduce", "conv"), "squeeze_excite_conv_1": ("se_expand", "conv"),
    "project": ("project_conv", "conv"), "project_bn": ("project_bn", "bn"),
}
# `conv_2` and `logits` are 1x1 convs with bias on a 1x1 map: dense layers (`conv_dense`).
KERAS_OTHER_NAMES = {
    "conv": ("stem/conv", "conv"), "conv_bn": ("stem/bn", "bn"), "conv_1": ("top/conv", "conv"),
    "conv_1_bn": ("top/bn", "bn"), "conv_2": ("top_fc", "conv_dense"), "logits": ("head/fc", "conv_dense"),
}
MARK = "expanded_conv_1_expand"  # MobileNetV2's blocks are `block_{i}_`, its first `expanded_conv_`


def keras_names(arch: str) -> dict[str, tuple[str, str]]:
    """Keras layer -> (param path, kind); blocks the member lacks a layer in (no expansion, no SE) leave it out
    of the file, and it goes unused here."""
    table = dict(KERAS_OTHER_NAMES)
    i = 0
    for s, blocks in enumerate(VARIANTS[arch].stages, start=1):
        for j in range(1, len(blocks) + 1):
            prefix = f"expanded_conv_{i}_" if i else "expanded_conv_"
            for name, (module, kind) in KERAS_BLOCK_NAMES.items():
                table[prefix + name] = (f"stage{s}/block{j}/{module}", kind)
            i += 1
    return table


def keras_signature(layers_: dict) -> tuple:
    """(block count, last block's width, conv_1's width, has squeeze-excitation, last depthwise kernel)."""
    count = 1 + sum(1 for name in layers_ if name.startswith("expanded_conv_") and name.endswith("_project")
                    and name != "expanded_conv_project")
    last = f"expanded_conv_{count - 1}_"
    shape = lambda name: layers_[name][0].shape if name in layers_ else None  # noqa: E731
    return (count, (shape(last + "project") or (None,))[-1], (shape("conv_1") or (None,))[-1],
            any("squeeze_excite" in name for name in layers_), (shape(last + "depthwise") or (None,))[0])


def expected_signature(cfg: Config) -> tuple:
    blocks = [b for stage in cfg.stages for b in stage]
    return len(blocks), blocks[-1].features, cfg.top, any(b.se_features for b in blocks), blocks[-1].kernel


def detect_keras(layers_: dict) -> str | None:
    if MARK not in layers_:
        return None
    found = keras_signature(layers_)
    arch = next((a for a, cfg in VARIANTS.items() if expected_signature(cfg) == found), None)
    if arch is None:
        raise UserError(f"a Keras MobileNetV3 with (blocks, last block width, conv_1 width, squeeze-excitation, "
                        f"last kernel) {found}, which is none of {', '.join(VARIANTS)} (alpha 1.0 and 0.75, "
                        "minimalistic 1.0)")
    return arch


def build(spec, config, **common):
    return MobileNetV3(config, spec.include_top, **common)


FAMILY = Family(
    name="mobilenet_v3",
    archs={arch: Arch(cfg, ("keras",)) for arch, cfg in VARIANTS.items()},
    build=build,
    taps=TAPS,
    modules=("stem", "stage1", "stage2", "stage3", "stage4", "top", "top_fc", "head"),
    top_block="stage4",
    bn={"keras": BN_SETTINGS},
    tap_modules={"pre_logits": "top_fc"},
    top_taps=("pre_logits",),
    feed_taps=("pre_logits", "pool"),
    sources={"keras": Source("raw", keras_names, detect_keras, "MobileNetV3Small/Large")},
)
