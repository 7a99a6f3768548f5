"""Keras EfficientNetB0-B7 and EfficientNetV2B0-B3/S/M/L: parity with Keras 3 (JAX backend) at every tap.

Random weights and BatchNorm statistics (and, for B0-B7, random Normalization statistics in the file), each file
style loaded back, our forward on uint8 photos against Keras' on the same pixels as floats (both models normalise
inside). CI runs B0 and V2B0 at small sizes; `python -m pytest -m full tests/test_keras_efficientnet.py` runs
every member at its default size (slow: B7 at 600 px and V2-L at 480 px on 2 photos).
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

import research
from research import parity
from research.errors import UserError
from research.models import ModelSpec, efficientnet
from tests import keras_files
from tests.conftest import resize

keras = pytest.importorskip("keras")

# (keras.applications name, our arch, include_top, input size, file styles)
CASES = [
    ("EfficientNetB0", "efficientnet_b0", True, 64, ("weights.h5", "keras2_h5")),
    ("EfficientNetB0", "efficientnet_b0", False, 72, ("legacy_h5", "keras")),
    ("EfficientNetV2B0", "efficientnet_v2_b0", True, 64, ("keras", "legacy_h5")),
    ("EfficientNetV2B0", "efficientnet_v2_b0", False, 72, ("keras2_h5", "weights.h5")),
]
# Cheapest first, so that a time-limited run covers the most members.
FULL = [("EfficientNetB0", "efficientnet_b0"), ("EfficientNetV2B0", "efficientnet_v2_b0"),
        ("EfficientNetB1", "efficientnet_b1"), ("EfficientNetV2B1", "efficientnet_v2_b1"),
        ("EfficientNetB2", "efficientnet_b2"), ("EfficientNetV2B2", "efficientnet_v2_b2"),
        ("EfficientNetB3", "efficientnet_b3"), ("EfficientNetV2B3", "efficientnet_v2_b3"),
        ("EfficientNetV2S", "efficientnet_v2_s"), ("EfficientNetB4", "efficientnet_b4"),
        ("EfficientNetB5", "efficientnet_b5"), ("EfficientNetV2M", "efficientnet_v2_m"),
        ("EfficientNetB6", "efficientnet_b6"), ("EfficientNetV2L", "efficientnet_v2_l"),
        ("EfficientNetB7", "efficientnet_b7")]


def keras_taps(model) -> dict[str, str]:
    """Our tap -> the Keras layer that ends it: `stem_activation`, each block group's last block (its `add`, or
    its projection where it has no residual), `top_activation`."""
    names = [layer.name for layer in model.layers]
    taps = {"stem": "stem_activation"}
    for s in range(1, 8):
        blocks = sorted({n.split("_")[0] for n in names if n.startswith(f"block{s}") and n[len(f"block{s}")].isalpha()})
        if blocks:
            last = blocks[-1]
            taps[f"stage{s}"] = next(n for n in (f"{last}_add", f"{last}_project_activation", f"{last}_project_bn")
                                     if n in names)
    taps["top"] = "top_activation"
    taps["pre_logits"] = "avg_pool"  # not the first GlobalAveragePooling2D: the blocks' se_squeeze are too
    return taps


def build_keras(name, include_top, size):
    model = getattr(keras.applications, name)(weights=None, include_top=include_top, input_shape=(size, size, 3),
                                              pooling=None if include_top else "avg", classifier_activation=None)
    keras_files.randomize(model, seed=len(name) + size)
    return model


@pytest.mark.parametrize("name,arch,include_top,size,styles", CASES,
                         ids=[f"{c[0]}-{'top' if c[2] else 'notop'}-{c[3]}px" for c in CASES])
def test_matches_keras_at_every_tap(name, arch, include_top, size, styles, photos, tmp_path):
    model = build_keras(name, include_top, size)
    images = resize(photos, size)
    reference = keras_files.reference(model, keras_taps(model), images, None)
    expected = {"arch": arch, "layout": "keras", "include_top": include_top,
                "num_classes": 1000 if include_top else 0, "preprocessing": "raw"}
    keras_files.check_styles(model, arch, styles, images, reference, tmp_path, expected)


def imagenet_normalization(model) -> None:
    """What Keras' ImageNet files hold in the Normalization layer: the mean, and the std in the variance slot."""
    layer = next(layer for layer in model.layers if isinstance(layer, keras.layers.Normalization))
    layer.set_weights([np.asarray(efficientnet.IMAGENET_MEAN, np.float32),
                       np.asarray(efficientnet.IMAGENET_STD, np.float32), *layer.get_weights()[2:]])
    layer.finalize_state()


def test_imagenet_normalization_gets_kerass_extra_rescale(photos, tmp_path):
    """A file whose Normalization holds the ImageNet std computes what `EfficientNetB0(weights="imagenet")` does
    on it: that model is Keras' own graph with Rescaling(1/sqrt(std)) after the Normalization (built here with
    weights=None and the layer inserted, since nothing is downloaded); the model without it is 20% off."""
    size = 64
    model = build_keras("EfficientNetB0", True, size)
    imagenet_normalization(model)
    norm = next(layer for layer in model.layers if isinstance(layer, keras.layers.Normalization))
    rescale = keras.layers.Rescaling([1 / math.sqrt(s) for s in efficientnet.IMAGENET_STD])
    x = inputs = keras.Input((size, size, 3))
    for layer in model.layers[1:]:  # a chain up to the first block; the rest is rebuilt from the graph below
        if layer.name == "stem_conv_pad":
            break
        x = layer(x)
        if layer is norm:
            x = rescale(x)
    stem = keras.Model(model.get_layer("stem_conv_pad").input, model.get_layer("stem_activation").output)
    images = resize(photos, size)
    want = stem.predict(keras.Model(inputs, x).predict(images.astype("float32"), verbose=0), verbose=0)
    plain = model.get_layer("stem_activation").output
    without = keras.Model(model.input, plain).predict(images.astype("float32"), verbose=0)

    path = tmp_path / "b0_imagenet_norm.weights.h5"
    model.save_weights(path)
    got = research.load(path).features(images, taps=["stem"])["stem"]
    assert parity.relative_error(got, want) <= parity.FLOAT32
    assert parity.relative_error(got, without) > 0.05


def test_imagenet_normalization_is_division_by_the_std(tmp_path):
    """The same, by hand: with the std in the variance slot the input is (x/255 - mean) / std."""
    from research.models import layers
    norm = layers.Normalization(1 / 255, stored=True, std_in_var=efficientnet.IMAGENET_STD)
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)
    stats = {"mean": np.asarray(efficientnet.IMAGENET_MEAN, np.float32),
             "var": np.asarray(efficientnet.IMAGENET_STD, np.float32)}
    got = norm.apply({"batch_stats": stats}, x)
    want = (x / 255 - stats["mean"]) / stats["var"]
    assert parity.relative_error(got, want) <= parity.FLOAT32
    other = {**stats, "var": stats["var"] * 2}
    assert parity.relative_error(norm.apply({"batch_stats": other}, x), (x / 255 - stats["mean"]) /
                                 np.sqrt(other["var"])) <= parity.FLOAT32


@pytest.mark.full
def test_keras_rounding_of_widths_and_depths():
    """Keras' round_filters / round_repeats, checked against the Keras builds' own layer shapes (B0-B7; V2's are
    checked by the full parity test's detection)."""
    for name, arch in FULL:
        if arch not in efficientnet.KERAS_VARIANTS:
            continue
        config = efficientnet.KERAS_VARIANTS[arch]
        model = getattr(keras.applications, name)(weights=None, include_top=False, input_shape=(32, 32, 3))
        names = [layer.name for layer in model.layers]
        assert model.get_layer("stem_conv").filters == config.stem
        assert model.get_layer("top_conv").filters == config.top
        for s, (_e, _k, _st, out, repeats) in enumerate(config.stages, start=1):
            assert f"block{s}{chr(96 + repeats)}_project_conv" in names
            assert f"block{s}{chr(97 + repeats)}_project_conv" not in names
            assert model.get_layer(f"block{s}a_project_conv").filters == out
        keras.backend.clear_session()


def test_fine_tune_forward_with_a_fresh_head(photos, tmp_path):
    """`research.load(path, num_classes=5)`, then a training-mode forward: dropout and stochastic depth run, the
    frozen BatchNorm layers and the input statistics stay exactly as loaded."""
    model = build_keras("EfficientNetB0", False, 64)
    path = tmp_path / "b0_notop.weights.h5"
    model.save_weights(path)
    bundle = research.load(path, num_classes=5)
    assert bundle.spec.num_classes == 5 and bundle.variables["params"]["head"]["fc"]["kernel"].shape == (1280, 5)
    import jax
    net = bundle.spec.build(frozen_bn=frozenset({"stem/bn", "stage1/block1/depthwise_bn"}))
    x = research.preprocess.apply(bundle.preprocessing, resize(photos, 64))
    out, updates = net.apply(bundle.variables, x, train=True, taps=("logits",), mutable=["batch_stats"],
                             rngs={"dropout": jax.random.key(0)})
    assert out["logits"].shape == (len(photos), 5)
    before, after = bundle.variables["batch_stats"], updates["batch_stats"]
    for path_ in ("stem/bn", "stage1/block1/depthwise_bn", "normalize"):
        node_b, node_a = before, after
        for part in path_.split("/"):
            node_b, node_a = node_b[part], node_a[part]
        assert all(np.array_equal(node_b[k], node_a[k]) for k in node_b), path_
    assert not np.array_equal(before["top"]["bn"]["mean"], after["top"]["bn"]["mean"])


def test_bfloat16_is_close_to_float32(photos, tmp_path):
    keras_files.check_bfloat16(build_keras("EfficientNetV2B0", True, 64), resize(photos, 64), tmp_path,
                               ["stage3", "pre_logits", "logits"])


def test_taps_follow_kerass_block_groups():
    assert ModelSpec("efficientnet_b0", "keras").taps == efficientnet.TAPS
    assert "stage7" not in ModelSpec("efficientnet_v2_s", "keras").taps
    assert "stage7" in ModelSpec("efficientnet_v2_m", "keras").taps
    assert ModelSpec("efficientnet_v2_b0", "keras", False, 0).taps[-1] == "pre_logits"


def test_another_depth_is_refused(tmp_path):
    """A Keras EfficientNet file with a block group one block deeper than any member's is named, not guessed."""
    from research.weights import keras as keras_weights
    model = keras.applications.EfficientNetB0(weights=None, include_top=False, input_shape=(32, 32, 3))
    path = tmp_path / "b0.weights.h5"
    model.save_weights(path)
    layers_ = keras_weights.read_layers(path)
    assert efficientnet.detect_keras(layers_) == "efficientnet_b0"
    layers_["block7b_project_conv"] = layers_["block7a_project_conv"]
    with pytest.raises(UserError, match=r"blocks per group \(1, 2, 2, 3, 3, 4, 2\).*none of"):
        efficientnet.detect_keras(layers_)


@pytest.mark.full
@pytest.mark.parametrize("name,arch", FULL, ids=[f[0] for f in FULL])
def test_every_member_at_its_default_size(name, arch, photos, tmp_path):
    spec = ModelSpec(arch, "keras")
    size = spec.input_size
    count = 2 if size > 400 else 4
    start = time.perf_counter()
    model = build_keras(name, True, size)
    images = resize(photos[:count], size)
    reference = keras_files.reference(model, keras_taps(model), images, None)
    expected = {"arch": arch, "layout": "keras", "include_top": True, "num_classes": 1000, "preprocessing": "raw"}
    worst = keras_files.check_styles(model, arch, ("keras2_h5", "weights.h5"), images, reference, tmp_path,
                                     expected)
    print(f"\nPARITY {arch} {size}px: {time.perf_counter() - start:.0f} s, worst relative error {worst:.1e}")
    keras.backend.clear_session()
