"""EfficientNetV2 as keras.applications builds it: B0-B3, S, M, L.

A family of its own rather than more members of research/models/efficientnet.py: its first block groups are
Fused-MBConv (one kxk conv in place of expand + depthwise, `FusedMBConv` here), its widths round without B0-B7's
"never 10% down" rule, its BatchNorm momentum is 0.9, its stochastic depth differs, and its group count varies
(M and L have 7 block groups, the others 6), while its input constants are fixed in the code, not stored in the
file. What it shares is imported: the MBConv block with squeeze-excitation (`blocks.InvertedResidual`), the
Keras name table (`efficientnet.keras_table`), and in-model normalisation (`layers.Normalization`).

Input: 0-255 pixels (preprocessing "raw"); the model rescales inside as Keras' default `include_preprocessing=True`
does, with which the ImageNet files were made: B0-B3 Rescaling(1/255) then Normalization with ImageNet's mean and
std squared (constants, not in the file), S/M/L Rescaling(1/128, offset -1).

Param paths: `stem/conv`, `stem/bn`; Fused-MBConv blocks `stage{s}/block{j}/{expand,project}_{conv,bn}` (no
`expand_*` at expansion 1, where `project_conv` is the kxk conv); MBConv blocks as EfficientNet's, with
`se_reduce`, `se_expand`; `top/conv`, `top/bn`; `head/fc`. Taps: `stem`, `stage1`..`stage6` (M, L: `stage7`) =
Keras' block groups `block1`..`block7`, `top`, `pre_logits`, `logits`. `top_block` is `stage6`, the first group at
1/32 of the input in every member (M and L add a seventh at the same resolution), so that the preset means the same
blocks everywhere.

Keras' stochastic depth rate of block b is 0.2 * b / (the sum of the unscaled repeats), which exceeds 0.2 in the
deeper B1-B3 (their repeats are scaled up); reproduced as is.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.models import efficientnet, heads, layers
from research.models.blocks import ConvBN, InvertedResidual, mobile_partials, residual
from research.models.registry import Arch, Family, Source, TapCollector

TAPS = efficientnet.TAPS

# (fused, expand ratio, kernel, stride, in channels, out channels, repeats, se ratio) per block group: Keras'
# DEFAULT_BLOCKS_ARGS (conv_type 1 is Fused-MBConv).
B_BLOCKS = ((1, 1, 3, 1, 32, 16, 1, 0), (1, 4, 3, 2, 16, 32, 2, 0), (1, 4, 3, 2, 32, 48, 2, 0),
            (0, 4, 3, 2, 48, 96, 3, 0.25), (0, 6, 3, 1, 96, 112, 5, 0.25), (0, 6, 3, 2, 112, 192, 8, 0.25))
S_BLOCKS = ((1, 1, 3, 1, 24, 24, 2, 0), (1, 4, 3, 2, 24, 48, 4, 0), (1, 4, 3, 2, 48, 64, 4, 0),
            (0, 4, 3, 2, 64, 128, 6, 0.25), (0, 6, 3, 1, 128, 160, 9, 0.25), (0, 6, 3, 2, 160, 256, 15, 0.25))
M_BLOCKS = ((1, 1, 3, 1, 24, 24, 3, 0), (1, 4, 3, 2, 24, 48, 5, 0), (1, 4, 3, 2, 48, 80, 5, 0),
            (0, 4, 3, 2, 80, 160, 7, 0.25), (0, 6, 3, 1, 160, 176, 14, 0.25), (0, 6, 3, 2, 176, 304, 18, 0.25),
            (0, 6, 3, 1, 304, 512, 5, 0.25))
L_BLOCKS = ((1, 1, 3, 1, 32, 32, 4, 0), (1, 4, 3, 2, 32, 64, 7, 0), (1, 4, 3, 2, 64, 96, 7, 0),
            (0, 4, 3, 2, 96, 192, 10, 0.25), (0, 6, 3, 1, 192, 224, 19, 0.25), (0, 6, 3, 2, 224, 384, 25, 0.25),
            (0, 6, 3, 1, 384, 640, 7, 0.25))
TOP_FEATURES = 1280
DROPOUT = 0.2
DROP_CONNECT = 0.2
BN_SETTINGS = dict(epsilon=1e-3, momentum=0.9)
# Keras' include_preprocessing: (scale, offset, mean, var) of the B members and of S/M/L.
B_INPUT = (1 / 255, 0.0, efficientnet.IMAGENET_MEAN, tuple(s * s for s in efficientnet.IMAGENET_STD))
SML_INPUT = (1 / 128, -1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


@dataclasses.dataclass(frozen=True)
class Config:
    """One member: its block groups (fused, expand, kernel, stride, out, repeats, se ratio), stem and top widths,
    the per-block stochastic depth rates, and the input's rescale/normalisation."""
    stages: tuple
    stem: int
    top: int
    drop_connect: tuple
    input: tuple


def keras_config(blocks, width: float, depth: float, inputs) -> Config:
    """`blocks` scaled as keras.applications' EfficientNetV2 does: filters times `width` rounded to a multiple of 8
    (at least 8), repeats times `depth` rounded up; block b's drop rate 0.2 * b / the unscaled repeat count."""
    def filters(n):
        return int(max(8, int(n * width + 4) // 8 * 8))

    stages = tuple((f, e, k, s, filters(out), int(math.ceil(depth * r)), se) for f, e, k, s, _in, out, r, se in blocks)
    total = sum(stage[5] for stage in stages)
    unscaled = float(sum(block[6] for block in blocks))
    return Config(stages, filters(blocks[0][4]), filters(TOP_FEATURES),
                  tuple(DROP_CONNECT * b / unscaled for b in range(total)), inputs)


# our arch -> (blocks, width, depth, default size, input)
KERAS_MEMBERS = {
    "efficientnet_v2_b0": (B_BLOCKS, 1.0, 1.0, 224, B_INPUT),
    "efficientnet_v2_b1": (B_BLOCKS, 1.0, 1.1, 240, B_INPUT),
    "efficientnet_v2_b2": (B_BLOCKS, 1.1, 1.2, 260, B_INPUT),
    "efficientnet_v2_b3": (B_BLOCKS, 1.2, 1.4, 300, B_INPUT),
    "efficientnet_v2_s": (S_BLOCKS, 1.0, 1.0, 384, SML_INPUT),
    "efficientnet_v2_m": (M_BLOCKS, 1.0, 1.0, 480, SML_INPUT),
    "efficientnet_v2_l": (L_BLOCKS, 1.0, 1.0, 480, SML_INPUT),
}
VARIANTS = {arch: keras_config(b, w, d, i) for arch, (b, w, d, _size, i) in KERAS_MEMBERS.items()}


class FusedMBConv(nn.Module):
    """Fused-MBConv: a kxk conv expanding the channels, BN, swish, a 1x1 linear projection, BN; at expansion 1 the
    kxk conv is the projection itself, with BN and swish. A skip where stride 1 and in == out, with stochastic
    depth in training. (Keras' Fused-MBConv has no squeeze-excitation in any member.)"""
    expansion: int
    kernel: int
    stride: int
    features: int
    conv: Any
    norm: Any
    activation: Callable = layers.swish
    drop_connect: float = 0.0
    train: bool = False

    @nn.compact
    def __call__(self, x):
        shortcut = x
        k, s = self.kernel, self.stride
        padding = layers.conv_padding(x.shape[1:3], k, s, "same")
        if self.expansion != 1:
            x = self.conv(x.shape[-1] * self.expansion, (k, k), (s, s), padding=padding, name="expand_conv")(x)
            x = self.activation(self.norm(name="expand_bn")(x))
            x = self.norm(name="project_bn")(self.conv(self.features, (1, 1), padding=layers.pad(0),
                                                       name="project_conv")(x))
        else:
            x = self.conv(self.features, (k, k), (s, s), padding=padding, name="project_conv")(x)
            x = self.activation(self.norm(name="project_bn")(x))
        if s == 1 and shortcut.shape[-1] == self.features:
            x = residual(x, shortcut, self.drop_connect, self.train)
        return x


class Stage(nn.Module):
    fused: bool
    expand_ratio: int
    kernel: int
    stride: int
    features: int
    repeats: int
    se_ratio: float
    drop_connect: Sequence[float]
    train: bool
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        for j in range(self.repeats):
            stride, rate, name = self.stride if j == 0 else 1, self.drop_connect[j], f"block{j + 1}"
            if self.fused:
                x = FusedMBConv(self.expand_ratio, self.kernel, stride, self.features, self.conv, self.norm,
                                layers.swish, rate, self.train, name=name)(x)
            else:
                x = InvertedResidual(self.expand_ratio, self.kernel, stride, self.features, self.conv, self.norm,
                                     "same", layers.swish, rate, self.train, self.se_ratio, name=name)(x)
        return x


class EfficientNetV2(nn.Module):
    """Returns a dict of the requested taps; computes nothing past the deepest one. In training, dropout and
    stochastic depth need a `dropout` rng."""
    config: Config
    num_classes: int = 1000
    dtype: Any = jnp.float32
    frozen_bn: frozenset = frozenset()

    @nn.compact
    def __call__(self, x, train: bool = False, taps: Sequence[str] = ("logits",)):
        cfg = self.config
        conv, norm = mobile_partials(self.dtype, train, BN_SETTINGS, self.frozen_bn)
        got = TapCollector(taps)

        scale, offset, mean, var = cfg.input
        x = layers.Normalization(scale, offset, mean, var, name="normalize")(x).astype(self.dtype)
        x = ConvBN(cfg.stem, 3, 2, "same", conv, norm, layers.swish, name="stem")(x)
        if got.add("stem", x):
            return got.out
        index = 0
        for s, (fused, expand, kernel, stride, features, repeats, se) in enumerate(cfg.stages, start=1):
            x = Stage(bool(fused), expand, kernel, stride, features, repeats, se,
                      cfg.drop_connect[index:index + repeats], train, conv, norm, name=f"stage{s}")(x)
            index += repeats
            if got.add(f"stage{s}", x):
                return got.out
        x = ConvBN(cfg.top, 1, 1, "symmetric", conv, norm, layers.swish, name="top")(x)
        if got.add("top", x):
            return got.out
        return heads.pooled_logits(got, x, self.num_classes, self.dtype, train, DROPOUT)


# Keras' V2 names its depthwise conv `dwconv2`; the rest are EfficientNet's.
KERAS_BLOCK_NAMES = {("dwconv2" if k == "dwconv" else k): v for k, v in efficientnet.KERAS_BLOCK_NAMES.items()}


def keras_names(arch: str) -> dict[str, tuple[str, str]]:
    return efficientnet.keras_table([stage[5] for stage in VARIANTS[arch].stages], KERAS_BLOCK_NAMES)


def detect_keras(layers_: dict) -> str | None:
    if "stem_conv" not in layers_ or not any(name.endswith("_dwconv2") for name in layers_):
        return None
    return efficientnet.match_keras(layers_, {arch: (c.stem, tuple(stage[5] for stage in c.stages), c.top)
                                              for arch, c in VARIANTS.items()}, "EfficientNetV2")


def build(spec, config, **common):
    return EfficientNetV2(config, **common)


FAMILY = Family(
    name="efficientnet_v2",
    archs={arch: Arch(config, ("keras",), KERAS_MEMBERS[arch][3],
                      taps=None if len(config.stages) == 7 else tuple(t for t in TAPS if t != "stage7"))
           for arch, config in VARIANTS.items()},
    build=build,
    taps=TAPS,
    modules=("stem", *(f"stage{i}" for i in range(1, 8)), "top", "head"),  # stage7: M and L only
    top_block="stage6",
    bn={"keras": BN_SETTINGS},
    sources={"keras": Source("raw", keras_names, detect_keras, "EfficientNetV2B0-B3/S/M/L")},
)
