"""EfficientNet-Lite: MBConv stages (`blocks.InvertedResidual`) without squeeze-excitation, ReLU6 throughout,
BatchNorm epsilon 1e-3.

Param paths: `stem/conv`, `stem/bn`, `stage{s}/block{j}/{expand,depthwise,project}_{conv,bn}` (stage 1 has no
expansion), `top/conv`, `top/bn` (the 1x1 conv to 1280; not `head`, which is the classifier everywhere, so that a
fresh head never drops it) and `head/fc`. Each tap is named after the module it ends: `top` is the 1x1 conv's
output, `pre_logits` its global average.

Padding: the TF originals use "SAME", which for stride 2 pads one pixel less on the top/left than on the
bottom/right (and for stride 1 pads k//2 on each side); a PyTorch port may instead pad k//2 symmetrically.
Both are here (`padding="same"` / `"symmetric"`), computed explicitly from the static input size. The Lite0
weights use "same": they were converted from the TF checkpoints, and their intended loader (EfficientNet-Lite-
PyTorch, a fork of EfficientNet-PyTorch) pads with `Conv2dStaticSamePadding`, which is TF's asymmetric SAME. Real
photos agree but do not decide it alone: with center-cropped photos both paddings give the right top-1,
while "same" gives the expected class more probability on 4 of 5 photos.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.errors import UserError
from research.models import heads, layers
from research.models.blocks import ConvBN, InvertedResidual, mobile_partials
from research.models.registry import Arch, Family, Source, TapCollector

TAPS = ("stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "top", "pre_logits",
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

    @nn.compact
    def __call__(self, x, train: bool = False, taps: Sequence[str] = ("logits",)):
        padding = self.padding or LAYOUT_PADDING[self.layout]
        conv, norm = mobile_partials(self.dtype, train, BN_SETTINGS, self.frozen_bn)  # bfloat16: see there
        got = TapCollector(taps)

        x = x.astype(self.dtype)
        x = ConvBN(STEM_FEATURES, 3, 2, padding, conv, norm, name="stem")(x)
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
        x = ConvBN(TOP_FEATURES, 1, 1, "symmetric", conv, norm, name="top")(x)
        if got.add("top", x):
            return got.out
        return heads.pooled_logits(got, x, self.num_classes, self.dtype, train, self.dropout)


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
            x = InvertedResidual(self.expand_ratio, self.kernel, self.stride if j == 0 else 1, self.features,
                                 self.conv, self.norm, self.padding, drop_connect=self.drop_connect[j],
                                 train=self.train, name=f"block{j + 1}")(x)
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
    for s, (expand, _k, _stride, _out, repeats) in enumerate(VARIANTS[arch], start=1):
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
    for arch, stages in VARIANTS.items():
        expected = [(e, k, c) for e, k, _s, c, n in stages for _ in range(n)]
        if found == expected and state[STEM_KEY].shape[0] == STEM_FEATURES:
            return arch
    raise UserError(f"an EfficientNet-Lite with {len(found)} blocks (expand, kernel, out) {found[:3]}..., "
                    f"which is none of {', '.join(VARIANTS)}")


def build(spec, config, **common):
    return EfficientNetLite(config, spec.layout, **common)


FAMILY = Family(
    name="efficientnet",
    archs={arch: Arch(stages, (SOURCE,)) for arch, stages in VARIANTS.items()},
    build=build,
    taps=TAPS,
    modules=("stem", *(f"stage{i}" for i in range(1, 8)), "top", "head"),
    top_block="stage7",
    bn={SOURCE: BN_SETTINGS},
    # (x - 127) / 128, the TF-Lite convention: see research/weights/efficientnet_lite.py
    sources={SOURCE: Source("tflite", names, detect, "EfficientNet-Lite")},
)
