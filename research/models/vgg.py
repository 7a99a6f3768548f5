"""VGG-11/13/16/19, with or without BatchNorm, in the Keras and torchvision layouts.

The layouts differ only in the classifier: torchvision adds dropout (0.5) after fc1 and fc2 and pools to 7x7
before flattening; Keras does neither. Both flatten NHWC here: converters reorder torchvision's fc6 (fc1)
kernel, which was trained on an NCHW flatten, so that no transpose is needed at run time.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.errors import UserError
from research.models import heads, layers
from research.models.registry import Arch, Family, Source, TapCollector

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
        got = TapCollector(taps)
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
            got.add("logits", heads.Head(self.num_classes, self.dtype, name="head")(x))
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


KERAS_ARCHS = ("vgg16", "vgg19")  # Keras has no VGG-11/13 and no VGG-BN


def keras_names(arch: str) -> dict[str, tuple[str, str]]:
    table = {f"block{b}_conv{k}": (f"block{b}/conv{k}", "conv") for b in range(1, 6) for k in range(1, 5)}
    table.update({"fc1": ("fc1", "dense"), "fc2": ("fc2", "dense"), "predictions": ("head/fc", "dense")})
    return table


def torchvision_names(arch: str) -> dict[str, tuple[str, str]]:
    """`features.N` indices count every conv, BN, ReLU and max-pool in order, as torchvision builds them; fc6
    (`classifier.0`) is `linear_nchw`: trained on an NCHW flatten, reordered for ours."""
    depths, batch_norm = ARCHS[arch]
    table, index = {}, 0
    for b, depth in enumerate(depths, start=1):
        for k in range(1, depth + 1):
            table[f"features.{index}"] = (f"block{b}/conv{k}", "conv")
            if batch_norm:
                table[f"features.{index + 1}"] = (f"block{b}/bn{k}", "bn")
            index += 3 if batch_norm else 2
        index += 1  # the max-pool
    table.update({"classifier.0": ("fc1", "linear_nchw"), "classifier.3": ("fc2", "linear"),
                  "classifier.6": ("head/fc", "linear")})
    return table


def detect_keras(layers: dict) -> str | None:
    if "block1_conv1" not in layers or "block5_conv1" not in layers:  # Xception has a block1_conv1 too
        return None
    return "vgg19" if "block5_conv4" in layers else "vgg16"


def detect_torchvision(state: dict) -> str | None:
    convs = sum(bool(re.fullmatch(r"features\.\d+\.weight", k)) and state[k].ndim == 4 for k in state)
    if not convs:
        return None
    by_count = {sum(depths): name for name, depths in BLOCK_DEPTHS.items()}
    if convs not in by_count:
        raise UserError(f"a torchvision VGG with {convs} convolutions; known: 8, 10, 13, 16")
    return by_count[convs] + ("_bn" if any(k.endswith(".running_mean") for k in state) else "")


def flattens(spec) -> bool:
    """Whether block5_pool is flattened straight into a dense layer (Keras' fc1, or a fresh head with no top),
    whose size then fixes the input size; torchvision pools to 7x7 first."""
    return bool((spec.include_top and spec.layout == "keras")
                or (spec.num_classes and not spec.include_top and spec.head.pool == "flatten"))


def build(spec, config, **common):
    depths, batch_norm = config
    return VGG(depths, batch_norm, spec.layout, spec.include_top, **common)


# arch -> (convolutions per block, BatchNorm)
ARCHS = {**{name: (depths, False) for name, depths in BLOCK_DEPTHS.items()},
         **{f"{name}_bn": (depths, True) for name, depths in BLOCK_DEPTHS.items()}}

FAMILY = Family(
    name="vgg",
    archs={arch: Arch(config, ("keras", "torchvision") if arch in KERAS_ARCHS else ("torchvision",))
           for arch, config in ARCHS.items()},
    build=build,
    taps=TAPS,
    modules=("block1", "block2", "block3", "block4", "block5", "fc1", "fc2", "head"),
    top_block="block5",
    bn=layers.BN_SETTINGS,
    sources={"keras": Source("caffe", keras_names, detect_keras, "VGG16/19"),
             "torchvision": Source("torch", torchvision_names, detect_torchvision, "VGG")},
    tap_modules={f"block{b}_pool": f"block{b}" for b in range(1, 6)},
    top_taps=("fc1", "fc2"),
    feed_taps=("fc2", "block5_pool"),
    fixed_input=flattens,
)
