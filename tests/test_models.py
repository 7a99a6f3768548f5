"""Model structure: param counts against the sources' published ones, taps, early stopping, dtypes."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from research.errors import UserError
from research.models import ModelSpec
from research.weights import mapping

# Parameter counts that torchvision and keras.applications report (Keras counts BN statistics too).
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808, "vgg11": 132_863_336, "vgg11_bn": 132_868_840, "vgg13": 133_047_848,
    "vgg13_bn": 133_053_736, "vgg16": 138_357_544, "vgg16_bn": 138_365_992, "vgg19": 143_667_240,
    "vgg19_bn": 143_678_248,
}
KERAS_PARAMS = {"resnet50": 25_636_712, "resnet101": 44_707_176, "resnet152": 60_419_944,
                "vgg16": 138_357_544, "vgg19": 143_667_240}
KERAS_NOTOP_PARAMS = {"resnet50": 23_587_712, "vgg16": 14_714_688}


def _count(spec, collections=("params",)):
    return sum(int(np.prod(shape)) for key, shape in mapping.template(spec).items() if key[0] in collections)


@pytest.mark.parametrize("arch", sorted(TORCHVISION_PARAMS))
def test_torchvision_param_counts(arch):
    assert _count(ModelSpec(arch, "torchvision")) == TORCHVISION_PARAMS[arch]


@pytest.mark.parametrize("arch", sorted(KERAS_PARAMS))
def test_keras_param_counts(arch):
    both = ("params", "batch_stats")
    assert _count(ModelSpec(arch, "keras"), both) == KERAS_PARAMS[arch]
    if arch in KERAS_NOTOP_PARAMS:
        assert _count(ModelSpec(arch, "keras", include_top=False, num_classes=0), both) == KERAS_NOTOP_PARAMS[arch]


def test_param_paths_are_the_same_in_both_layouts():
    def paths(layout):
        return {k[1:-1] for k in mapping.template(ModelSpec("resnet50", layout))}
    assert paths("keras") == paths("torchvision")
    assert ("stage3", "block2", "conv2") in paths("keras")
    assert ("stage1", "block1", "downsample", "conv") in paths("keras")


@pytest.mark.parametrize("spec,expected", [
    (ModelSpec("resnet18", "torchvision"), {"stem": (1, 16, 16, 64), "stage1": (1, 16, 16, 64),
                                            "stage2": (1, 8, 8, 128), "stage4": (1, 2, 2, 512),
                                            "pre_logits": (1, 512), "logits": (1, 1000)}),
    (ModelSpec("resnet50", "keras", num_classes=7), {"stage4": (1, 2, 2, 2048), "logits": (1, 7)}),
    (ModelSpec("vgg11_bn", "torchvision", include_top=False, num_classes=0),
     {"block1_pool": (1, 32, 32, 64), "block5_pool": (1, 2, 2, 512)}),
])
def test_tap_shapes(spec, expected):
    model = spec.build()
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                                        taps=tuple(expected))[0])
    assert {k: v.shape for k, v in out.items()} == expected


def test_a_tap_computes_nothing_past_it():
    """With only the stem's variables the forward to `stem` runs; one tap deeper it needs stage1's."""
    spec = ModelSpec("resnet18", "torchvision")
    model = spec.build()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), taps=spec.taps)
    stem_only = {col: {"stem": tree["stem"]} for col, tree in variables.items()}
    assert model.apply(stem_only, jnp.ones((1, 32, 32, 3)), taps=("stem",))["stem"].shape == (1, 8, 8, 64)
    with pytest.raises(Exception, match="stage1"):
        model.apply(stem_only, jnp.ones((1, 32, 32, 3)), taps=("stage1",))


def test_unknown_and_missing_taps_are_user_errors():
    spec = ModelSpec("vgg16", "keras", include_top=False, num_classes=0)
    with pytest.raises(UserError, match="has no tap fc1"):
        spec.check_taps(["fc1"])
    assert spec.check_taps(["block5_pool", "block1_pool"]) == ("block1_pool", "block5_pool")


def test_unknown_arch_and_layout():
    with pytest.raises(UserError, match="unknown architecture"):
        ModelSpec("resnet42", "torchvision")
    with pytest.raises(UserError, match="no 'keras' layout"):
        ModelSpec("resnet18", "keras")


def test_bfloat16_computes_in_bf16_with_float32_params():
    spec = ModelSpec("resnet18", "torchvision", num_classes=10)
    model = spec.build(jnp.bfloat16)
    out, variables = model.init_with_output(jax.random.key(0), jnp.zeros((2, 32, 32, 3)), taps=("stage2", "logits"))
    leaves = traverse_util.flatten_dict(variables)
    assert {v.dtype for v in leaves.values()} == {jnp.dtype("float32")}
    assert out["stage2"].dtype == jnp.bfloat16 and out["logits"].dtype == jnp.bfloat16


def test_train_mode_updates_batch_stats():
    spec = ModelSpec("resnet18", "torchvision", num_classes=3)
    model = spec.build()
    variables = model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)), taps=spec.taps)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    before = variables["batch_stats"]["stem"]["bn1"]["mean"]
    assert not np.allclose(updates["batch_stats"]["stem"]["bn1"]["mean"], before)
