"""The family registry: a family declared in one module and registered with one line works everywhere (detection
and conversion of its Keras files, preprocessing, taps, freeze presets, fresh heads), with nothing else changed."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

import research
from research.experiments import smoke
from research.models import ModelSpec, heads, layers, registry
from research.models.registry import Arch, Family, Source, TapCollector
from research.train import freeze
from research.weights import mapping

BN = dict(epsilon=1e-3, momentum=0.99)


class ConvBlock(nn.Module):
    features: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        x = self.conv(self.features, (3, 3), (2, 2), padding=layers.pad(1), name="conv")(x)
        return nn.relu(self.norm(name="bn")(x))


class Toy(nn.Module):
    widths: tuple
    num_classes: int = 1000
    dtype: Any = jnp.float32
    frozen_bn: frozenset = frozenset()

    @nn.compact
    def __call__(self, x, train: bool = False, taps=("logits",)):
        conv = layers.conv_partial(self.dtype, use_bias=False)
        norm = layers.norm_partial(self.dtype, train, **BN, frozen=self.frozen_bn)
        got = TapCollector(taps)
        for name, width in zip(("stem", "stage1"), self.widths):
            x = ConvBlock(width, conv, norm, name=name)(x.astype(self.dtype))
            if got.add(name, x):
                return got.out
        return heads.pooled_logits(got, x, self.num_classes, self.dtype)


KERAS_NAMES = {"toy_conv1": ("stem/conv", "conv"), "toy_conv1_bn": ("stem/bn", "bn"),
               "toy_conv2": ("stage1/conv", "conv"), "toy_conv2_bn": ("stage1/bn", "bn"),
               "predictions": ("head/fc", "dense")}

FAMILY = Family(
    name="toy", archs={"toynet": Arch((4, 8), ("keras",))},
    build=lambda spec, widths, **common: Toy(widths, **common),
    taps=("stem", "stage1", "pre_logits", "logits"), modules=("stem", "stage1", "head"), top_block="stage1",
    bn={"keras": BN},
    sources={"keras": Source("tf", lambda arch: KERAS_NAMES,
                             lambda file: "toynet" if "toy_conv1" in file else None, "ToyNet")},
)


@pytest.fixture
def toy():
    """FAMILY registered the way research/models/__init__.py registers every family, and unregistered after."""
    saved = dict(registry.FAMILIES), dict(registry.ARCHS)
    registry.register(FAMILY)
    yield
    for table, old in zip((registry.FAMILIES, registry.ARCHS), saved):
        table.clear()
        table.update(old)


def test_a_registered_family_loads_from_keras_and_works_everywhere(toy, tmp_path):
    path = smoke.keras_file("toynet", True, tmp_path / "toy.h5")  # a Keras 2 file, through the name table
    bundle = research.load(path)
    assert bundle.spec == ModelSpec("toynet", "keras", True, 1000) and bundle.preprocessing == "tf"
    assert mapping.template(bundle.spec)[("params", "stage1", "conv", "kernel")] == (3, 3, 4, 8)

    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), np.uint8)
    out = bundle.features(images, taps=["stage1", "logits"])
    assert out["stage1"].shape == (2, 4, 4, 8) and out["logits"].shape == (2, 1000)

    params = bundle.variables["params"]
    assert sorted({p.split("/")[0] for p in freeze.plan("from:stage1", "toy", params).trainable}) == ["head",
                                                                                                      "stage1"]
    assert freeze.plan("top_block", "toy", params).trainable == freeze.plan("from:stage1", "toy", params).trainable

    fresh = bundle.with_head(3, image_size=16)
    assert fresh.features(images, taps="logits")["logits"].shape == (2, 3)
    np.testing.assert_array_equal(fresh.variables["params"]["stage1"]["conv"]["kernel"],
                                  params["stage1"]["conv"]["kernel"])


def test_a_family_or_arch_registers_once(toy):
    with pytest.raises(ValueError, match="already registered"):
        registry.register(FAMILY)
