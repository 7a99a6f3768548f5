"""Model families and the spec that names one model exactly.

A `ModelSpec` is what a weight file determines (architecture, layout, top) plus the head size; `spec.build()`
gives the Flax module. Specs are hashable so that jitted forwards can be cached per spec.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from research.errors import UserError
from research.models import resnet, vgg

LAYOUTS = ("keras", "torchvision")

# arch -> (family, layouts that publish ImageNet weights for it). Keras has no ResNet-18/34 and no VGG-BN.
ARCHS = {
    **{name: ("resnet", LAYOUTS if name in ("resnet50", "resnet101", "resnet152") else ("torchvision",))
       for name in resnet.STAGE_SIZES},
    **{name: ("vgg", LAYOUTS if name in ("vgg16", "vgg19") else ("torchvision",)) for name in vgg.BLOCK_DEPTHS},
    **{f"{name}_bn": ("vgg", ("torchvision",)) for name in vgg.BLOCK_DEPTHS},
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """`include_top`: the source's own classifier layers (VGG's fc1/fc2 and the ImageNet head) are present.
    `num_classes`: the head's size, 0 for none; a head whose size differs from the source's is fresh."""
    arch: str
    layout: str
    include_top: bool = True
    num_classes: int = 1000

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise UserError(f"unknown architecture {self.arch!r}; known: {', '.join(ARCHS)}")
        if self.layout not in ARCHS[self.arch][1]:
            raise UserError(f"{self.arch} has no {self.layout!r} layout; it has: {', '.join(ARCHS[self.arch][1])}")
        if self.num_classes < 0:
            raise UserError(f"num_classes must be >= 0, got {self.num_classes}")

    @property
    def family(self) -> str:
        return ARCHS[self.arch][0]

    @property
    def taps(self) -> tuple[str, ...]:
        """The taps this model has, shallowest first."""
        if self.family == "resnet":
            taps = resnet.TAPS[:-1]
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
        flattens = (self.include_top and self.layout == "keras") or (self.num_classes and not self.include_top)
        return 224 if flattens else None

    def build(self, dtype: Any = jnp.float32):
        if self.family == "resnet":
            stages, bottleneck = resnet.STAGE_SIZES[self.arch]
            return resnet.ResNet(stages, bottleneck, self.layout, self.num_classes, dtype)
        base = self.arch.removesuffix("_bn")
        return vgg.VGG(vgg.BLOCK_DEPTHS[base], self.arch.endswith("_bn"), self.layout, self.include_top,
                       self.num_classes, dtype)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
