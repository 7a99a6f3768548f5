"""InceptionV3 (Szegedy et al. 2016) and Inception-ResNet-v2 (Szegedy et al. 2017) as keras.applications builds
them.

Both are built from one unit, conv (no bias) -> BatchNorm without scale (`scale=False`: beta, mean and variance
only; epsilon 1e-3) -> ReLU, with "same" (stride 1) or "valid" padding; every stride-2 conv and max-pool is
VALID. Input scaled to [-1, 1] (Keras' "tf" preprocessing); default input 299 px, any size from 75 px.
An Inception block ("mixed") concatenates branches: each an optional 3x3 pool (average: stride 1, SAME, padding
not counted, as TF; max: stride 2, VALID), then units in sequence, where the last units of InceptionV3's mixed9/10
branches split in two (1x3 and 3x1, concatenated). An Inception-ResNet block adds `scale` times a 1x1 conv (with
bias, no BatchNorm) of its concatenated branches to its input, then a ReLU (not after block8_10, scale 1.0).

Stages by resolution, each starting with the op that brings it there (a max-pool or a reduction block):
- `stem`: the three 3x3 convs (the first stride 2) at 1/2;
- `stage1`: max-pool, 1x1 conv to 80, 3x3 conv to 192, at 1/4;
- `stage2` (1/8): max-pool, then V3's mixed0-2 / Inception-ResNet's mixed_5b and block35_1..10;
- `stage3` (1/16): V3's mixed3 (reduction) and mixed4-7 / mixed_6a (reduction) and block17_1..20;
- `stage4` (1/32): V3's mixed8 (reduction), mixed9, mixed10 / mixed_7a (reduction) and block8_1..10;
- Inception-ResNet's `top` module is conv_7b (1x1 to 1536), which `pre_logits` pools (no tap of its own).

Param paths: units are `conv{k}`, `bn{k}` within their module (the split ones `conv{k}a`, `conv{k}b`):
`stem/conv1`, `stage1/bn2`; V3 blocks are `stage{s}/block{j}` numbered within the stage (mixed0 =
`stage2/block1`, mixed3 = `stage3/block1`, mixed8 = `stage4/block1`), their branches Keras' variable names
(`stage3/block2/branch7x7dbl/conv3`); Inception-ResNet's reduction blocks keep Keras' names
(`stage3/mixed_6a/branch_1/conv2`), its residual blocks keep Keras' index (block17_5 = `stage3/block5`, its 1x1 conv
`stage3/block5/conv`), conv_7b is `top/conv1`, `top/bn1`; `head/fc`. Keras builds the units without names
(`conv2d_57`, `batch_normalization_57`, numbered per session): they are matched in creation order
(`registry.keras_auto_names`), which is the order of the tables below.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.models import heads, layers
from research.models.registry import Arch, Family, Source, TapCollector, keras_auto_names

TAPS = ("stem", "stage1", "stage2", "stage3", "stage4", "pre_logits", "logits")
BN_SETTINGS = dict(epsilon=1e-3, momentum=0.99)  # Keras' BatchNormalization defaults


def unit(features: int, kernel, stride: int = 1, padding: str = "same") -> tuple:
    """A conv-BN-ReLU unit: (features, (kh, kw), stride, padding)."""
    return features, (kernel, kernel) if isinstance(kernel, int) else tuple(kernel), stride, padding


def reduce(features: int) -> tuple:
    """The 3x3 stride-2 VALID unit that halves the resolution in stems and reduction blocks."""
    return unit(features, 3, 2, "valid")


@dataclasses.dataclass(frozen=True)
class Block:
    """`branches`: (name, pool, units) each, concatenated in order. `scale`: None for an Inception block; else
    an Inception-ResNet block, x + scale * conv1x1(branches), then a ReLU if `activation`."""
    branches: tuple
    scale: float | None = None
    activation: bool = True


@dataclasses.dataclass(frozen=True)
class Network:
    stages: tuple  # stage2..stage4: (starts with a max-pool, ((module name, Block), ...))
    top: tuple = ()  # units after the last stage (Inception-ResNet's conv_7b)
    residual_names: tuple = ()  # per stage, Keras' prefix of its residual blocks ("block35"): `{prefix}_{k}_conv`


STEM = (reduce(32), unit(32, 3, padding="valid"), unit(64, 3))
STAGE1 = (unit(80, 1, padding="valid"), unit(192, 3, padding="valid"))


# InceptionV3's blocks, by Keras' variable names.
def v3_a(pool_features: int) -> Block:  # mixed0-2, 35x35 at 299 px
    return Block((("branch1x1", None, (unit(64, 1),)),
                  ("branch5x5", None, (unit(48, 1), unit(64, 5))),
                  ("branch3x3dbl", None, (unit(64, 1), unit(96, 3), unit(96, 3))),
                  ("branch_pool", "avg", (unit(pool_features, 1),))))


def v3_c(width: int) -> Block:  # mixed4-7, 17x17
    return Block((("branch1x1", None, (unit(192, 1),)),
                  ("branch7x7", None, (unit(width, 1), unit(width, (1, 7)), unit(192, (7, 1)))),
                  ("branch7x7dbl", None, (unit(width, 1), unit(width, (7, 1)), unit(width, (1, 7)),
                                          unit(width, (7, 1)), unit(192, (1, 7)))),
                  ("branch_pool", "avg", (unit(192, 1),))))


V3_MIXED3 = Block((("branch3x3", None, (reduce(384),)),
                   ("branch3x3dbl", None, (unit(64, 1), unit(96, 3), reduce(96))),
                   ("branch_pool", "max", ())))
V3_MIXED8 = Block((("branch3x3", None, (unit(192, 1), reduce(320))),
                   ("branch7x7x3", None, (unit(192, 1), unit(192, (1, 7)), unit(192, (7, 1)), reduce(192))),
                   ("branch_pool", "max", ())))
V3_SPLIT = (unit(384, (1, 3)), unit(384, (3, 1)))
V3_E = Block((("branch1x1", None, (unit(320, 1),)),  # mixed9, mixed10, 8x8
              ("branch3x3", None, (unit(384, 1), V3_SPLIT)),
              ("branch3x3dbl", None, (unit(448, 1), unit(384, 3), V3_SPLIT)),
              ("branch_pool", "avg", (unit(192, 1),))))


def numbered(blocks, first: int = 1) -> tuple:
    return tuple((f"block{j}", block) for j, block in enumerate(blocks, start=first))


INCEPTION_V3 = Network(stages=(
    (True, numbered((v3_a(32), v3_a(64), v3_a(64)))),
    (False, numbered((V3_MIXED3, v3_c(128), v3_c(160), v3_c(160), v3_c(192)))),
    (False, numbered((V3_MIXED8, V3_E, V3_E))),
))

# Inception-ResNet-v2's blocks, by Keras' variable names.
MIXED_5B = Block((("branch_0", None, (unit(96, 1),)),
                  ("branch_1", None, (unit(48, 1), unit(64, 5))),
                  ("branch_2", None, (unit(64, 1), unit(96, 3), unit(96, 3))),
                  ("branch_pool", "avg", (unit(64, 1),))))
MIXED_6A = Block((("branch_0", None, (reduce(384),)),
                  ("branch_1", None, (unit(256, 1), unit(256, 3), reduce(384))),
                  ("branch_pool", "max", ())))
MIXED_7A = Block((("branch_0", None, (unit(256, 1), reduce(384))),
                  ("branch_1", None, (unit(256, 1), reduce(288))),
                  ("branch_2", None, (unit(256, 1), unit(288, 3), reduce(320))),
                  ("branch_pool", "max", ())))
BLOCK35 = (("branch_0", None, (unit(32, 1),)),
           ("branch_1", None, (unit(32, 1), unit(32, 3))),
           ("branch_2", None, (unit(32, 1), unit(48, 3), unit(64, 3))))
BLOCK17 = (("branch_0", None, (unit(192, 1),)),
           ("branch_1", None, (unit(128, 1), unit(160, (1, 7)), unit(192, (7, 1)))))
BLOCK8 = (("branch_0", None, (unit(192, 1),)),
          ("branch_1", None, (unit(192, 1), unit(224, (1, 3)), unit(256, (3, 1)))))

INCEPTION_RESNET_V2 = Network(
    stages=(
        (True, (("mixed_5b", MIXED_5B),) + numbered([Block(BLOCK35, 0.17)] * 10)),
        (False, (("mixed_6a", MIXED_6A),) + numbered([Block(BLOCK17, 0.1)] * 20)),
        (False, (("mixed_7a", MIXED_7A),) + numbered([Block(BLOCK8, 0.2)] * 9 + [Block(BLOCK8, 1.0, False)])),
    ),
    top=(unit(1536, 1),),
    residual_names=("block35", "block17", "block8"),
)
NETWORKS = {"inception_v3": INCEPTION_V3, "inception_resnet_v2": INCEPTION_RESNET_V2}


def unit_names(units) -> list[tuple[str, tuple]]:
    """(suffix, unit) in order: `1`, `2`, ... and `{k}a`, `{k}b` for the halves of a split."""
    out = []
    for k, u in enumerate(units, start=1):
        out += [(f"{k}{half}", v) for v, half in zip(u, "ab")] if isinstance(u[0], tuple) else [(str(k), u)]
    return out


class Branch(nn.Module):
    """An optional pool, then conv-BN-ReLU units; a split's halves read the same input and are concatenated."""
    pool: str | None
    units: tuple
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        if self.pool == "avg":
            x = nn.avg_pool(x, (3, 3), padding="SAME", count_include_pad=False)
        elif self.pool == "max":
            x = layers.max_pool(x, 3, 2)
        for k, u in enumerate(self.units, start=1):
            if isinstance(u[0], tuple):  # a split
                x = jnp.concatenate([conv_bn_relu(self.conv, self.norm, x, v, f"{k}{half}")
                                     for v, half in zip(u, "ab")], axis=-1)
            else:
                x = conv_bn_relu(self.conv, self.norm, x, u, str(k))
        return x


def conv_bn_relu(conv, norm, x, unit_: tuple, suffix: str):
    """One unit, as `conv{suffix}`, `bn{suffix}` of the calling module."""
    features, kernel, stride, padding = unit_
    pads = (tuple(layers.conv_padding((n,), k, stride)[0] for n, k in zip(x.shape[1:3], kernel))
            if padding == "same" else layers.pad(0))
    x = conv(features, kernel, (stride, stride), padding=pads, name=f"conv{suffix}")(x)
    return nn.relu(norm(use_scale=False, name=f"bn{suffix}")(x))


class Mixed(nn.Module):
    block: Block
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        y = jnp.concatenate([Branch(pool, units, self.conv, self.norm, name=name)(x)
                             for name, pool, units in self.block.branches], axis=-1)
        if self.block.scale is None:
            return y
        x = x + self.conv(x.shape[-1], (1, 1), padding=layers.pad(0), use_bias=True, name="conv")(y) * self.block.scale
        return nn.relu(x) if self.block.activation else x


class Stage(nn.Module):
    pool: bool
    blocks: tuple
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        if self.pool:
            x = layers.max_pool(x, 3, 2)
        for name, block in self.blocks:
            x = Mixed(block, self.conv, self.norm, name=name)(x)
        return x


class Inception(nn.Module):
    """Returns a dict of the requested taps; computes nothing past the deepest one."""
    arch: str = "inception_v3"
    num_classes: int = 1000
    dtype: Any = jnp.float32
    frozen_bn: frozenset = frozenset()  # BatchNorm paths kept in inference mode when training

    @nn.compact
    def __call__(self, x, train: bool = False, taps: Sequence[str] = ("logits",)):
        network = NETWORKS[self.arch]
        conv = layers.conv_partial(self.dtype, use_bias=False)
        norm = layers.norm_partial(self.dtype, train, **BN_SETTINGS, frozen=self.frozen_bn)
        got = TapCollector(taps)

        x = Branch(None, STEM, conv, norm, name="stem")(x.astype(self.dtype))
        if got.add("stem", x):
            return got.out
        x = Branch("max", STAGE1, conv, norm, name="stage1")(x)
        if got.add("stage1", x):
            return got.out
        for s, (pool, blocks) in enumerate(network.stages, start=2):
            x = Stage(pool, blocks, conv, norm, name=f"stage{s}")(x)
            if got.add(f"stage{s}", x):
                return got.out
        if network.top:
            x = Branch(None, network.top, conv, norm, name="top")(x)
        return heads.pooled_logits(got, x, self.num_classes, self.dtype)


AUTO_NAMED = ("conv2d", "batch_normalization")  # Keras' automatic names of the units' layers


def keras_units(network: Network):
    """(conv path, bn path) of every unit that Keras builds without a name, in creation order."""
    groups = [("stem", STEM), ("stage1", STAGE1)]
    for s, (_pool, blocks) in enumerate(network.stages, start=2):
        groups += [(f"stage{s}/{name}/{branch}", units)
                   for name, block in blocks for branch, _, units in block.branches]
    for path, units in groups:
        for suffix, _ in unit_names(units):
            yield f"{path}/conv{suffix}", f"{path}/bn{suffix}"


def keras_names(arch: str) -> dict[str, tuple[str, str]]:
    network = NETWORKS[arch]
    table = {"predictions": ("head/fc", "dense")}
    for i, (conv, bn) in enumerate(keras_units(network), start=1):
        table[f"conv2d_{i}"] = (conv, "conv")
        table[f"batch_normalization_{i}"] = (bn, "bn_noscale")
    for s, prefix in enumerate(network.residual_names, start=2):
        for name, block in network.stages[s - 2][1]:
            if block.scale is not None:
                table[f"{prefix}_{name.removeprefix('block')}_conv"] = (f"stage{s}/{name}/conv", "conv")
    if network.top:
        table.update({"conv_7b": ("top/conv1", "conv"), "conv_7b_bn": ("top/bn1", "bn_noscale")})
    return table


def canonical_keras_names(layers: dict) -> dict[str, str]:
    return keras_auto_names(layers, AUTO_NAMED)


def detect_keras(layers: dict) -> str | None:
    """Inception-ResNet-v2 by its named layers; InceptionV3, whose layers Keras names automatically, by having
    exactly its units and classifier."""
    if "conv_7b" in layers and "block35_1_conv" in layers:
        return "inception_resnet_v2"
    names = set(canonical_keras_names(layers).values())
    return "inception_v3" if names and names <= set(keras_names("inception_v3")) and "conv2d_94" in names else None


def build(spec, config, **common):
    return Inception(spec.arch, **common)


FAMILY = Family(
    name="inception",
    archs={arch: Arch(network, ("keras",), input_size=299) for arch, network in NETWORKS.items()},
    build=build,
    taps=TAPS,
    modules=("stem", "stage1", "stage2", "stage3", "stage4", "top", "head"),  # only Inception-ResNet has `top`
    top_block="stage4",
    bn={"keras": BN_SETTINGS},
    sources={"keras": Source("tf", keras_names, detect_keras, "InceptionV3/InceptionResNetV2",
                             canonical_keras_names)},
)
