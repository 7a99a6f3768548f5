"""Keras MobileNet (v1) and MobileNetV2 at every published width: parity with Keras 3 (JAX backend) at every tap.

As tests/test_keras_parity.py: random weights and BatchNorm statistics, written in the file styles; all must
convert to the same variables, and our forward must match Keras' at every tap. CI runs alpha 1.0 and the
narrowest and widest other widths at 96 px; `-m full` runs every width at 224 px.
112 px puts an odd (7x7) map before the last stride-2 block, where v1's ZeroPadding2D((0, 1), (0, 1)) and TF's
SAME disagree.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import research
from research.errors import UserError
from research.models import mobilenet
from tests import keras_files
from tests.conftest import resize

keras = pytest.importorskip("keras")

# (keras.applications name, alpha, include_top, input size, file styles)
CASES = [
    ("MobileNet", 1.0, True, 96, ("weights.h5", "keras2_h5")),
    ("MobileNet", 1.0, False, 112, ("weights.h5", "keras2_h5")),
    ("MobileNetV2", 1.0, True, 96, ("weights.h5", "keras2_h5")),
    ("MobileNetV2", 1.0, False, 112, ("weights.h5", "keras2_h5")),
    pytest.param("MobileNet", 0.25, True, 96, ("legacy_h5",), marks=pytest.mark.full),
    ("MobileNet", 0.75, False, 96, ("keras",)),
    pytest.param("MobileNetV2", 0.35, True, 96, ("keras2_h5",), marks=pytest.mark.full),
    ("MobileNetV2", 1.4, False, 96, ("legacy_h5",)),
]

# Our tap -> the Keras layer whose output it is (pre_logits: the GlobalAveragePooling2D layer, found by type).
KERAS_TAPS = {
    "MobileNet": {"stem": "conv1_relu", "stage1": "conv_pw_1_relu", "stage2": "conv_pw_3_relu",
                  "stage3": "conv_pw_5_relu", "stage4": "conv_pw_11_relu", "stage5": "conv_pw_13_relu"},
    "MobileNetV2": {"stem": "Conv1_relu", "stage1": "expanded_conv_project_BN", "stage2": "block_2_add",
                    "stage3": "block_5_add", "stage4": "block_12_add", "stage5": "block_16_project_BN"},
}


def arch_name(name: str, alpha: float) -> str:
    return f"mobilenet_v{2 if name.endswith('V2') else 1}" + ("" if alpha == 1.0 else f"_{alpha}")


def check(name, alpha, include_top, size, styles, photos, tmp_path):
    keras_files.check_application(name, KERAS_TAPS[name], "tf", resize(photos, size), tmp_path, styles,
                                  {"arch": arch_name(name, alpha), "preprocessing": "tf"}, include_top=include_top,
                                  seed=len(name) + size, alpha=alpha)


@pytest.mark.parametrize("name,alpha,include_top,size,styles", CASES,
                         ids=[f"{c[0]}-{c[1]}-{'top' if c[2] else 'notop'}-{c[3]}px"
                              for c in map(keras_files.case_values, CASES)])
def test_matches_keras_at_every_tap(name, alpha, include_top, size, styles, photos, tmp_path):
    check(name, alpha, include_top, size, styles, photos, tmp_path)


@pytest.mark.full
@pytest.mark.parametrize("name,alpha", [(n, a) for n, v in (("MobileNet", 1), ("MobileNetV2", 2))
                                        for a in mobilenet.ALPHAS[v]])
def test_every_width_at_224(name, alpha, photos, tmp_path):
    check(name, alpha, True, 224, ("keras2_h5",), photos, tmp_path)


@pytest.mark.full  # builds ten Keras models
def test_widths_are_keras(photos):
    """Our widths are Keras' at every alpha it publishes (the `_make_divisible` rounding included)."""
    for arch, (version, alpha) in mobilenet.ARCHS.items():
        name = "MobileNetV2" if version == 2 else "MobileNet"
        model = getattr(keras.applications, name)(weights=None, include_top=False, input_shape=(96, 96, 3),
                                                  alpha=alpha)
        ours = research.models.ModelSpec(arch, "keras", False, 0).build()
        shapes = jax.eval_shape(lambda: ours.init(jax.random.key(0), jnp.zeros((1, 96, 96, 3))))
        kernels = [leaf.shape for path, leaf in jax.tree_util.tree_flatten_with_path(shapes["params"])[0]]
        assert sum(np.prod(k) for k in kernels) + sum(
            np.prod(v.shape) for v in jax.tree.leaves(shapes["batch_stats"])) == model.count_params(), arch


def test_unpublished_width_is_refused(tmp_path):
    model = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(96, 96, 3), alpha=0.6)
    path = tmp_path / "mobilenet_v2_0.6.weights.h5"
    model.save_weights(path)
    with pytest.raises(UserError, match="known alphas: 0.35, 0.5, 0.75, 1.0, 1.3, 1.4"):
        research.load(path)
