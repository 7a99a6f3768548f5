"""Keras InceptionV3 and InceptionResNetV2: parity with Keras 3 (JAX backend) at every tap, in every file style.

Random weights and BatchNorm statistics (`keras_files.randomize`), real photos; 75 px is the smallest input Keras
allows (1x1 maps at 1/32). Keras names most of these layers automatically, with per-session numbers: each model
is built after throwaway layers, so its numbers never start where the official files' do. The `full` cases run
the default 299 px: `python -m pytest -m full tests/test_keras_inception.py`.
"""
from __future__ import annotations

import time

import pytest

from research.models.registry import keras_auto_names
from tests import keras_files
from tests.conftest import resize

keras = pytest.importorskip("keras")

# (keras.applications name, our arch, include_top, input size, file styles)
CASES = [
    ("InceptionV3", "inception_v3", True, 75, ("keras2_h5", "weights.h5")),
    ("InceptionV3", "inception_v3", False, 96, ("legacy_h5", "keras")),
]
# Not in CI, for time (InceptionV3 is the family's smallest member; InceptionResNetV2 without its top took 150 s
# on a loaded machine): run with `-m full`.
SLOW = [("InceptionResNetV2", "inception_resnet_v2", True, 75, ("keras2_h5", "legacy_h5")),
        ("InceptionResNetV2", "inception_resnet_v2", False, 75, ("weights.h5", "keras"))]
FULL = [("InceptionV3", "inception_v3"), ("InceptionResNetV2", "inception_resnet_v2")]


def keras_taps(model) -> dict[str, str]:
    """Our tap -> the Keras layer whose output it is. The stem and stage1 end where the two stem max-pools begin
    (the first two in any topological order)."""
    pools = [layer.name for layer in model.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    taps = {"stem": keras_files.producer(model, pools[0]), "stage1": keras_files.producer(model, pools[1])}
    if "conv_7b" in [layer.name for layer in model.layers]:
        return {**taps, "stage2": "block35_10_ac", "stage3": "block17_20_ac",
                "stage4": keras_files.producer(model, "conv_7b")}
    return {**taps, "stage2": "mixed2", "stage3": "mixed7", "stage4": "mixed10"}


def build(name, include_top, size):
    for _ in range(3):  # move Keras' automatic layer numbers on
        keras.layers.Conv2D(1, 1), keras.layers.BatchNormalization()
    model = getattr(keras.applications, name)(weights=None, include_top=include_top, input_shape=(size, size, 3),
                                              pooling=None if include_top else "avg", classifier_activation=None)
    keras_files.randomize(model, seed=len(name) + size)
    return model


def check(name, arch, include_top, size, styles, photos, tmp_path):
    model = build(name, include_top, size)
    images = resize(photos, size)
    reference = keras_files.reference(model, keras_taps(model), images, "tf")
    expected = {"arch": arch, "layout": "keras", "include_top": include_top,
                "num_classes": 1000 if include_top else 0, "preprocessing": "tf"}
    worst = keras_files.check_styles(model, arch, styles, images, reference, tmp_path, expected)
    if not include_top:
        keras_files.check_fine_tuning(model, images, tmp_path)
    return worst


@pytest.mark.parametrize("name,arch,include_top,size,styles",
                         CASES + [pytest.param(*c, marks=pytest.mark.full) for c in SLOW],
                         ids=[f"{c[0]}-{'top' if c[2] else 'notop'}-{c[3]}px" for c in CASES + SLOW])
def test_matches_keras_at_every_tap(name, arch, include_top, size, styles, photos, tmp_path):
    check(name, arch, include_top, size, styles, photos, tmp_path)


@pytest.mark.full
@pytest.mark.parametrize("name,arch", FULL)
def test_matches_keras_at_default_size(name, arch, photos, tmp_path):
    start = time.perf_counter()
    worst = check(name, arch, True, 299, ("keras2_h5",), photos, tmp_path)
    print(f"\n{arch} 299 px: worst relative error {worst:.1e}, {time.perf_counter() - start:.0f} s")


def test_automatic_names_are_matched_in_creation_order():
    official = [f"conv2d_{i}" for i in (10, 2, 1, 3, 4, 5, 6, 7, 8, 9)] + ["predictions"]  # Keras 2: from 1
    assert keras_auto_names(official, ("conv2d",)) == {n: n for n in official}
    session = ["conv2d_12", "conv2d", "conv2d_3", "conv2d_1x1", "predictions"]  # Keras 3: from 0, or from anywhere
    assert keras_auto_names(session, ("conv2d",)) == {"conv2d": "conv2d_1", "conv2d_3": "conv2d_2",
                                                       "conv2d_12": "conv2d_3", "conv2d_1x1": "conv2d_1x1",
                                                       "predictions": "predictions"}
