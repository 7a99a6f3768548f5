"""Model families and the spec that names one model exactly.

Each family is one module that declares its `Family` record (research/models/registry.py); the lines below
register them. A `ModelSpec` is what a weight file determines (architecture, layout, top) plus the head size;
`spec.build()` gives the Flax module. Specs are hashable so that jitted forwards can be cached per spec.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from research.errors import UserError
from research.models import (convnext, densenet, efficientnet, efficientnet_v2, inception, mobilenet, mobilenet_v3,
                            nasnet, registry, resnet, resnet_v2, vgg, vit, xception)
from research.models.heads import Classifier, HeadSpec
from research.models.registry import ARCHS, Family

# The families, one line each, in the order detection asks them.
registry.register(resnet.FAMILY)
registry.register(vgg.FAMILY)
registry.register(efficientnet.FAMILY)
registry.register(mobilenet.FAMILY)
registry.register(efficientnet_v2.FAMILY)
registry.register(resnet_v2.FAMILY)
registry.register(densenet.FAMILY)
registry.register(xception.FAMILY)
registry.register(inception.FAMILY)
registry.register(mobilenet_v3.FAMILY)
registry.register(convnext.FAMILY)
registry.register(nasnet.FAMILY)
registry.register(vit.FAMILY)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """`include_top`: the source's own classifier layers (VGG's fc1/fc2 and the ImageNet head) are present.
    `num_classes`: the head's size, 0 for none; a head whose size differs from the source's is fresh.
    `head`: the head's shape (a fine-tuned model's may have hidden layers); the default is the linear head.
    `options`: build arguments that the weights' own config sets (timm's `model_args`, see
    `registry.Source.options`), as sorted (name, value) pairs so that specs stay hashable; `input_size` among
    them overrides the arch's."""
    arch: str
    layout: str
    include_top: bool = True
    num_classes: int = 1000
    head: HeadSpec = HeadSpec()
    options: tuple = ()

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise UserError(f"unknown architecture {self.arch!r}; known: {', '.join(ARCHS)}")
        if self.layout not in ARCHS[self.arch][1]:
            raise UserError(f"{self.arch} has no {self.layout!r} layout; it has: {', '.join(ARCHS[self.arch][1])}")
        if self.num_classes < 0:
            raise UserError(f"num_classes must be >= 0, got {self.num_classes}")
        object.__setattr__(self, "head", HeadSpec.of(self.head))  # a dict when read back from research.json
        object.__setattr__(self, "options", _frozen(self.options))  # a dict when read back from research.json

    @property
    def family(self) -> str:
        return ARCHS[self.arch][0]

    @property
    def record(self) -> Family:
        """Everything about this spec's family (research/models/registry.py)."""
        return registry.family(self.family)

    @property
    def taps(self) -> tuple[str, ...]:
        """The taps this model has, shallowest first."""
        record = self.record
        every = record.spec_taps(self) if record.spec_taps else record.archs[self.arch].taps or record.taps
        taps = tuple(t for t in every if t != "logits" and (self.include_top or t not in record.top_taps))
        return taps + (("logits",) if self.num_classes else ())

    @property
    def top_modules(self) -> tuple[str, ...]:
        """The modules of the source's top below the head (VGG's fc1, fc2): what a spec without its top drops."""
        return tuple(self.record.module_of(t) for t in self.record.top_taps)

    def check_taps(self, taps) -> tuple[str, ...]:
        """Validates `taps` and orders them by depth, so equal requests share one compiled forward."""
        taps = tuple(taps)
        unknown = [t for t in taps if t not in self.taps]
        if unknown or not taps:
            raise UserError(f"{self.arch} has no tap {', '.join(unknown) or '(none given)'}; "
                            f"it has: {', '.join(self.taps)}")
        return tuple(t for t in self.taps if t in taps)

    @property
    def input_size(self) -> int:
        """The size the arch was trained at."""
        return self.option("input_size", self.record.archs[self.arch].input_size)

    def option(self, name: str, default=None):
        return dict(self.options).get(name, default)

    @property
    def fixed_input_size(self) -> int | None:
        """The input size where this model only takes one (a VGG that flattens block5_pool straight into a dense
        layer, whose size the spatial size fixes), else None: the model takes any size."""
        return self.input_size if self.record.fixed_input(self) else None

    def build(self, dtype: Any = jnp.float32, frozen_bn: frozenset = frozenset()):
        """The Flax module; `frozen_bn` lists BatchNorm paths that stay in inference mode when training."""
        if not self.head.is_linear and self.num_classes:
            return Classifier(dataclasses.replace(self, num_classes=0).build(dtype, frozen_bn), self.feed_tap,
                              self.head, self.num_classes, self.bn_settings, dtype, frozen_bn=frozenset(frozen_bn))
        return self.record.build(self, self.record.archs[self.arch].config, num_classes=self.num_classes,
                                 dtype=dtype, frozen_bn=frozenset(frozen_bn))

    @property
    def feed_tap(self) -> str:
        """The tap a head reads."""
        return next(t for t in self.record.feed_taps if t in self.taps)

    @property
    def bn_settings(self) -> tuple:
        return tuple(sorted(self.record.bn_settings(self.arch, self.layout).items()))

    def to_dict(self) -> dict:
        """As research.json stores it; `options` only where there are some, so older records read the same."""
        out = dataclasses.asdict(self)
        out.pop("options")
        return {**out, "options": {k: _thawed(v) for k, v in self.options}} if self.options else out


def _frozen(value):
    """JSON-like values (dicts, lists) as hashable sorted tuples."""
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def _thawed(value):
    return list(value) if isinstance(value, tuple) else value


__all__ = ["ARCHS", "HeadSpec", "ModelSpec", "registry"]
