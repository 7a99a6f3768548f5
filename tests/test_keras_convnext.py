"""Keras ConvNeXtTiny/Small/Base/Large/XLarge: parity with Keras 3 (JAX backend) at every tap.

Random weights (LayerNorm and layer scale too), each file style loaded back (legacy .h5 files store the stem and
downsampling Sequentials as one layer each, Keras 3 files their inner layers), our forward on uint8 photos against
Keras' on the same pixels as floats (both normalise inside). CI runs Tiny at 64 px; `python -m pytest -m full
tests/test_keras_convnext.py` runs every member at 224 px.
"""
from __future__ import annotations

import time

import pytest

import research
from research import parity
from research.errors import UserError
from research.models import ModelSpec
from tests import keras_files
from tests.conftest import resize

keras = pytest.importorskip("keras")

# (keras.applications name, our arch, include_top, input size, file styles)
CASES = [
    ("ConvNeXtTiny", "convnext_tiny", True, 64, ("weights.h5", "keras2_h5")),
    ("ConvNeXtTiny", "convnext_tiny", False, 64, ("legacy_h5", "keras")),
]
FULL = [("ConvNeXtTiny", "convnext_tiny"), ("ConvNeXtSmall", "convnext_small"), ("ConvNeXtBase", "convnext_base"),
        ("ConvNeXtLarge", "convnext_large"), ("ConvNeXtXLarge", "convnext_xlarge")]


def keras_outputs(model, arch: str) -> dict:
    """Our tap -> Keras tensor: the stem Sequential's output, each stage's end (the input of the next
    downsampling Sequential; stage4's, of the global average pool), the head's (or a top-less model's last)
    LayerNorm, the head's dense layer. The residual adds are ops, not layers, so they have no names to ask for."""
    names = [layer.name for layer in model.layers]
    out = {"stem": model.get_layer(f"{arch}_stem").output}
    for s in range(3):
        out[f"stage{s + 1}"] = model.get_layer(f"{arch}_downsampling_block_{s}").input
    pool = next(layer for layer in model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D))
    out["stage4"] = pool.input
    head_norm = f"{arch}_head_layernorm"
    out["pre_logits"] = model.get_layer(head_norm if head_norm in names else names[-1]).output
    if f"{arch}_head_dense" in names:
        out["logits"] = model.get_layer(f"{arch}_head_dense").output
    return out


def build_keras(name, include_top, size):
    model = getattr(keras.applications, name)(weights=None, include_top=include_top, input_shape=(size, size, 3),
                                              pooling=None if include_top else "avg", classifier_activation=None)
    randomize(model, seed=len(name) + size)
    return model


def randomize(model, seed):
    """keras_files.randomize for the plain layers, plus the nested Sequentials' and the layer scales."""
    import numpy as np
    keras_files.randomize(model, seed)
    rng = np.random.default_rng(seed + 1)
    for layer in model.layers:
        if isinstance(layer, keras.Sequential):
            keras_files.randomize(layer, seed + 2)
        elif type(layer).__name__ == "LayerScale":
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in layer.get_weights()])


def reference(model, arch, images):
    taps = keras_outputs(model, arch)
    probe = keras.Model(model.input, list(taps.values()))
    return dict(zip(taps, probe.predict(images.astype("float32"), verbose=0)))


@pytest.mark.parametrize("name,arch,include_top,size,styles", CASES,
                         ids=[f"{c[0]}-{'top' if c[2] else 'notop'}-{c[3]}px" for c in CASES])
def test_matches_keras_at_every_tap(name, arch, include_top, size, styles, photos, tmp_path):
    model = build_keras(name, include_top, size)
    images = resize(photos, size)
    expected = {"arch": arch, "layout": "keras", "include_top": include_top,
                "num_classes": 1000 if include_top else 0, "preprocessing": "raw"}
    keras_files.check_styles(model, arch, styles, images, reference(model, arch, images), tmp_path, expected)


def test_another_model_name_is_refused(tmp_path):
    model = keras.applications.ConvNeXtTiny(weights=None, include_top=False, input_shape=(32, 32, 3), name="mine")
    path = tmp_path / "mine.weights.h5"
    model.save_weights(path)
    with pytest.raises(UserError, match="model name 'mine'"):
        research.load(path)


def test_fresh_head_and_bfloat16(photos, tmp_path):
    model = build_keras("ConvNeXtTiny", True, 64)
    path = tmp_path / "tiny.weights.h5"
    model.save_weights(path)
    images = resize(photos, 64)
    fresh = research.load(path, num_classes=5)
    assert fresh.variables["params"]["head"]["fc"]["kernel"].shape == (768, 5)
    assert fresh.features(images, ["logits"])["logits"].shape == (len(images), 5)
    bundle = research.load(path)
    taps = ["stage3", "pre_logits", "logits"]
    full, half = bundle.features(images, taps), bundle.features(images, taps, dtype="bfloat16")
    for tap in taps:
        assert parity.relative_error(half[tap], full[tap]) <= parity.BFLOAT16, tap


@pytest.mark.full
@pytest.mark.parametrize("name,arch", FULL, ids=[f[1] for f in FULL])
def test_every_member_at_its_default_size(name, arch, photos, tmp_path):
    size = ModelSpec(arch, "keras").input_size
    start = time.perf_counter()
    model = build_keras(name, True, size)
    images = resize(photos[:2], size)
    ref = reference(model, arch, images)
    expected = {"arch": arch, "layout": "keras", "include_top": True, "num_classes": 1000, "preprocessing": "raw"}
    worst = keras_files.check_styles(model, arch, ("keras2_h5", "weights.h5"), images, ref, tmp_path, expected)
    print(f"\nPARITY {arch} {size}px: {time.perf_counter() - start:.0f} s, worst relative error {worst:.1e}")
    keras.backend.clear_session()


def test_freeze_presets_cut_at_the_head_norm():
    from research.train import freeze
    assert freeze.preset("from:pre_logits", "convnext")[0] == ("^(top_norm|head)/", "train")
    assert freeze.preset("top_block", "convnext")[0] == ("^(stage4|top_norm|head)/", "train")
