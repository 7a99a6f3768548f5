"""NASNet-A (Zoph et al. 2018) as keras.applications builds it: NASNetMobile (4 @ 1056) and NASNetLarge (6 @ 4032).

A stem conv (3x3, stride 2, VALID, no bias) and BatchNorm, then cells. Each cell reads two inputs, its
predecessor's output `x` and the one before, `p`; it turns `x` into `h` (ReLU, 1x1 conv, BN) and brings `p` to
`h`'s shape (`adjust`: where `p` has twice the resolution, ReLU, two 1x1 convs to half the width each, on `p`
subsampled at even and at odd pixels (Keras' ZeroPadding2D/Cropping2D shift, zeros past the edge), concatenated,
BN; where only the width differs, ReLU, 1x1 conv, BN). Its five nodes each add two ops on `h`, `p` or earlier
nodes (the genotypes NORMAL and REDUCTION below), and their concatenation is the cell's output. Ops: a separable
block (twice ReLU, SeparableConv2D without bias, BN; the first carries the cell's stride), a 3x3 pool or the
identity. A reduction cell halves the resolution: its stride-2 ops on `h` pool `h` zero-padded as TF's SAME would
pad it (Keras' `correct_pad` + VALID; the average counts the zeros), stride-1 average pools use SAME and do not
count the padding. BatchNorm epsilon 1e-3, momentum 0.9997; input scaled to [-1, 1] (Keras' "tf" preprocessing);
default input 224 px (Mobile) and 331 px (Large), any size from 32 px.

Stages by resolution (Keras' cell ids, N = 4 for Mobile, 6 for Large):
- `stem`: stem_bn1, at 1/2 (no ReLU: the cells apply their own);
- `stage1`: the reduction cell stem_1, at 1/4;
- `stage2`: the reduction cell stem_2 and normal cells 0..N-1, at 1/8;
- `stage3`: reduce_N and normal cells N+1..2N, at 1/16;
- `stage4`: reduce_2N and normal cells 2N+1..3N, at 1/32, then the final ReLU (the map a no-top Keras model
  outputs and `pre_logits` pools).
Each stage tap is its last cell's concatenated output. After reduce_N and reduce_2N, Large's next cell reads as
`p` the input of the reduction's predecessor (Keras' `skip_reduction=True`), Mobile's the reduction's input; the
weights do not show which, so it is the member's.

Param paths: `stem/{conv1,bn1}`; cells `stage{s}/block{j}` numbered within the stage (stem_2 = `stage2/block1`,
normal cell 0 = `stage2/block2`, reduce_N = `stage3/block1`), each with `conv1`, `bn1` (Keras'
`{normal,reduction}_conv_1`, `_bn_1`), `adjust/{conv1,conv2,bn}` or `adjust/{projection,bn}`, and its separable
blocks by Keras' names, `left1/sepconv1/{depthwise,pointwise}`, `left1/bn1`, ... (the reduction cell's fifth node
is Keras' `reduction_left4`); `head/fc`. Only the two published members load: the generic NASNet's other
`penultimate_filters`, `num_blocks`, `stem_block_filters` and `filter_multiplier` are refused by name.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.errors import UserError
from research.models import heads, layers
from research.models.blocks import SeparableConv, mobile_partials
from research.models.registry import Arch, Family, Source, TapCollector

TAPS = ("stem", "stage1", "stage2", "stage3", "stage4", "pre_logits", "logits")
BN_SETTINGS = dict(epsilon=1e-3, momentum=0.9997)
MULTIPLIER = 2  # Keras' filter_multiplier: the width doubles at each reduction


@dataclasses.dataclass(frozen=True)
class Config:
    stem: int  # stem_block_filters
    width: int  # penultimate_filters // 24: the normal cells' width at 1/8
    blocks: int  # num_blocks: normal cells per resolution
    skip_reduction: bool


CONFIGS = {"nasnet_mobile": Config(stem=32, width=1056 // 24, blocks=4, skip_reduction=False),
           "nasnet_large": Config(stem=96, width=4032 // 24, blocks=6, skip_reduction=True)}
INPUT_SIZES = {"nasnet_mobile": 224, "nasnet_large": 331}


@dataclasses.dataclass(frozen=True)
class Op:
    """`kind`: "sep" (a separable block, Keras' `name`), "avg", "max" (3x3 pools) or "id"; `input`: "h", "p" or
    a node "x1".."x4". Ops on "h" and "p" carry the cell's stride, ops on nodes stride 1."""
    kind: str
    input: str
    kernel: int = 3
    name: str | None = None


@dataclasses.dataclass(frozen=True)
class Genotype:
    keras: str  # Keras' prefix of the cell's layers: "normal" or "reduction"
    stride: int
    nodes: tuple  # node k = the sum of its two ops
    concat: tuple  # what the output concatenates, in order


NORMAL = Genotype("normal", 1, (
    (Op("sep", "h", 5, "left1"), Op("sep", "p", 3, "right1")),
    (Op("sep", "p", 5, "left2"), Op("sep", "p", 3, "right2")),
    (Op("avg", "h"), Op("id", "p")),
    (Op("avg", "p"), Op("avg", "p")),
    (Op("sep", "h", 3, "left5"), Op("id", "h")),
), ("p", "x1", "x2", "x3", "x4", "x5"))
REDUCTION = Genotype("reduction", 2, (
    (Op("sep", "h", 5, "left1"), Op("sep", "p", 7, "right1")),
    (Op("max", "h"), Op("sep", "p", 7, "right2")),
    (Op("avg", "h"), Op("sep", "p", 5, "right3")),
    (Op("avg", "x1"), Op("id", "x2")),
    (Op("sep", "x1", 3, "left4"), Op("max", "h")),
), ("x2", "x3", "x4", "x5"))


def stages(config: Config) -> tuple:
    """Per stage, its cells: (genotype, width, Keras' cell id, keeps `p`: the next cell reads this cell's `p`,
    not its input)."""
    n, w, m = config.blocks, config.width, MULTIPLIER
    skip = config.skip_reduction

    def normal(first: int, width: int) -> tuple:
        return tuple((NORMAL, width, str(i), False) for i in range(first, first + n))

    return (((REDUCTION, w // m ** 2, "stem_1", False),),
            ((REDUCTION, w // m, "stem_2", False),) + normal(0, w),
            ((REDUCTION, w * m, f"reduce_{n}", skip),) + normal(n + 1, w * m),
            ((REDUCTION, w * m ** 2, f"reduce_{2 * n}", skip),) + normal(2 * n + 1, w * m ** 2))


class SeparableBlock(nn.Module):
    """Keras' `_separable_conv_block`: twice ReLU, SeparableConv2D, BN (`sepconv{k}`, `bn{k}`)."""
    features: int
    kernel: int
    stride: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        for k, stride in ((1, self.stride), (2, 1)):
            x = SeparableConv(self.features, self.conv, self.kernel, stride, name=f"sepconv{k}")(nn.relu(x))
            x = self.norm(name=f"bn{k}")(x)
        return x


def pool(kind: str, x, stride: int):
    """A 3x3 pool. Stride 2: on `x` zero-padded as TF's SAME pads (the average counts the zeros); stride 1: SAME,
    the average over the pixels inside only."""
    padding = layers.conv_padding(x.shape[1:3], 3, stride)
    if stride == 1 and kind == "avg":
        return nn.avg_pool(x, (3, 3), padding="SAME", count_include_pad=False)
    if kind == "avg":
        return nn.avg_pool(x, (3, 3), (stride, stride), padding=padding)
    return layers.max_pool(jnp.pad(x, ((0, 0), *padding, (0, 0))), 3, stride)


class Adjust(nn.Module):
    """Brings `p` to `x`'s resolution and `features` channels (Keras' `_adjust_block`), or passes it through."""
    features: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, p, x):
        if p.shape[2] != x.shape[2]:  # twice the resolution (Keras compares the width)
            p = nn.relu(p)
            shifted = jnp.pad(p[:, 1:, 1:], ((0, 0), (0, 1), (0, 1), (0, 0)))
            half = self.features // 2
            p = jnp.concatenate([self.conv(half, (1, 1), padding=layers.pad(0), name=f"conv{k}")(y[:, ::2, ::2])
                                 for k, y in ((1, p), (2, shifted))], axis=-1)
            return self.norm(name="bn")(p)
        if p.shape[-1] != self.features:
            p = self.conv(self.features, (1, 1), padding=layers.pad(0), name="projection")(nn.relu(p))
            return self.norm(name="bn")(p)
        return p


class Cell(nn.Module):
    genotype: Genotype
    features: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x, p):
        p = x if p is None else Adjust(self.features, self.conv, self.norm, name="adjust")(p, x)  # Keras: p = ip
        h = self.conv(self.features, (1, 1), padding=layers.pad(0), name="conv1")(nn.relu(x))
        values = {"h": self.norm(name="bn1")(h), "p": p}
        for k, ops in enumerate(self.genotype.nodes, start=1):
            a, b = (self.op(op, values) for op in ops)
            values[f"x{k}"] = a + b
        return jnp.concatenate([values[v] for v in self.genotype.concat], axis=-1)

    def op(self, op: Op, values: dict):
        x = values[op.input]
        stride = self.genotype.stride if op.input in ("h", "p") else 1
        if op.kind == "sep":
            return SeparableBlock(self.features, op.kernel, stride, self.conv, self.norm, name=op.name)(x)
        if op.kind == "id":
            return x
        return pool(op.kind, x, stride)


class Stage(nn.Module):
    cells: Sequence
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x, p):
        for j, (genotype, width, _id, keep_p) in enumerate(self.cells, start=1):
            y = Cell(genotype, width, self.conv, self.norm, name=f"block{j}")(x, p)
            x, p = y, (p if keep_p else x)
        return x, p


class Stem(nn.Module):
    features: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        return self.norm(name="bn1")(self.conv(self.features, (3, 3), (2, 2), padding=layers.pad(0), name="conv1")(x))


class NASNet(nn.Module):
    """Returns a dict of the requested taps; computes nothing past the deepest one."""
    config: Config
    num_classes: int = 1000
    dtype: Any = jnp.float32
    frozen_bn: frozenset = frozenset()  # BatchNorm paths kept in inference mode when training

    @nn.compact
    def __call__(self, x, train: bool = False, taps: Sequence[str] = ("logits",)):
        # Depthwise convs and BatchNorm in float32 under bf16, as in the mobile families (blocks.mobile_partials).
        conv, norm = mobile_partials(self.dtype, train, BN_SETTINGS, self.frozen_bn)
        got = TapCollector(taps)

        x = Stem(self.config.stem, conv, norm, name="stem")(x.astype(self.dtype))
        if got.add("stem", x):
            return got.out
        p = None
        cells = stages(self.config)
        for s, stage in enumerate(cells, start=1):
            x, p = Stage(stage, conv, norm, name=f"stage{s}")(x, p)
            if s == len(cells):
                x = nn.relu(x)
            if got.add(f"stage{s}", x):
                return got.out
        return heads.pooled_logits(got, x, self.num_classes, self.dtype)


def keras_names(arch: str) -> dict[str, tuple[str, str]]:
    """Every cell lists both forms of `adjust`: the model has the one its shapes call for (as Keras builds it),
    and the file the same one."""
    table = {"predictions": ("head/fc", "dense"), "stem_conv1": ("stem/conv1", "conv"),
             "stem_bn1": ("stem/bn1", "bn")}
    for s, stage in enumerate(stages(CONFIGS[arch]), start=1):
        for j, (genotype, _width, cell, _keep) in enumerate(stage, start=1):
            path, kind = f"stage{s}/block{j}", genotype.keras
            table.update({f"{kind}_conv_1_{cell}": (f"{path}/conv1", "conv"),
                          f"{kind}_bn_1_{cell}": (f"{path}/bn1", "bn"),
                          f"adjust_conv_1_{cell}": (f"{path}/adjust/conv1", "conv"),
                          f"adjust_conv_2_{cell}": (f"{path}/adjust/conv2", "conv"),
                          f"adjust_conv_projection_{cell}": (f"{path}/adjust/projection", "conv"),
                          f"adjust_bn_{cell}": (f"{path}/adjust/bn", "bn")})
            for op in (op for ops in genotype.nodes for op in ops if op.kind == "sep"):
                for k in (1, 2):
                    table[f"separable_conv_{k}_{kind}_{op.name}_{cell}"] = (f"{path}/{op.name}/sepconv{k}", "separable")
                    table[f"separable_conv_{k}_bn_{kind}_{op.name}_{cell}"] = (f"{path}/{op.name}/bn{k}", "bn")
    return table


def signature(config: Config) -> tuple[int, int, int]:
    """What a file shows of a config: (stem width, width of the first normal cell, number of normal cells)."""
    return config.stem, config.width, 3 * config.blocks


def detect_keras(layers: dict) -> str | None:
    if "stem_conv1" not in layers or "reduction_conv_1_stem_1" not in layers:
        return None
    stem = layers["stem_conv1"][0].shape[-1]
    width = layers["normal_conv_1_0"][0].shape[-1] if "normal_conv_1_0" in layers else 0
    cells = sum(bool(re.fullmatch(r"normal_conv_1_\d+", name)) for name in layers)
    found = (stem, width, cells)
    arch = next((a for a, c in CONFIGS.items() if signature(c) == found), None)
    if arch is None:
        raise UserError(f"a Keras NASNet with stem width {stem}, cell width {width} and {cells} normal cells "
                        "(a generic NASNet); known (stem, cell width, cells): "
                        + ", ".join(f"{a} {signature(c)}" for a, c in CONFIGS.items()))
    return arch


def build(spec, config, **common):
    return NASNet(config, **common)


FAMILY = Family(
    name="nasnet",
    archs={arch: Arch(config, ("keras",), input_size=INPUT_SIZES[arch]) for arch, config in CONFIGS.items()},
    build=build,
    taps=TAPS,
    modules=("stem", "stage1", "stage2", "stage3", "stage4", "head"),
    top_block="stage4",
    bn={"keras": BN_SETTINGS},
    sources={"keras": Source("tf", keras_names, detect_keras, "NASNetMobile/Large")},
)
