"""Keras NASNetMobile and NASNetLarge: parity with Keras 3 (JAX backend) at every tap, in every file style.

Random weights and BatchNorm statistics (`keras_files.randomize`), real photos. CI builds NASNetMobile once, with
its top, at 72 px, whose maps (35, 18, 9, 5, 3 px) make both kinds of stride-2 padding and the odd edge of the
adjust path's shifted half appear, and checks every tap in two file styles; the other two styles are written from
the same Keras graph cut at its global average pool (the layers `include_top=False, pooling="avg"` builds, with
their names) and must convert to the same variables less the head. That keeps CI to one Keras build and one full
compile of ours (each ~15 s on 2 cores). `python -m pytest -m full tests/test_keras_nasnet.py` runs both members
at their default sizes with their top, NASNetMobile without it at every tap, and the fresh-head, bf16 and
`top_block` freezing checks.
"""
from __future__ import annotations

import time

import h5py
import numpy as np
import pytest

import research
from research import parity
from research.errors import UserError
from research.models import ModelSpec, nasnet
from tests import keras_files
from tests.conftest import resize

keras = pytest.importorskip("keras")

SIZE = 72
NAMES = {"nasnet_mobile": "NASNetMobile", "nasnet_large": "NASNetLarge"}


def keras_taps(model, arch: str) -> dict[str, str]:
    """Our tap -> Keras layer: each stage's last cell (research/models/nasnet.py); stage4 is the final ReLU,
    which Keras names automatically, found as what the global average pool reads."""
    n = nasnet.CONFIGS[arch].blocks
    pool = next(layer.name for layer in model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D))
    return {"stem": "stem_bn1", "stage1": "reduction_concat_stem_1", "stage2": f"normal_concat_{n - 1}",
            "stage3": f"normal_concat_{2 * n}", "stage4": keras_files.producer(model, pool), "pre_logits": pool}


def build(arch: str, size: int, include_top: bool = True, seed: int = 0):
    model = getattr(keras.applications, NAMES[arch])(weights=None, include_top=include_top,
                                                     input_shape=(size, size, 3), classifier_activation=None,
                                                     pooling=None if include_top else "avg")
    keras_files.randomize(model, seed=seed)
    return model


@pytest.fixture(scope="module")
def mobile(photos):
    """NASNetMobile with its top at SIZE px, its headless graph, and Keras' outputs at every tap."""
    model = build("nasnet_mobile", SIZE, seed=SIZE)
    taps = keras_taps(model, "nasnet_mobile")
    images = resize(photos, SIZE)
    reference = keras_files.reference(model, taps, images, "tf")
    headless = keras.Model(model.input, model.get_layer(taps["pre_logits"]).output)
    return model, headless, images, reference


def test_nasnet_mobile_with_top_matches_keras(mobile, tmp_path):
    model, _, images, reference = mobile
    expected = {"arch": "nasnet_mobile", "layout": "keras", "include_top": True, "num_classes": 1000,
                "preprocessing": "tf"}
    keras_files.check_styles(model, "nasnet_mobile", ("keras2_h5", "weights.h5"), images, reference, tmp_path,
                             expected)


def test_nasnet_mobile_without_top_converts_alike(mobile, tmp_path):
    """The headless files load as no-top specs with the with-top file's variables less `head`, and match Keras at
    the first taps. The forward is the with-top one stopped at `pre_logits` (checked at every tap above; every tap
    of a real `include_top=False` build runs with -m full), so CI spares its ~15 s compile."""
    import jax

    model, headless, images, reference = mobile
    assert "predictions" not in [layer.name for layer in headless.layers]
    path = tmp_path / "top.weights.h5"
    model.save_weights(path)
    variables = research.load(path).variables
    variables = {**variables, "params": {k: v for k, v in variables["params"].items() if k != "head"}}
    for style in ("legacy_h5", "keras"):
        path = tmp_path / f"notop{keras_files.suffix(style)}"
        keras_files.write(headless, path, style)
        bundle = research.load(path)
        assert (bundle.spec.arch, bundle.spec.include_top, bundle.spec.num_classes) == ("nasnet_mobile", False, 0)
        assert bundle.preprocessing == "tf" and bundle.spec.taps == nasnet.TAPS[:-1]
        assert jax.tree.structure(bundle.variables) == jax.tree.structure(variables)
        assert all(jax.tree.leaves(jax.tree.map(np.array_equal, bundle.variables, variables))), style
    out = bundle.features(images, taps=["stem", "stage1"])
    for tap in out:
        assert parity.relative_error(out[tap], reference[tap]) <= parity.FLOAT32, tap


def test_specs_and_freeze_presets():
    from research.train import freeze
    assert ModelSpec("nasnet_large", "keras").input_size == 331
    assert ModelSpec("nasnet_mobile", "keras").input_size == 224
    assert ModelSpec("nasnet_mobile", "keras", False, 0).taps == nasnet.TAPS[:-1]
    assert ModelSpec("nasnet_mobile", "keras").fixed_input_size is None
    assert freeze.preset("top_block", "nasnet")[0] == ("^(stage4|head)/", "train")
    assert freeze.preset("from:stage2", "nasnet")[0] == ("^(stage2|stage3|stage4|head)/", "train")
    with pytest.raises(UserError, match="no tap 'pre_logits' with params"):
        freeze.preset("from:pre_logits", "nasnet")


def test_a_generic_nasnet_is_refused_by_name(tmp_path):
    """keras.applications.nasnet.NASNet with other `penultimate_filters`/`num_blocks`/`stem_block_filters`: the
    published members only (a Keras 2 style file holding the layers the detector reads)."""
    path = tmp_path / "nasnet_a_4x768.h5"
    layers = {"stem_conv1": np.zeros((3, 3, 3, 32), np.float32),
              "reduction_conv_1_stem_1": np.zeros((1, 1, 32, 8), np.float32),
              **{f"normal_conv_1_{i}": np.zeros((1, 1, 8, 32), np.float32) for i in (0, 1, 2, 3)}}
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([name.encode() for name in layers])
        for name, kernel in layers.items():
            f.create_group(name).create_dataset(f"{name}/kernel:0", data=kernel)
            f[name].attrs["weight_names"] = np.array([f"{name}/kernel:0".encode()])
    with pytest.raises(UserError, match=r"a Keras NASNet with stem width 32, cell width 32 and 4 normal cells .*"
                                        r"nasnet_mobile \(32, 44, 12\)"):
        research.load(path)


@pytest.mark.full
@pytest.mark.parametrize("arch", list(NAMES))
def test_every_member_at_its_default_size(arch, photos, tmp_path):
    size = ModelSpec(arch, "keras").input_size
    start = time.perf_counter()
    model = build(arch, size, seed=size)
    images = resize(photos, size)
    reference = keras_files.reference(model, keras_taps(model, arch), images, "tf")
    expected = {"arch": arch, "layout": "keras", "include_top": True, "num_classes": 1000, "preprocessing": "tf"}
    worst = keras_files.check_styles(model, arch, ("keras2_h5", "weights.h5"), images, reference, tmp_path, expected)
    print(f"\nPARITY {arch} {size}px: {time.perf_counter() - start:.0f} s, worst relative error {worst:.1e}")
    keras.backend.clear_session()


@pytest.mark.full
def test_nasnet_mobile_without_top_at_every_tap(photos, tmp_path):
    model = build("nasnet_mobile", 224, include_top=False, seed=1)
    images = resize(photos, 224)
    reference = keras_files.reference(model, keras_taps(model, "nasnet_mobile"), images, "tf")
    expected = {"arch": "nasnet_mobile", "layout": "keras", "include_top": False, "num_classes": 0,
                "preprocessing": "tf"}
    worst = keras_files.check_styles(model, "nasnet_mobile", ("legacy_h5", "keras"), images, reference, tmp_path,
                                     expected)
    print(f"\nPARITY nasnet_mobile 224px without top: worst relative error {worst:.1e}")


@pytest.mark.full
def test_fresh_head_bf16_and_top_block_freezing(photos, tmp_path):
    """A fresh 5-class head on a headless file; bf16 at every tap; a training forward under the `top_block`
    preset keeps the frozen BatchNorms exact (keras_files.check_fine_tuning)."""
    keras_files.check_fine_tuning(build("nasnet_mobile", 32, include_top=False), resize(photos, 32), tmp_path)
