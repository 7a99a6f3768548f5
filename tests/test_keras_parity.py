"""Parity with Keras 3 (JAX backend) at every tap, for each Keras weight-file style.

Each case builds a keras.applications model with random weights and random BatchNorm statistics, writes it in
several file styles, and checks that every style converts to the same variables and that our forward matches
Keras' own at every tap, pre-softmax logits included.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests import keras_files
from tests.conftest import resize

keras = pytest.importorskip("keras")

# (keras.applications name, include_top, input size, file styles)
CASES = [
    ("ResNet50", True, 64, ("weights.h5", "keras", "model_h5", "legacy_h5", "keras2_h5")),
    # ResNet50 is the family's CI case; the deeper members run with `-m full`
    pytest.param("ResNet101", False, 64, ("keras2_h5", "weights.h5"), marks=pytest.mark.full),
    pytest.param("ResNet152", True, 64, ("legacy_h5",), marks=pytest.mark.full),
    ("VGG16", False, 64, ("keras2016_h5", "weights.h5", "legacy_h5", "keras2_h5")),
    ("VGG16", True, 224, ("keras2016_h5",)),
    pytest.param("VGG19", True, 224, ("keras2_h5",), marks=pytest.mark.full),
    ("VGG19", False, 64, ("weights.h5", "keras2016_h5")),
]


def keras_tap_layers(model) -> dict[str, str]:
    """Our tap -> the Keras layer whose output it is."""
    names = [layer.name for layer in model.layers]
    if "pool1_pool" in names:
        taps = {"stem": "pool1_pool", "pre_logits": "avg_pool"}
        for i in range(1, 5):
            taps[f"stage{i}"] = [n for n in names if n.startswith(f"conv{i + 1}_") and n.endswith("_out")][-1]
    else:
        taps = {f"block{b}_pool": f"block{b}_pool" for b in range(1, 6)}
        taps.update({"fc1": "fc1", "fc2": "fc2"})
    taps["logits"] = "predictions"
    return {tap: layer for tap, layer in taps.items() if layer in names}


def keras_outputs(model, images) -> dict[str, np.ndarray]:
    from keras.applications import imagenet_utils
    taps = keras_tap_layers(model)
    probe = keras.Model(model.input, [model.get_layer(layer).output for layer in taps.values()])
    outputs = probe.predict(imagenet_utils.preprocess_input(images.astype("float32"), mode="caffe"), verbose=0)
    return dict(zip(taps, outputs))


@pytest.mark.parametrize("name,include_top,size,styles", CASES,
                         ids=[f"{c[0]}-{'top' if c[1] else 'notop'}-{c[2]}px"
                              for c in map(keras_files.case_values, CASES)])
def test_matches_keras_at_every_tap(name, include_top, size, styles, photos, tmp_path):
    pooling = "avg" if name.startswith("ResNet") and not include_top else None  # Keras names it avg_pool too
    model = getattr(keras.applications, name)(weights=None, include_top=include_top, input_shape=(size, size, 3),
                                              pooling=pooling, classifier_activation=None)
    keras_files.randomize(model, seed=len(name) + size)
    images = resize(photos, size)
    reference = keras_outputs(model, images)

    expected = {"arch": name.lower(), "layout": "keras", "include_top": include_top, "preprocessing": "caffe"}
    keras_files.check_styles(model, name.lower(), styles, images, reference, tmp_path, expected)
