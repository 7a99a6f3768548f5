"""EfficientNet-Lite: MBConv stages without squeeze-excitation, ReLU6 throughout, BatchNorm epsilon 1e-3.

Param paths: `stem/conv`, `stem/bn`, `stage{s}/block{j}/{expand,depthwise,project}_{conv,bn}` (stage 1 has no
expansion), `top/conv`, `top/bn` (the 1x1 conv to 1280; not `head`, which is the classifier everywhere, so that a
fresh head never drops it) and `head/fc`.

Padding: the TF originals use "SAME", which for stride 2 pads one pixel less on the top/left than on the
bottom/right (and for stride 1 pads k//2 on each side); a PyTorch port may instead pad k//2 symmetrically.
Both are here (`padding="same"` / `"symmetric"`), computed explicitly from the static input size. The Lite0
weights use "same": they were converted from the TF checkpoints, and their intended loader (EfficientNet-Lite-
PyTorch, a fork of EfficientNet-PyTorch) pads with `Conv2dStaticSamePadding`, which is TF's asymmetric SAME. Real
photos agree but do not decide it alone: with center-cropped photos both paddings give the right top-1,
while "same" gives the expected class more probability on 4 of 5 photos.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from research.models import layers

TAPS = ("stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "head", "pre_logits",
        "logits")

# (expand ratio, kernel, stride, out channels, repeats) per MBConv stage.
LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM_FEATURES = 32
TOP_FEATURES = 1280
VARIANTS = {"efficientnet_lite0": LITE0_STAGES}

# EfficientNet-PyTorch (and TF): BN epsilon 1e-3, torch momentum 0.01, i.e. Flax momentum 0.99.
BN_SETTINGS = dict(epsilon=1e-3, momentum=0.99)
PADDINGS = layers.PADDINGS
# The padding each layout's weights were trained with.
LAYOUT_PADDING = {"efficientnet_pytorch": "same"}
DROPOUT = 0.2  # before the classifier, in training
DROP_CONNECT = 0.2  # stochastic depth of the residual branches, growing linearly to this at the last block


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, kxk depthwise, 1x1 project; a skip where stride 1 and in == out."""
    expand_ratio: int
    kernel: int
    stride: int
    features: int
    padding: str
    drop_connect: float
    train: bool
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        residual = x
        hidden = x.shape[-1] * self.expand_ratio
        if self.expand_ratio != 1:
            x = self.conv(hidden, (1, 1), padding=layers.pad(0), name="expand_conv")(x)
            x = layers.relu6(self.norm(name="expand_bn")(x))
        k, s = self.kernel, self.stride
        x = self.conv(hidden, (k, k), (s, s), padding=layers.conv_padding(x.shape[1:3], k, s, self.padding),
                      feature_group_count=hidden, dtype=jnp.float32,  # float32: see EfficientNetLite._partials
                      name="depthwise_conv")(x)
        x = layers.relu6(self.norm(name="depthwise_bn")(x))
        x = self.conv(self.features, (1, 1), padding=layers.pad(0), name="project_conv")(x)
        x = self.norm(name="project_bn")(x)
        if self.stride == 1 and residual.shape[-1] == self.features:
            if self.drop_connect:
                x = nn.Dropout(self.drop_connect, broadcast_dims=(1, 2, 3), deterministic=not self.train)(x)
            x = x + residual
        return x


class EfficientNetLite(nn.Module):
    """Returns a dict of the requested taps; computes nothing past the deepest one.

    In training (`train=True`) dropout and stochastic depth need a `dropout` rng."""
    stages: Sequence[Sequence[int]] = LITE0_STAGES
    layout: str = "efficientnet_pytorch"
    num_classes: int = 1000
    dtype: Any = jnp.float32
    padding: str | None = None  # None: the layout's own
    dropout: float = DROPOUT
    drop_connect: float = DROP_CONNECT
    frozen_bn: frozenset = frozenset()  # BatchNorm paths kept in inference mode when training

    def _partials(self, train: bool):
        """Reduced precision (`dtype` bfloat16) is applied only where this family tolerates it. Depthwise convs sum a
        few large terms that nearly cancel, and conv outputs sit far from zero relative to their spread, so
        rounding either to bfloat16 before BatchNorm normalises it amplifies the error: all-bfloat16 puts the
        stage taps 10-15% off (max-abs, relative). So depthwise convs run in float32 (see MBConv), the other convs
        multiply in `dtype` but accumulate into and return float32, and BatchNorm runs in float32; the stage taps
        then stay within ~3% (tests/test_efficientnet_lite.py)."""
        conv = layers.conv_partial(self.dtype, use_bias=False)
        if self.dtype != jnp.float32:
            conv = functools.partial(conv, conv_general_dilated=functools.partial(
                lax.conv_general_dilated, preferred_element_type=jnp.float32))
        return conv, layers.norm_partial(jnp.float32, train, **BN_SETTINGS, frozen=self.frozen_bn)

    @nn.compact
    def __call__(self, x, train: bool = False, taps: Sequence[str] = ("logits",)):
        padding = self.padding or LAYOUT_PADDING[self.layout]
        conv, norm = self._partials(train)
        got = layers.TapCollector(taps)

        x = x.astype(self.dtype)
        x = layers.ConvBN(STEM_FEATURES, 3, 2, padding, conv, norm, name="stem")(x)
        if got.add("stem", x):
            return got.out
        total = sum(stage[4] for stage in self.stages)
        index = 0
        for s, (expand, kernel, stride, features, repeats) in enumerate(self.stages, start=1):
            # Blocks are modules of the stage's scope, so their params sit at stage{s}/block{j}/...
            x = Stage(expand, kernel, stride, features, repeats, padding,
                      tuple(self.drop_connect * (index + j) / total for j in range(repeats)), train, conv, norm,
                      name=f"stage{s}")(x)
            index += repeats
            if got.add(f"stage{s}", x):
                return got.out
        x = layers.ConvBN(TOP_FEATURES, 1, 1, "symmetric", conv, norm, name="top")(x)
        if got.add("head", x):
            return got.out
        x = jnp.mean(x, axis=(1, 2))
        if got.add("pre_logits", x) or not self.num_classes:
            return got.out
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        got.add("logits", layers.Head(self.num_classes, self.dtype, name="head")(x))
        return got.out


class Stage(nn.Module):
    expand_ratio: int
    kernel: int
    stride: int
    features: int
    repeats: int
    padding: str
    drop_connect: Sequence[float]
    train: bool
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        for j in range(self.repeats):
            x = MBConv(self.expand_ratio, self.kernel, self.stride if j == 0 else 1, self.features, self.padding,
                       self.drop_connect[j], self.train, self.conv, self.norm, name=f"block{j + 1}")(x)
        return x
