"""DenseNet-BC as keras.applications builds it: DenseNet121, DenseNet169, DenseNet201 (growth rate 32, 4 x 32
bottleneck width, compression 0.5), differing only in dense layers per block.

A dense layer is BN, ReLU, 1x1 conv to 128, BN, ReLU, 3x3 conv to 32 (padded by 1), concatenated onto its
input; a transition is BN, ReLU, 1x1 conv to half the channels, 2x2 average pool (stride 2, odd sizes floored).
No conv biases, BN epsilon 1.001e-5. The stem is a 7x7 conv (padded by 3), BN, ReLU, then a 3x3 max-pool of
stride 2 padded by 1 (zeros after a ReLU, which -inf equals). After the last block, BN + ReLU.

Taps: `stem` is the max-pool (1/4); `stage1`..`stage4` are the dense blocks' outputs (Keras conv2..conv5, at 1/4,
1/8, 1/16, 1/32), so a transition starts the stage after it (Keras `pool2` is `stage2/transition`); `top` is the
final BN + ReLU (what Keras returns without its top); `pre_logits` its global average; `logits` pre-softmax.

Param paths: `stem/conv1`, `stem/bn1`, `stage{s}/transition/{bn,conv}`, `stage{s}/block{j}/{bn0, conv1, bn1,
conv2}` (Keras `conv{s+1}_block{j}_{0_bn, 1_conv, 1_bn, 2_conv}`), `top/bn`, `head/fc`.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.models import heads, layers
from research.models.blocks import BNReLU
from research.models.registry import Arch, Family, Source, TapCollector, arch_by_counts

TAPS = ("stem", "stage1", "stage2", "stage3", "stage4", "top", "pre_logits", "logits")
BLOCKS = {"densenet121": (6, 12, 24, 16), "densenet169": (6, 12, 32, 32), "densenet201": (6, 12, 48, 32)}
GROWTH = 32
BOTTLENECK = 4 * GROWTH
STEM_FEATURES = 64


def avg_pool2(x):
    """2x2 average pool, stride 2, no padding (odd rows/columns dropped), as Keras' AveragePooling2D(2, 2)."""
    n, h, w, c = x.shape
    x = x[:, :h // 2 * 2, :w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class DenseLayer(nn.Module):
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        y = nn.relu(self.norm(name="bn0")(x))
        y = self.conv(BOTTLENECK, (1, 1), padding=layers.pad(0), name="conv1")(y)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(GROWTH, (3, 3), padding=layers.pad(1), name="conv2")(y)
        return jnp.concatenate([x, y], axis=-1)


class Transition(nn.Module):
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        x = nn.relu(self.norm(name="bn")(x))
        x = self.conv(x.shape[-1] // 2, (1, 1), padding=layers.pad(0), name="conv")(x)
        return avg_pool2(x)


class Stage(nn.Module):
    """A transition (all but the first stage), then `layers` dense layers."""
    layers: int
    transition: bool
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        if self.transition:
            x = Transition(self.conv, self.norm, name="transition")(x)
        for j in range(1, self.layers + 1):
            x = DenseLayer(self.conv, self.norm, name=f"block{j}")(x)
        return x


class Stem(nn.Module):
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        x = self.conv(STEM_FEATURES, (7, 7), (2, 2), padding=layers.pad(3), name="conv1")(x)
        x = nn.relu(self.norm(name="bn1")(x))
        return layers.max_pool(x, 3, 2, padding=1)


class DenseNet(nn.Module):
    """Returns a dict of the requested taps; computes nothing past the deepest one."""
    blocks: Sequence[int]
    num_classes: int = 1000
    dtype: Any = jnp.float32
    frozen_bn: frozenset = frozenset()  # BatchNorm paths kept in inference mode when training

    @nn.compact
    def __call__(self, x, train: bool = False, taps: Sequence[str] = ("logits",)):
        conv = layers.conv_partial(self.dtype, use_bias=False)
        norm = layers.norm_partial(self.dtype, train, **layers.BN_SETTINGS["keras"], frozen=self.frozen_bn)
        got = TapCollector(taps)

        x = Stem(conv, norm, name="stem")(x.astype(self.dtype))
        if got.add("stem", x):
            return got.out
        for s, n in enumerate(self.blocks, start=1):
            x = Stage(n, s > 1, conv, norm, name=f"stage{s}")(x)
            if got.add(f"stage{s}", x):
                return got.out
        x = BNReLU(norm, name="top")(x)
        if got.add("top", x):
            return got.out
        return heads.pooled_logits(got, x, self.num_classes, self.dtype)


KERAS_LAYER_NAMES = {"0_bn": ("bn0", "bn"), "1_conv": ("conv1", "conv"), "1_bn": ("bn1", "bn"),
                     "2_conv": ("conv2", "conv")}
KERAS_OTHER_NAMES = {"conv1_conv": ("stem/conv1", "conv"), "conv1_bn": ("stem/bn1", "bn"),
                     "bn": ("top/bn", "bn"), "predictions": ("head/fc", "dense")}


def keras_names(arch: str) -> dict[str, tuple[str, str]]:
    """Keras counts the stem as group 1: dense block conv{s+1}, and transition pool{s} before it."""
    table = dict(KERAS_OTHER_NAMES)
    for s, n in enumerate(BLOCKS[arch], start=1):
        if s > 1:
            table.update({f"pool{s}_bn": (f"stage{s}/transition/bn", "bn"),
                          f"pool{s}_conv": (f"stage{s}/transition/conv", "conv")})
        for j in range(1, n + 1):
            for suffix, (module, kind) in KERAS_LAYER_NAMES.items():
                table[f"conv{s + 1}_block{j}_{suffix}"] = (f"stage{s}/block{j}/{module}", kind)
    return table


def detect_keras(names: dict) -> str | None:
    if "pool2_conv" not in names or "conv2_block1_2_conv" not in names:
        return None
    return arch_by_counts(names, r"conv{}_block\d+_2_conv", range(2, 6), BLOCKS, "DenseNet")


def build(spec, config, **common):
    return DenseNet(config, **common)


FAMILY = Family(
    name="densenet",
    archs={arch: Arch(blocks, ("keras",)) for arch, blocks in BLOCKS.items()},
    build=build,
    taps=TAPS,
    modules=("stem", "stage1", "stage2", "stage3", "stage4", "top", "head"),
    top_block="stage4",
    bn={"keras": layers.BN_SETTINGS["keras"]},
    sources={"keras": Source("torch", keras_names, detect_keras, "DenseNet121/169/201")},
)
