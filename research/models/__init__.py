"""Model families and the spec that names one model exactly.

A `ModelSpec` is what a weight file determines (architecture, layout, top) plus the head size; `spec.build()`
gives the Flax module. Specs are hashable so that jitted forwards can be cached per spec.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from research.errors import UserError
from research.models import efficientnet, layers, mobilenet, resnet, vgg
from research.models.layers import HeadSpec

LAYOUTS = ("keras", "torchvision")

# arch -> (family, layouts that publish ImageNet weights for it). Keras has no ResNet-18/34 and no VGG-BN.
ARCHS = {
    **{name: ("resnet", LAYOUTS if name in ("resnet50", "resnet101", "resnet152") else ("torchvision",))
       for name in resnet.STAGE_SIZES},
    **{name: ("vgg", LAYOUTS if name in ("vgg16", "vgg19") else ("torchvision",)) for name in vgg.BLOCK_DEPTHS},
    **{f"{name}_bn": ("vgg", ("torchvision",)) for name in vgg.BLOCK_DEPTHS},
    **{name: ("efficientnet", ("efficientnet_pytorch",)) for name in efficientnet.VARIANTS},
    **{name: ("mobilenet", ("keras",)) for name in mobilenet.VARIANTS},
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """`include_top`: the source's own classifier layers (VGG's fc1/fc2 and the ImageNet head) are present.
    `num_classes`: the head's size, 0 for none; a head whose size differs from the source's is fresh.
    `head`: the head's shape (a fine-tuned model's may have hidden layers); the default is the linear head."""
    arch: str
    layout: str
    include_top: bool = True
    num_classes: int = 1000
    head: HeadSpec = HeadSpec()

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise UserError(f"unknown architecture {self.arch!r}; known: {', '.join(ARCHS)}")
        if self.layout not in ARCHS[self.arch][1]:
            raise UserError(f"{self.arch} has no {self.layout!r} layout; it has: {', '.join(ARCHS[self.arch][1])}")
        if self.num_classes < 0:
            raise UserError(f"num_classes must be >= 0, got {self.num_classes}")
        object.__setattr__(self, "head", HeadSpec.of(self.head))  # a dict when read back from research.json

    @property
    def family(self) -> str:
        return ARCHS[self.arch][0]

    @property
    def taps(self) -> tuple[str, ...]:
        """The taps this model has, shallowest first."""
        if self.family == "resnet":
            taps = resnet.TAPS[:-1]
        elif self.family == "efficientnet":
            taps = efficientnet.TAPS[:-1]
        elif self.family == "mobilenet":
            taps = mobilenet.TAPS[:-1]
        else:
            taps = vgg.TAPS[:5] + (vgg.TAPS[5:7] if self.include_top else ())
        return taps + (("logits",) if self.num_classes else ())

    def check_taps(self, taps) -> tuple[str, ...]:
        """Validates `taps` and orders them by depth, so equal requests share one compiled forward."""
        taps = tuple(taps)
        unknown = [t for t in taps if t not in self.taps]
        if unknown or not taps:
            raise UserError(f"{self.arch} has no tap {', '.join(unknown) or '(none given)'}; "
                            f"it has: {', '.join(self.taps)}")
        return tuple(t for t in self.taps if t in taps)

    @property
    def fixed_input_size(self) -> int | None:
        """224 where a VGG flattens block5_pool straight into a dense layer (Keras' fc1, or a fresh head with no
        top), since that layer's size is fixed by the spatial size; torchvision pools to 7x7 first. ResNets
        take any size."""
        if self.family != "vgg":
            return None
        flattens = (self.include_top and self.layout == "keras") or (self.num_classes and not self.include_top
                                                                   and self.head.pool == "flatten")
        return 224 if flattens else None

    def build(self, dtype: Any = jnp.float32, frozen_bn: frozenset = frozenset()):
        """The Flax module; `frozen_bn` lists BatchNorm paths that stay in inference mode when training."""
        if not self.head.is_linear and self.num_classes:
            return Classifier(dataclasses.replace(self, num_classes=0).build(dtype, frozen_bn), self.feed_tap,
                              self.head, self.num_classes, self.bn_settings, dtype, frozen_bn=frozenset(frozen_bn))
        common = dict(num_classes=self.num_classes, dtype=dtype, frozen_bn=frozenset(frozen_bn))
        if self.family == "resnet":
            stages, bottleneck = resnet.STAGE_SIZES[self.arch]
            return resnet.ResNet(stages, bottleneck, self.layout, **common)
        if self.family == "efficientnet":
            return efficientnet.EfficientNetLite(efficientnet.VARIANTS[self.arch], self.layout, **common)
        if self.family == "mobilenet":
            return mobilenet.MobileNet(self.arch, self.layout, **common)
        base = self.arch.removesuffix("_bn")
        return vgg.VGG(vgg.BLOCK_DEPTHS[base], self.arch.endswith("_bn"), self.layout, self.include_top, **common)

    @property
    def feed_tap(self) -> str:
        """The tap a head reads."""
        if self.family == "vgg":
            return "fc2" if self.include_top else "block5_pool"
        return "pre_logits"

    @property
    def bn_settings(self) -> tuple:
        bn = efficientnet.BN_SETTINGS if self.family == "efficientnet" else layers.BN_SETTINGS[self.layout]
        if self.family == "mobilenet":
            bn = mobilenet.BN_SETTINGS[self.arch]
        return tuple(sorted(bn.items()))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Classifier(nn.Module):
    """A headless backbone plus a non-linear `Head`, with the backbone's params at their usual paths (the scope is
    shared) and the head's under `head/`, so freeze rules and converters see the same names as without it."""
    backbone: nn.Module
    feed: str
    head: HeadSpec
    num_classes: int
    bn_settings: tuple
    dtype: Any = jnp.float32
    frozen_bn: frozenset = frozenset()

    def setup(self):
        nn.share_scope(self, self.backbone)

    @nn.compact
    def __call__(self, x, train: bool = False, taps=("logits",)):
        wanted = set(taps)
        out = self.backbone(x, train=train, taps=tuple((wanted - {"logits"}) | {self.feed}))
        if "logits" in wanted:
            norm = layers.norm_partial(self.dtype, train, **dict(self.bn_settings), frozen=self.frozen_bn)
            out["logits"] = layers.Head(self.num_classes, self.dtype, self.head, train, norm, name="head")(
                out[self.feed])
        return {k: v for k, v in out.items() if k in wanted}
