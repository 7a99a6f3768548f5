"""Keras MobileNet (v1) and MobileNetV2 (alpha 1.0): parity with Keras 3 (JAX backend) at every tap.

As tests/test_keras_parity.py: random weights and BatchNorm statistics, written as Keras 3 `.weights.h5` and a
Keras-2-style `.h5`; both must convert to the same variables, and our forward must match Keras' at every tap.
112 px puts an odd (7x7) map before the last stride-2 block, where v1's ZeroPadding2D((0, 1), (0, 1)) and TF's
SAME disagree.
"""
from __future__ import annotations

import numpy as np
import pytest

import research
from research.errors import UserError
from tests import keras_files
from tests.conftest import resize

keras = pytest.importorskip("keras")

# (keras.applications name, our arch, include_top, input size)
CASES = [
    ("MobileNet", "mobilenet_v1", True, 96),
    ("MobileNet", "mobilenet_v1", False, 112),
    ("MobileNetV2", "mobilenet_v2", True, 96),
    ("MobileNetV2", "mobilenet_v2", False, 112),
]
STYLES = ("weights.h5", "keras2_h5")

# Our tap -> the Keras layer whose output it is (pre_logits: the GlobalAveragePooling2D layer, found by type).
KERAS_TAPS = {
    "mobilenet_v1": {"stem": "conv1_relu", "stage1": "conv_pw_1_relu", "stage2": "conv_pw_3_relu",
                     "stage3": "conv_pw_5_relu", "stage4": "conv_pw_11_relu", "stage5": "conv_pw_13_relu"},
    "mobilenet_v2": {"stem": "Conv1_relu", "stage1": "expanded_conv_project_BN", "stage2": "block_2_add",
                     "stage3": "block_5_add", "stage4": "block_12_add", "stage5": "block_16_project_BN"},
}


def keras_outputs(model, arch, images) -> dict[str, np.ndarray]:
    from keras.applications import imagenet_utils
    taps = dict(KERAS_TAPS[arch])
    taps["pre_logits"] = next(layer.name for layer in model.layers
                              if isinstance(layer, keras.layers.GlobalAveragePooling2D))
    if "predictions" in [layer.name for layer in model.layers]:
        taps["logits"] = "predictions"
    probe = keras.Model(model.input, [model.get_layer(layer).output for layer in taps.values()])
    outputs = probe.predict(imagenet_utils.preprocess_input(images.astype("float32"), mode="tf"), verbose=0)
    out = dict(zip(taps, outputs))
    out["pre_logits"] = out["pre_logits"].reshape(len(images), -1)  # v1's top pools with keepdims
    return out


@pytest.mark.parametrize("name,arch,include_top,size", CASES,
                         ids=[f"{c[0]}-{'top' if c[2] else 'notop'}-{c[3]}px" for c in CASES])
def test_matches_keras_at_every_tap(name, arch, include_top, size, photos, tmp_path):
    model = getattr(keras.applications, name)(weights=None, include_top=include_top, input_shape=(size, size, 3),
                                              pooling=None if include_top else "avg", classifier_activation=None)
    keras_files.randomize(model, seed=len(name) + size)
    images = resize(photos, size)
    reference = keras_outputs(model, arch, images)

    expected = {"arch": arch, "layout": "keras", "include_top": include_top,
                "num_classes": 1000 if include_top else 0, "preprocessing": "tf"}
    keras_files.check_styles(model, arch, STYLES, images, reference, tmp_path, expected)


def test_other_widths_are_refused(tmp_path):
    model = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(96, 96, 3), alpha=0.5)
    path = tmp_path / "mobilenet_v2_0.5.weights.h5"
    model.save_weights(path)
    with pytest.raises(UserError, match="alpha 1.0"):
        research.load(path)
