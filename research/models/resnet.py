"""ResNet in the two layouts users have weights for.

`keras` is ResNet v1 as keras.applications builds it: the stride on the first 1x1 conv, conv biases, BN epsilon
1.001e-5. `torchvision` is v1.5: the stride on the 3x3 conv, no conv biases, BN epsilon 1e-5. Param paths are
the same in both (`stem/conv1`, `stage3/block2/conv2`, `stage1/block1/downsample/conv`), so freeze rules and
tap names do not depend on where the weights came from.

`timm` is timm's `resnet18`..`resnet152` (`resnet50.a1_in1k`, ...): torchvision's model with torchvision's key
names, computed as the torchvision layout (`COMPUTED_AS`). It is a layout of its own because a layout is where
the weights came from: the timm reader builds `ModelSpec(arch, "timm")`, its Source reads snapshots (the
preprocessing and eval transform from their config.json, other defaults), and the spec records it. timm's
variants with other stems or shortcuts (`resnet50d`, ...) are other archs, which the reader refuses by name.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.errors import UserError
from research.models import heads, layers
from research.models.registry import Arch, Family, Source, TapCollector, check_timm_args

TAPS = ("stem", "stage1", "stage2", "stage3", "stage4", "pre_logits", "logits")


class Block(nn.Module):
    """A basic (two 3x3) or bottleneck (1x1-3x3-1x1, 4x expansion) residual block."""
    features: int
    stride: int
    bottleneck: bool
    layout: str
    downsample: bool
    conv: Any
    norm: Any

    def _convs(self):
        """(kernel, features, stride) of each conv; where the stride sits is the v1 / v1.5 difference."""
        s = self.stride
        if not self.bottleneck:
            return [(3, self.features, s), (3, self.features, 1)]
        first, middle = (s, 1) if self.layout == "keras" else (1, s)
        return [(1, self.features, first), (3, self.features, middle), (1, 4 * self.features, 1)]

    @nn.compact
    def __call__(self, x):
        residual = x
        convs = self._convs()
        for i, (kernel, features, stride) in enumerate(convs, start=1):
            x = self.conv(features, (kernel, kernel), (stride, stride), padding=layers.pad(kernel // 2),
                          name=f"conv{i}")(x)
            x = self.norm(name=f"bn{i}")(x)
            if i < len(convs):
                x = nn.relu(x)
        if self.downsample:
            residual = Downsample(convs[-1][1], self.stride, self.conv, self.norm, name="downsample")(residual)
        return nn.relu(x + residual)


class Downsample(nn.Module):
    features: int
    stride: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        x = self.conv(self.features, (1, 1), (self.stride, self.stride), padding=layers.pad(0), name="conv")(x)
        return self.norm(name="bn")(x)


class Stage(nn.Module):
    blocks: int
    features: int
    stride: int
    bottleneck: bool
    layout: str
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        for j in range(self.blocks):
            first = j == 0
            out_features = self.features * (4 if self.bottleneck else 1)
            needs_projection = first and (self.stride != 1 or x.shape[-1] != out_features)
            x = Block(self.features, self.stride if first else 1, self.bottleneck, self.layout,
                      needs_projection, self.conv, self.norm, name=f"block{j + 1}")(x)
        return x


class ResNet(nn.Module):
    """Returns a dict of the requested taps; computes nothing past the deepest one."""
    stage_sizes: Sequence[int]
    bottleneck: bool
    layout: str = "torchvision"
    num_classes: int = 1000
    dtype: Any = jnp.float32
    frozen_bn: frozenset = frozenset()  # BatchNorm paths kept in inference mode when training

    @nn.compact
    def __call__(self, x, train: bool = False, taps: Sequence[str] = ("logits",)):
        bn = layers.BN_SETTINGS[self.layout]
        conv = layers.conv_partial(self.dtype, use_bias=self.layout == "keras")
        norm = layers.norm_partial(self.dtype, train, **bn, frozen=self.frozen_bn)
        got = TapCollector(taps)

        x = Stem(conv, norm, name="stem")(x.astype(self.dtype))
        if got.add("stem", x):
            return got.out
        for i, blocks in enumerate(self.stage_sizes):
            x = Stage(blocks, 64 * 2 ** i, 1 if i == 0 else 2, self.bottleneck, self.layout, conv, norm,
                      name=f"stage{i + 1}")(x)
            if got.add(f"stage{i + 1}", x):
                return got.out
        return heads.pooled_logits(got, x, self.num_classes, self.dtype)


class Stem(nn.Module):
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        x = self.conv(64, (7, 7), (2, 2), padding=layers.pad(3), name="conv1")(x)
        x = nn.relu(self.norm(name="bn1")(x))
        return layers.max_pool(x, 3, 2, padding=1)


# arch -> (blocks per stage, bottleneck blocks)
STAGE_SIZES = {
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
    "resnet101": ((3, 4, 23, 3), True),
    "resnet152": ((3, 8, 36, 3), True),
}
KERAS_ARCHS = ("resnet50", "resnet101", "resnet152")  # Keras has no ResNet-18/34

# Each source's layer names as templates: `stem_conv`, `stem_bn`, `head`, `block` (given the 1-based `stage` and
# `block`, the 0-based `index`, and `group` = stage + 1 for Keras, which counts the stem as group 1), and `conv`,
# `bn`, `downsample_conv`, `downsample_bn` (given the block's source name `src` and the conv number `k`); `kinds`
# names the source's kind for a conv, a BatchNorm and the classifier.
NAMES = {
    # keras.applications.resnet: conv{stage + 1}_block{n}_{k}_conv; _0_ is the shortcut.
    "keras": {"stem_conv": "conv1_conv", "stem_bn": "conv1_bn", "head": "predictions",
              "block": "conv{group}_block{block}", "conv": "{src}_{k}_conv", "bn": "{src}_{k}_bn",
              "downsample_conv": "{src}_0_conv", "downsample_bn": "{src}_0_bn",
              "kinds": {"conv": "conv", "bn": "bn", "dense": "dense"}},
    # torchvision: layer{stage}.{index}.conv{k}; downsample.0/1 is the shortcut.
    "torchvision": {"stem_conv": "conv1", "stem_bn": "bn1", "head": "fc",
                    "block": "layer{stage}.{index}", "conv": "{src}.conv{k}", "bn": "{src}.bn{k}",
                    "downsample_conv": "{src}.downsample.0", "downsample_bn": "{src}.downsample.1",
                    "kinds": {"conv": "conv", "bn": "bn", "dense": "linear"}},
}
KERAS_BLOCKS_IN_CONV4 = {6: "resnet50", 23: "resnet101", 36: "resnet152"}


def names(source: str, arch: str) -> dict[str, tuple[str, str]]:
    """`source`'s layer names of `arch` -> (param path, kind)."""
    form, kinds = NAMES[source], NAMES[source]["kinds"]
    table = {form["stem_conv"]: ("stem/conv1", kinds["conv"]), form["stem_bn"]: ("stem/bn1", kinds["bn"]),
             form["head"]: ("head/fc", kinds["dense"])}
    for stage, blocks in enumerate(STAGE_SIZES[arch][0], start=1):
        for index in range(blocks):
            src = form["block"].format(stage=stage, group=stage + 1, block=index + 1, index=index)
            dst = f"stage{stage}/block{index + 1}"
            for k in range(1, 4):
                table[form["conv"].format(src=src, k=k)] = (f"{dst}/conv{k}", kinds["conv"])
                table[form["bn"].format(src=src, k=k)] = (f"{dst}/bn{k}", kinds["bn"])
            table[form["downsample_conv"].format(src=src)] = (f"{dst}/downsample/conv", kinds["conv"])
            table[form["downsample_bn"].format(src=src)] = (f"{dst}/downsample/bn", kinds["bn"])
    return table


def detect_keras(layers: dict) -> str | None:
    names = set(layers)
    if "conv2_block1_preact_bn" in names:  # ResNetV2 (research/models/resnet_v2.py) shares the other names
        return None
    if "res2a_branch2a" in names:
        raise UserError("the 2016 Keras ResNet50 file (res2a_branch2a names, BN epsilon 1e-3, an unpadded "
                        "max-pool), which differs from keras.applications' current ResNet50; use the current file")
    if "conv1_conv" not in names or "conv2_block1_3_conv" not in names:  # DenseNet has conv2_block1_1_conv too
        return None
    blocks = sum(bool(re.fullmatch(r"conv4_block\d+_1_conv", n)) for n in names)
    if blocks not in KERAS_BLOCKS_IN_CONV4:
        raise UserError(f"a Keras ResNet with {blocks} blocks in conv4; known: 6, 23, 36")
    return KERAS_BLOCKS_IN_CONV4[blocks]


def detect_torchvision(state: dict) -> str | None:
    if "layer1.0.conv1.weight" not in state:
        return None
    blocks = tuple(len({m.group(1) for k in state if (m := re.match(rf"layer{i}\.(\d+)\.", k))})
                   for i in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in state
    for arch, (sizes, is_bottleneck) in STAGE_SIZES.items():
        if tuple(sizes) == blocks and is_bottleneck == bottleneck:
            return arch
    kind = "bottleneck" if bottleneck else "basic"
    raise UserError(f"a torchvision ResNet with {kind} blocks {blocks} per stage, which is none of "
                    f"{', '.join(STAGE_SIZES)}")


TIMM = "timm"
COMPUTED_AS = {TIMM: "torchvision"}  # a layout whose model is another's
# timm `model_args` this family builds, with the values supported (None: any; they change no output);
# registry.check_timm_args refuses the rest (`stem_type`, `avg_down`, another activation, ...)
TIMM_ARGS = {"global_pool": ("avg",), "output_stride": (32,), "act_layer": ("relu",), "aa_layer": (None,),
             "zero_init_last": None}


def timm_options(model_args: dict, _state: dict) -> dict:
    check_timm_args(model_args, TIMM_ARGS, "ResNet")
    return {}


def build(spec, config, **common):
    stages, bottleneck = config
    return ResNet(stages, bottleneck, COMPUTED_AS.get(spec.layout, spec.layout), **common)


FAMILY = Family(
    name="resnet",
    archs={arch: Arch(config, ("keras", "torchvision", TIMM) if arch in KERAS_ARCHS else ("torchvision", TIMM))
           for arch, config in STAGE_SIZES.items()},
    build=build,
    taps=TAPS,
    modules=("stem", "stage1", "stage2", "stage3", "stage4", "head"),
    top_block="stage4",
    bn={**layers.BN_SETTINGS, TIMM: layers.BN_SETTINGS["torchvision"]},
    sources={
        "keras": Source("caffe", functools.partial(names, "keras"), detect_keras, "ResNet50/101/152"),
        "torchvision": Source("torch", functools.partial(names, "torchvision"), detect_torchvision, "ResNet"),
        # torchvision's key names; ImageNet mean/std where the snapshot's pretrained_cfg gives none
        TIMM: Source("torch", functools.partial(names, "torchvision"), detect_torchvision, "timm ResNet",
                     options=timm_options),
    },
)
