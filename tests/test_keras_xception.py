"""Keras Xception: parity with Keras 3 (JAX backend) at every tap, in every file style.

Random weights and BatchNorm statistics (`keras_files.randomize`), real photos; 71 px is the smallest input
Keras allows (odd maps before every stride-2 pool, where TF's SAME pads bottom/right only). The `full` case runs
the default 299 px: `python -m pytest -m full tests/test_keras_xception.py`.
"""
from __future__ import annotations

import time

import pytest

from tests import keras_files
from tests.conftest import resize

keras = pytest.importorskip("keras")

# (include_top, input size, file styles)
CASES = [(True, 71, ("keras2_h5", "weights.h5")), (False, 96, ("legacy_h5", "keras"))]


def keras_taps(model) -> dict[str, str]:
    """Our tap -> the Keras layer whose output it is: each stage ends where the next block's ReLU begins."""
    producer = keras_files.producer  # Keras names the shortcut additions automatically
    return {"stem": "block1_conv2_act", "stage1": producer(model, "block3_sepconv1_act"),
            "stage2": producer(model, "block4_sepconv1_act"), "stage3": producer(model, "block13_sepconv1_act"),
            "stage4": "block14_sepconv2_act"}


def check(include_top, size, styles, photos, tmp_path):
    model = keras.applications.Xception(weights=None, include_top=include_top, input_shape=(size, size, 3),
                                        pooling=None if include_top else "avg", classifier_activation=None)
    keras_files.randomize(model, seed=size)
    images = resize(photos, size)
    reference = keras_files.reference(model, keras_taps(model), images, "tf")
    expected = {"arch": "xception", "layout": "keras", "include_top": include_top,
                "num_classes": 1000 if include_top else 0, "preprocessing": "tf"}
    return keras_files.check_styles(model, "xception", styles, images, reference, tmp_path, expected)


@pytest.mark.parametrize("include_top,size,styles", CASES,
                         ids=[f"{'top' if c[0] else 'notop'}-{c[1]}px" for c in CASES])
def test_matches_keras_at_every_tap(include_top, size, styles, photos, tmp_path):
    check(include_top, size, styles, photos, tmp_path)


@pytest.mark.full
def test_matches_keras_at_default_size(photos, tmp_path):
    start = time.perf_counter()
    worst = check(True, 299, ("keras2_h5",), photos, tmp_path)
    print(f"\nxception 299 px: worst relative error {worst:.1e}, {time.perf_counter() - start:.0f} s")
