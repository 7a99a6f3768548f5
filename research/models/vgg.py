"""VGG-11/13/16/19, with or without BatchNorm, in the Keras and torchvision layouts.

The layouts differ only in the classifier: torchvision adds dropout (0.5) after fc1 and fc2 and pools to 7x7
before flattening; Keras does neither. Both flatten NHWC here: converters reorder torchvision's fc6 (fc1)
kernel, which was trained on an NCHW flatten, so that no transpose is needed at run time.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.models import layers

TAPS = ("block1_pool", "block2_pool", "block3_pool", "block4_pool", "block5_pool", "fc1", "fc2", "logits")

# Convolutions per block, as in the VGG paper's configurations A, B, D and E.
BLOCK_DEPTHS = {
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}
WIDTHS = (64, 128, 256, 512, 512)


class VGG(nn.Module):
    """Returns a dict of the requested taps; computes nothing past the deepest one.

    `include_top` keeps fc1 and fc2; `num_classes` > 0 adds the head on fc2, or on the flattened block5_pool
    when there is no top.
    """
    block_depths: Sequence[int]
    batch_norm: bool = False
    layout: str = "torchvision"
    include_top: bool = True
    num_classes: int = 1000
    dtype: Any = jnp.float32
    frozen_bn: frozenset = frozenset()  # BatchNorm paths kept in inference mode when training

    @nn.compact
    def __call__(self, x, train: bool = False, taps: Sequence[str] = ("logits",)):
        conv = layers.conv_partial(self.dtype, use_bias=True)
        norm = layers.norm_partial(self.dtype, train, **layers.BN_SETTINGS[self.layout], frozen=self.frozen_bn)
        got = layers.TapCollector(taps)
        x = x.astype(self.dtype)
        for b, (depth, width) in enumerate(zip(self.block_depths, WIDTHS), start=1):
            x = ConvBlock(depth, width, self.batch_norm, conv, norm, name=f"block{b}")(x)
            if got.add(f"block{b}_pool", x):
                return got.out
        if self.layout == "torchvision" and self.include_top:
            x = layers.adaptive_avg_pool(x, 7)
        x = x.reshape(x.shape[0], -1)
        if self.include_top:
            for name in ("fc1", "fc2"):
                x = nn.relu(nn.Dense(4096, dtype=self.dtype, param_dtype=jnp.float32, name=name)(x))
                if got.add(name, x):
                    return got.out
                if self.layout == "torchvision":
                    x = nn.Dropout(0.5, deterministic=not train)(x)
        if self.num_classes:
            got.add("logits", layers.Head(self.num_classes, self.dtype, name="head")(x))
        return got.out


class ConvBlock(nn.Module):
    depth: int
    width: int
    batch_norm: bool
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        for k in range(1, self.depth + 1):
            x = self.conv(self.width, (3, 3), padding=layers.pad(1), name=f"conv{k}")(x)
            if self.batch_norm:
                x = self.norm(name=f"bn{k}")(x)
            x = nn.relu(x)
        return layers.max_pool(x, 2, 2)
