"""ConvNeXt in two layouts: `keras` (ConvNeXtTiny/Small/Base/Large/XLarge as keras.applications builds them) and
`timm` (timm's `convnext_*` snapshots: the same members plus timm's small atto/femto/pico/nano).

Stem: a 4x4 stride-4 conv (with bias) and LayerNorm. Stages 2-4 begin with a downsampling LayerNorm and 2x2
stride-2 conv. Blocks: a 7x7 depthwise conv with bias (a grouped conv, `feature_group_count=C`), LayerNorm, dense
to 4C, exact GELU, dense back to C, per-channel layer scale `gamma`, residual. Every LayerNorm has epsilon 1e-6;
there is no BatchNorm. Keras' default drop_path_rate is 0, so there is no stochastic depth here.

Param paths: `stem/{conv,norm}`; `stage{s}/downsample/{norm,conv}` (s >= 2);
`stage{s}/block{j}/{depthwise_conv,norm,pointwise_conv_1,pointwise_conv_2,layer_scale}`; `top_norm` (the head's
LayerNorm after the global average: Keras' `<name>_head_layernorm`, or the unnamed LayerNormalization of a
model without top); `head/fc`.

Taps: `stem` (1/4); `stage1`..`stage4` end the 1/4, 1/8, 1/16, 1/32 resolutions; `pre_logits` is the global
average after `top_norm`, the vector the classifier reads; `logits` pre-softmax.

Input: Keras' take 0-255 pixels (preprocessing "raw"); the model normalises inside with Keras' PreStem constants
(ImageNet mean and std times 255; the Normalization layer is built from constants, so the file holds none).
timm's are normalised outside, with the snapshot's own mean and std (research/weights/timm.py).

timm computes the same thing: the same stem, downsampling (LayerNorm then a 2x2 stride-2 conv), blocks (7x7
depthwise conv with bias, LayerNorm, Linear to 4C, exact GELU, Linear back, `gamma`, residual) and head (average,
LayerNorm, Linear), every LayerNorm at epsilon 1e-6. Its small members set `conv_mlp=True`, which changes only
the form, not the function: the block's LayerNorm is a LayerNorm2d (the same normalisation over channels, on
NCHW) and `mlp.fc1`/`mlp.fc2` are 1x1 Conv2d with bias instead of Linear, so their weights are (out, in, 1, 1).
The name table reads either shape (`conv_linear`), so a member built with the other `conv_mlp` loads too.

Keras names every layer after the model (`convnext_tiny_stage_0_block_0_...`); the arch names are Keras' default
model names, and a file saved under another model name is refused with its name.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.errors import UserError
from research.models import layers
from research.models.heads import Head
from research.models.registry import HEAD, Arch, Family, Source, TapCollector, check_timm_args

TAPS = ("stem", "stage1", "stage2", "stage3", "stage4", "pre_logits", "logits")
EPSILON = 1e-6
MEAN = tuple(m * 255 for m in (0.485, 0.456, 0.406))
VAR = tuple((s * 255) ** 2 for s in (0.229, 0.224, 0.225))

# (blocks per stage, channels per stage) of each member: Keras' MODEL_CONFIGS, timm's `model_args`.
VARIANTS = {
    "convnext_atto": ((2, 2, 6, 2), (40, 80, 160, 320)),  # timm's own small members (conv_mlp)
    "convnext_femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "convnext_pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "convnext_nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "convnext_tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext_small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "convnext_base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnext_large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "convnext_xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
}
KERAS_ARCHS = ("convnext_tiny", "convnext_small", "convnext_base", "convnext_large", "convnext_xlarge")
TIMM = "timm"
IN_MODEL_NORMALIZATION = {"keras": True, TIMM: False}  # per layout: whether the model takes 0-255 pixels


def partials(dtype: Any):
    """(conv, dense, norm): params float32, compute in `dtype`; LayerNorm always in float32 (the statistics of
    a wide bfloat16 vector lose too much)."""
    conv = layers.conv_partial(dtype, use_bias=True)
    dense = functools.partial(nn.Dense, dtype=dtype, param_dtype=jnp.float32)
    norm = functools.partial(nn.LayerNorm, epsilon=EPSILON, dtype=jnp.float32, param_dtype=jnp.float32,
                             use_fast_variance=False)
    return conv, dense, norm


class Block(nn.Module):
    conv: Any
    dense: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        y = self.conv(c, (7, 7), padding=layers.pad(3), feature_group_count=c, name="depthwise_conv")(x)
        y = self.norm(name="norm")(y).astype(x.dtype)
        y = nn.gelu(self.dense(4 * c, name="pointwise_conv_1")(y), approximate=False)
        y = layers.LayerScale(name="layer_scale")(self.dense(c, name="pointwise_conv_2")(y))
        return x + y


class Stage(nn.Module):
    blocks: int
    features: int
    downsample: bool
    conv: Any
    dense: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        if self.downsample:
            x = Downsample(self.features, self.conv, self.norm, name="downsample")(x)
        for j in range(1, self.blocks + 1):
            x = Block(self.conv, self.dense, self.norm, name=f"block{j}")(x)
        return x


class Downsample(nn.Module):
    features: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        x = self.norm(name="norm")(x).astype(x.dtype)
        return self.conv(self.features, (2, 2), (2, 2), padding=layers.pad(0), name="conv")(x)


class Stem(nn.Module):
    features: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        x = self.conv(self.features, (4, 4), (4, 4), padding=layers.pad(0), name="conv")(x)
        return self.norm(name="norm")(x).astype(x.dtype)


class ConvNeXt(nn.Module):
    """Returns a dict of the requested taps; computes nothing past the deepest one. `train` changes nothing
    (no BatchNorm, no dropout, no stochastic depth); it is taken as every family's forward is."""
    depths: Sequence[int]
    dims: Sequence[int]
    num_classes: int = 1000
    dtype: Any = jnp.float32
    frozen_bn: frozenset = frozenset()  # unused: LayerNorm has no running statistics
    normalize: bool = True  # Keras' in-model ImageNet normalisation of 0-255 pixels

    @nn.compact
    def __call__(self, x, train: bool = False, taps: Sequence[str] = ("logits",)):
        conv, dense, norm = partials(self.dtype)
        got = TapCollector(taps)
        if self.normalize:
            x = layers.Normalization(mean=MEAN, var=VAR)(x)
        x = x.astype(self.dtype)
        x = Stem(self.dims[0], conv, norm, name="stem")(x)
        if got.add("stem", x):
            return got.out
        for s, (blocks, features) in enumerate(zip(self.depths, self.dims), start=1):
            x = Stage(blocks, features, s > 1, conv, dense, norm, name=f"stage{s}")(x)
            if got.add(f"stage{s}", x):
                return got.out
        x = norm(name="top_norm")(jnp.mean(x, axis=(1, 2)))
        if got.add("pre_logits", x) or not self.num_classes:
            return got.out
        got.add("logits", Head(self.num_classes, self.dtype, name=HEAD)(x.astype(self.dtype)))
        return got.out


BLOCK_NAMES = {"depthwise_conv": ("depthwise_conv", "conv"), "layernorm": ("norm", "layer_norm"),
               "pointwise_conv_1": ("pointwise_conv_1", "dense"), "pointwise_conv_2": ("pointwise_conv_2", "dense"),
               "layer_scale": ("layer_scale", "layer_scale")}
# The stem and downsampling blocks are nested Sequentials: a legacy .h5 file stores each as one layer (its
# weights in order), a Keras 3 file its layers by their own names; the table has both.
STEM_LAYER = re.compile(r"^(.+)_stem(_conv)?$")
BLOCK_LAYER = re.compile(r"_stage_(\d)_block_(\d+)_depthwise_conv$")


def keras_names(arch: str) -> dict[str, tuple[str, str]]:
    p = arch
    table = {f"{p}_stem": ("stem", "conv_layer_norm"), f"{p}_stem_conv": ("stem/conv", "conv"),
             f"{p}_stem_layernorm": ("stem/norm", "layer_norm"), f"{p}_head_layernorm": ("top_norm", "layer_norm"),
             "layer_normalization": ("top_norm", "layer_norm"), f"{p}_head_dense": ("head/fc", "dense")}
    depths, _dims = VARIANTS[arch]
    for i, blocks in enumerate(depths):
        if i:
            table[f"{p}_downsampling_block_{i - 1}"] = (f"stage{i + 1}/downsample", "layer_norm_conv")
            table[f"{p}_downsampling_layernorm_{i - 1}"] = (f"stage{i + 1}/downsample/norm", "layer_norm")
            table[f"{p}_downsampling_conv_{i - 1}"] = (f"stage{i + 1}/downsample/conv", "conv")
        for j in range(blocks):
            for src, (dst, kind) in BLOCK_NAMES.items():
                table[f"{p}_stage_{i}_block_{j}_{src}"] = (f"stage{i + 1}/block{j + 1}/{dst}", kind)
    return table


def detect_keras(layers_: dict) -> str | None:
    stems = [m.group(1) for name in layers_ if (m := STEM_LAYER.match(name))]
    if not stems or not any(BLOCK_LAYER.search(name) for name in layers_):
        return None
    prefix = stems[0]
    counts = [0, 0, 0, 0]
    for name in layers_:
        if name.startswith(prefix) and (m := BLOCK_LAYER.search(name)):
            counts[int(m.group(1))] += 1
    stem = layers_.get(f"{prefix}_stem_conv", layers_.get(f"{prefix}_stem"))
    found = (tuple(counts), stem[0].shape[-1])
    arch = next((a for a in KERAS_ARCHS if (VARIANTS[a][0], VARIANTS[a][1][0]) == found), None)
    if arch is None:
        raise UserError(f"a Keras ConvNeXt with blocks per stage {found[0]} and stem width {found[1]}, which is "
                        f"none of {', '.join(KERAS_ARCHS)}")
    if prefix != arch:
        raise UserError(f"a Keras {arch} whose layers are named after the model name {prefix!r}; only Keras' "
                        f"default name {arch!r} is supported")
    return arch


# timm's module names: per block `stages.{i}.blocks.{j}.` + name -> (param inside stage{i+1}/block{j+1}, kind); the
# block's own tensor `gamma` is its layer scale. `conv_linear` takes timm's Linear and its conv_mlp 1x1 Conv2d alike.
TIMM_BLOCK_NAMES = {"conv_dw": ("depthwise_conv", "conv"), "norm": ("norm", "layer_norm"),
                    "mlp.fc1": ("pointwise_conv_1", "conv_linear"), "mlp.fc2": ("pointwise_conv_2", "conv_linear")}
TIMM_OUTER_NAMES = {"stem.0": ("stem/conv", "conv"), "stem.1": ("stem/norm", "layer_norm"),
                    "head.norm": ("top_norm", "layer_norm"), "head.fc": ("head/fc", "linear")}
TIMM_BLOCK = re.compile(r"^stages\.(\d)\.blocks\.(\d+)\.conv_dw\.weight$")
# timm `model_args` this family builds, with the values supported (None: any; they change no output);
# registry.check_timm_args refuses the rest (`head_hidden_size`, `use_grn`, another activation, ...)
TIMM_ARGS = {"global_pool": ("avg",), "output_stride": (32,), "act_layer": ("gelu",), "norm_layer": ("layernorm",),
             "norm_eps": (1e-6,), "head_norm_first": (False,), "conv_mlp": None, "ls_init_value": None,
             "head_init_scale": None}


def timm_names(arch: str) -> dict[str, tuple[str, str]]:
    table = dict(TIMM_OUTER_NAMES)
    for i, blocks in enumerate(VARIANTS[arch][0]):
        if i:
            table[f"stages.{i}.downsample.0"] = (f"stage{i + 1}/downsample/norm", "layer_norm")
            table[f"stages.{i}.downsample.1"] = (f"stage{i + 1}/downsample/conv", "conv")
        for j in range(blocks):
            src, dst = f"stages.{i}.blocks.{j}", f"stage{i + 1}/block{j + 1}"
            table[src] = (f"{dst}/layer_scale", "layer_scale")
            table.update({f"{src}.{name}": (f"{dst}/{param}", kind)
                          for name, (param, kind) in TIMM_BLOCK_NAMES.items()})
    return table


def detect_timm(state: dict) -> str | None:
    """The member whose blocks per stage and stem width the tensors have (a snapshot without config.json)."""
    if "stem.0.weight" not in state or not any(TIMM_BLOCK.match(k) for k in state):
        return None
    counts = [0, 0, 0, 0]
    for key in state:
        if m := TIMM_BLOCK.match(key):
            counts[int(m.group(1))] += 1
    found = (tuple(counts), int(state["stem.0.weight"].shape[0]))
    arch = next((a for a, (depths, dims) in VARIANTS.items() if (tuple(depths), dims[0]) == found), None)
    if arch is None:
        raise UserError(f"a timm ConvNeXt with blocks per stage {found[0]} and stem width {found[1]}, which is "
                        f"none of {', '.join(VARIANTS)}")
    return arch


def timm_options(model_args: dict, _state: dict) -> dict:
    check_timm_args(model_args, TIMM_ARGS, "ConvNeXt")
    return {}


def build(spec, config, **common):
    return ConvNeXt(*config, normalize=IN_MODEL_NORMALIZATION[spec.layout], **common)


FAMILY = Family(
    name="convnext",
    archs={arch: Arch(config, ("keras", TIMM) if arch in KERAS_ARCHS else (TIMM,))
           for arch, config in VARIANTS.items()},
    build=build,
    taps=TAPS,
    modules=("stem", "stage1", "stage2", "stage3", "stage4", "top_norm", "head"),
    top_block="stage4",
    # no BatchNorm; only for a fresh head with batch_norm
    bn={"keras": layers.BN_SETTINGS["keras"], TIMM: layers.BN_SETTINGS["torchvision"]},
    tap_modules={"pre_logits": "top_norm"},
    sources={"keras": Source("raw", keras_names, detect_keras, "ConvNeXtTiny/Small/Base/Large/XLarge"),
             # ImageNet mean/std where the snapshot's pretrained_cfg gives none
             TIMM: Source("torch", timm_names, detect_timm, "timm ConvNeXt", options=timm_options)},
)
