"""Converter behaviour on bad and unusual files, the checkpoint store, and the CLI's one-line errors."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

import research
from research.cli import main
from research.errors import UserError
from research.models import ModelSpec
from research.weights import keras as keras_source
from research.weights import mapping


def write_keras2_vgg16(path, drop=(), add=(), reshape=()):
    """A Keras-2-style VGG16 (no top) weight file built from our own template, with chosen damage."""
    layers = {}
    for key, shape in mapping.template(ModelSpec("vgg16", "keras", False, 0)).items():
        block, conv, leaf = key[1:]
        layers.setdefault(f"{block}_{conv}", {})[leaf] = np.full(shape, 0.01, np.float32)
    for name in drop:
        del layers[name]
    for name in add:
        layers[name] = {"kernel": np.zeros((3, 3, 512, 512), np.float32), "bias": np.zeros(512, np.float32)}
    for name, shape in reshape:
        layers[name]["kernel"] = np.zeros(shape, np.float32)
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in layers])
        for name, leaves in layers.items():
            group = f.create_group(name)
            paths = [f"{name}/{leaf}:0" for leaf in ("kernel", "bias")]
            for p, leaf in zip(paths, ("kernel", "bias")):
                group.create_dataset(p, data=leaves[leaf])
            group.attrs["weight_names"] = np.array([p.encode() for p in paths])


def test_keras2_file_converts(tmp_path):
    write_keras2_vgg16(tmp_path / "vgg.h5")
    bundle = research.load(tmp_path / "vgg.h5")
    assert bundle.spec == ModelSpec("vgg16", "keras", include_top=False, num_classes=0)
    assert bundle.features(np.zeros((1, 32, 32, 3), np.uint8), "block5_pool")["block5_pool"].shape == (1, 1, 1, 512)


def test_mismatch_lists_both_sides_and_shapes(tmp_path):
    path = tmp_path / "damaged.h5"
    write_keras2_vgg16(path, drop=["block5_conv3"], add=["block6_conv1"], reshape=[("block1_conv1", (5, 5, 3, 64))])
    with pytest.raises(UserError) as info:
        research.load(path)
    message = str(info.value)
    assert "\n" not in message
    assert "in file, not in model (1): block6_conv1" in message
    assert "in model, not in file (2): params/block5/conv3/bias, params/block5/conv3/kernel" in message
    assert "params/block1/conv1/kernel file (5, 5, 3, 64) vs model (3, 3, 3, 64)" in message


def test_wrong_arch_is_one_line_without_traceback(tmp_path, capsys):
    write_keras2_vgg16(tmp_path / "vgg.h5")
    assert main(["convert", str(tmp_path / "vgg.h5"), str(tmp_path / "out"), "--arch", "resnet50"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: vgg.h5 holds vgg16 (keras layout), not resnet50")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content,match", [
    (b"", "neither HDF5"),
    (b"just some text\n", "neither HDF5"),
])
def test_files_that_are_not_weights(tmp_path, content, match):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(UserError, match=match):
        research.load(path)


def test_hdf5_that_is_not_keras(tmp_path):
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f["features"] = np.zeros((2, 3))
    with pytest.raises(UserError, match="not Keras weights"):
        research.load(tmp_path / "data.h5")


def test_unsupported_keras_models_are_named(tmp_path):
    with pytest.raises(UserError, match="a Keras ResNetV2 with"):
        keras_source.detect({"conv1_conv": [], "conv2_block1_preact_bn": [], "post_bn": []}, "r50v2.h5")
    with pytest.raises(UserError, match="not a Keras ResNet50/101/152 or VGG16/19"):
        keras_source.detect({"stem_conv": [], "top_conv": []}, "effnet.h5")


def test_missing_path_and_plain_directory(tmp_path):
    with pytest.raises(UserError, match="no such weights file"):
        research.load(tmp_path / "nope.pth")
    with pytest.raises(UserError, match="not a converted checkpoint"):
        research.load(tmp_path)


def test_convert_refuses_to_overwrite(tmp_path, capsys):
    write_keras2_vgg16(tmp_path / "vgg.h5")
    out = tmp_path / "ckpt"
    assert main(["convert", str(tmp_path / "vgg.h5"), str(out)]) == 0
    before = (out / "research.json").read_bytes()
    assert main(["convert", str(tmp_path / "vgg.h5"), str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert (out / "research.json").read_bytes() == before
    assert main(["convert", str(tmp_path / "vgg.h5"), str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "vgg.h5"]  # no temporaries left behind


def test_fresh_head_keeps_the_base(tmp_path):
    write_keras2_vgg16(tmp_path / "vgg.h5")
    base = research.load(tmp_path / "vgg.h5")
    probe = research.load(tmp_path / "vgg.h5", num_classes=17, seed=3)
    kernel = probe.variables["params"]["head"]["fc"]["kernel"]
    assert probe.spec.num_classes == 17 and kernel.shape == (7 * 7 * 512, 17)  # on the flattened block5_pool
    images = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    out = probe.features(images, ["block5_pool", "logits"])
    assert out["logits"].shape == (1, 17)
    np.testing.assert_array_equal(out["block5_pool"], base.features(images, "block5_pool")["block5_pool"])
    saved = research.load(probe.save(tmp_path / "probe"))
    np.testing.assert_array_equal(saved.features(images, "logits")["logits"], out["logits"])


def test_keras_vgg_with_top_needs_224(tmp_path):
    spec = ModelSpec("vgg16", "keras")
    bundle = research.Bundle(spec, {}, {"preprocessing": "caffe"})
    with pytest.raises(UserError, match="takes 224x224 images, got 64x64"):
        bundle.features(np.zeros((1, 64, 64, 3), np.uint8), "fc1")
    with pytest.raises(UserError, match="must be uint8 RGB NHWC"):
        bundle.features(np.zeros((1, 224, 224, 3), np.float32), "fc1")


def test_fresh_head_keeps_a_custom_heads_shape():
    """A fine-tuned model's BN-Dense-BN-Dense head, re-headed for another class count, keeps its structure."""
    import jax
    import jax.numpy as jnp
    from flax import traverse_util

    from research.models import HeadSpec
    spec = ModelSpec("resnet18", "torchvision", num_classes=3, head=HeadSpec(hidden=(8,), batch_norm=True))
    variables = spec.build().init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), taps=spec.taps)
    bundle = research.Bundle(spec, jax.tree.map(np.asarray, variables), {"preprocessing": "torch"})
    five = bundle.with_head(5, seed=1)
    shapes = {k: v.shape for k, v in traverse_util.flatten_dict(five.variables).items()}
    assert shapes == mapping.template(five.spec) and five.spec.head == spec.head
    assert shapes[("params", "head", "fc", "kernel")] == (8, 5)
    assert five.features(np.zeros((2, 32, 32, 3), np.uint8), "logits")["logits"].shape == (2, 5)
