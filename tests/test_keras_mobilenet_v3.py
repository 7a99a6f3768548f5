"""Keras MobileNetV3Small/Large (alpha 1.0, 0.75, minimalistic): parity with Keras 3 (JAX backend) at every tap.

Random weights and BatchNorm statistics, each file style loaded back, our forward on uint8 photos against Keras'
on the same pixels as floats (both models rescale inside). CI runs Small at 64/72 px; `python -m pytest -m full
tests/test_keras_mobilenet_v3.py` runs every member at 224 px.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

import research
from research.errors import UserError
from research.models import ModelSpec, mobilenet_v3
from tests import keras_files
from tests.conftest import resize

keras = pytest.importorskip("keras")

# (keras.applications name, keyword args, our arch, include_top, input size, file styles)
CASES = [
    ("MobileNetV3Small", {}, "mobilenet_v3_small", True, 64, ("weights.h5", "keras2_h5")),
    ("MobileNetV3Small", {}, "mobilenet_v3_small", False, 72, ("legacy_h5", "keras")),
]
FULL = [(name, {"alpha": alpha, "minimalistic": mini}, f"mobilenet_v3_{size}{suffix}")
        for name, size in (("MobileNetV3Small", "small"), ("MobileNetV3Large", "large"))
        for suffix, alpha, mini in (("", 1.0, False), ("_075", 0.75, False), ("_minimalistic", 1.0, True))]
STAGE_ENDS = {"small": (0, 2, 7, 10), "large": (2, 5, 11, 14)}  # Keras block id that ends each stage


def keras_taps(model, size: str) -> dict[str, str]:
    names = [layer.name for layer in model.layers]
    taps = {"stem": names[names.index("conv_bn") + 1]}
    for s, i in enumerate(STAGE_ENDS[size], start=1):
        prefix = f"expanded_conv_{i}_" if i else "expanded_conv_"
        taps[f"stage{s}"] = prefix + ("add" if prefix + "add" in names else "project_bn")
    # `top` is conv_1's activation: the layer right after conv_1_bn.
    taps["top"] = names[names.index("conv_1_bn") + 1]
    pools = [n for n in names if isinstance(model.get_layer(n), keras.layers.GlobalAveragePooling2D)
             and "squeeze_excite" not in n]
    taps["pool"] = pools[0]
    if "conv_2" in names:
        taps["pre_logits"] = names[names.index("conv_2") + 1]
        taps["logits"] = "predictions"
    return taps


def build_keras(name, kwargs, include_top, size):
    model = getattr(keras.applications, name)(weights=None, include_top=include_top, input_shape=(size, size, 3),
                                              pooling=None if include_top else "avg", classifier_activation=None,
                                              **kwargs)
    keras_files.randomize(model, seed=len(name) + size)
    return model


def reference(model, size, images):
    """Keras' outputs at our taps on the uint8 `images` as floats (the model rescales inside). Not
    `keras_files.reference`: a file without top has no `pre_logits` here."""
    taps = keras_taps(model, size)
    probe = keras.Model(model.input, [model.get_layer(layer).output for layer in taps.values()])
    out = dict(zip(taps, probe.predict(images.astype("float32"), verbose=0)))
    return {k: v.reshape(len(images), -1) if k in ("pool", "pre_logits") else v for k, v in out.items()}


@pytest.mark.parametrize("name,kwargs,arch,include_top,size,styles", CASES,
                         ids=[f"{c[0]}-{'top' if c[3] else 'notop'}-{c[4]}px" for c in CASES])
def test_matches_keras_at_every_tap(name, kwargs, arch, include_top, size, styles, photos, tmp_path):
    model = build_keras(name, kwargs, include_top, size)
    images = resize(photos, size)
    ref = reference(model, arch.split("_")[2], images)
    expected = {"arch": arch, "layout": "keras", "include_top": include_top,
                "num_classes": 1000 if include_top else 0, "preprocessing": "raw"}
    keras_files.check_styles(model, arch, styles, images, ref, tmp_path, expected)


@pytest.mark.full  # builds all six members in Keras: 115 s on a loaded machine
def test_keras_rounding_of_widths():
    """`depth` and the configs against the Keras builds' own layer shapes, every member."""
    for name, kwargs, arch in FULL:
        cfg = mobilenet_v3.VARIANTS[arch]
        model = getattr(keras.applications, name)(weights=None, include_top=True, input_shape=(32, 32, 3), **kwargs)
        i = 0
        for stage in cfg.stages:
            for b in stage:
                prefix = f"expanded_conv_{i}_" if i else "expanded_conv_"
                assert model.get_layer(prefix + "project").filters == b.features, (arch, i)
                assert model.get_layer(prefix + "depthwise").kernel_size == (b.kernel, b.kernel), (arch, i)
                if i:
                    assert model.get_layer(prefix + "expand").filters == b.expanded, (arch, i)
                if b.se_features:
                    assert model.get_layer(prefix + "squeeze_excite_conv").filters == b.se_features, (arch, i)
                i += 1
        assert model.get_layer("conv_1").filters == cfg.top
        assert model.get_layer("conv_2").filters == cfg.last_point
        keras.backend.clear_session()


def test_fine_tune_forward_with_a_fresh_head(photos, tmp_path):
    """A fresh head on a file with its top reads `pre_logits` (top_fc kept); a training-mode forward leaves the
    frozen BatchNorm layers exactly as loaded."""
    import jax
    model = build_keras("MobileNetV3Small", {}, True, 64)
    path = tmp_path / "small.weights.h5"
    model.save_weights(path)
    bundle = research.load(path, num_classes=5)
    assert bundle.variables["params"]["head"]["fc"]["kernel"].shape == (1024, 5)
    assert "top_fc" in bundle.variables["params"]
    frozen = frozenset({"stem/bn", "stage1/block1/depthwise_bn"})
    net = bundle.spec.build(frozen_bn=frozen)
    x = research.preprocess.apply(bundle.preprocessing, resize(photos, 64))
    out, updates = net.apply(bundle.variables, x, train=True, taps=("logits",), mutable=["batch_stats"],
                             rngs={"dropout": jax.random.key(0)})
    assert out["logits"].shape == (len(photos), 5)
    before, after = bundle.variables["batch_stats"], updates["batch_stats"]
    for bn in frozen:
        node_b, node_a = before, after
        for part in bn.split("/"):
            node_b, node_a = node_b[part], node_a[part]
        assert all(np.array_equal(node_b[k], node_a[k]) for k in node_b), bn
    assert not np.array_equal(before["top"]["bn"]["mean"], after["top"]["bn"]["mean"])


def test_bfloat16_is_close_to_float32(photos, tmp_path):
    keras_files.check_bfloat16(build_keras("MobileNetV3Small", {}, True, 64), resize(photos, 64), tmp_path,
                               ["stage3", "pre_logits", "logits"])


def test_taps():
    assert ModelSpec("mobilenet_v3_large", "keras").taps == mobilenet_v3.TAPS
    assert ModelSpec("mobilenet_v3_small", "keras", False, 0).taps[-1] == "pool"
    assert ModelSpec("mobilenet_v3_small", "keras", False, 5).feed_tap == "pool"


def test_another_width_is_refused(tmp_path):
    model = keras.applications.MobileNetV3Small(weights=None, include_top=False, input_shape=(32, 32, 3), alpha=0.5)
    path = tmp_path / "small_0.5.weights.h5"
    model.save_weights(path)
    with pytest.raises(UserError, match="none of mobilenet_v3_small"):
        research.load(path)


@pytest.mark.full
@pytest.mark.parametrize("name,kwargs,arch", FULL, ids=[f[2] for f in FULL])
def test_every_member_at_its_default_size(name, kwargs, arch, photos, tmp_path):
    size = ModelSpec(arch, "keras").input_size
    start = time.perf_counter()
    model = build_keras(name, kwargs, True, size)
    images = resize(photos[:4], size)
    ref = reference(model, arch.split("_")[2], images)
    expected = {"arch": arch, "layout": "keras", "include_top": True, "num_classes": 1000, "preprocessing": "raw"}
    worst = keras_files.check_styles(model, arch, ("keras2_h5", "weights.h5"), images, ref, tmp_path, expected)
    print(f"\nPARITY {arch} {size}px: {time.perf_counter() - start:.0f} s, worst relative error {worst:.1e}")
    keras.backend.clear_session()


def test_freeze_presets():
    from research.train import freeze
    assert freeze.preset("from:pre_logits", "mobilenet_v3")[0] == ("^(top_fc|head)/", "train")
    assert freeze.preset("from:top", "mobilenet_v3")[0] == ("^(top|top_fc|head)/", "train")
    with pytest.raises(UserError, match="no tap 'pool' with params"):
        freeze.preset("from:pool", "mobilenet_v3")
