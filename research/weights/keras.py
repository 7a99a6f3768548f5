"""Keras ImageNet weight files: every HDF5 generation that keras.applications users have on disk.

- legacy `.h5` (Keras 1/2 and the Keras 3 legacy writer, weights-only or a whole saved model): layer groups
  listed in the `layer_names` attribute, each with a `weight_names` attribute. The weight names come in three
  styles (`block1_conv1_W_1:0`, `conv1_conv/kernel:0`, `conv1_conv/kernel`), so they are only used to find
  the datasets, never interpreted: a layer's weights are taken in order.
- Keras 3 `.weights.h5`: `layers/<auto name>/vars/<i>`, the layer's real name in the `vars` group's attribute.
"""
from __future__ import annotations

import io
import re
import zipfile

import h5py
import numpy as np

from research.errors import UserError
from research.models import ModelSpec
from research.weights import mapping

DEPTH_BY_STAGE3_BLOCKS = {6: "resnet50", 23: "resnet101", 36: "resnet152"}


KERAS_ZIP_WEIGHTS = "model.weights.h5"


def is_keras_zip(path) -> bool:
    """A Keras 3 `.keras` archive: a zip holding `model.weights.h5`."""
    try:
        with zipfile.ZipFile(path) as z:
            return KERAS_ZIP_WEIGHTS in z.namelist()
    except zipfile.BadZipFile:
        return False


def read_layers(path) -> dict[str, list[np.ndarray]]:
    """Layer name -> its weights in stored order, for layers that have weights."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                return _read_h5(io.BytesIO(z.read(KERAS_ZIP_WEIGHTS)), path)
        return _read_h5(path, path)
    except OSError as e:
        raise UserError(f"{path}: not a readable HDF5 file ({e})") from None


def _read_h5(source, path) -> dict[str, list[np.ndarray]]:
    with h5py.File(source, "r") as f:
        if "layer_names" in f.attrs or "model_weights" in f:
            return _legacy_layers(f["model_weights"] if "model_weights" in f else f)
        if "layers" in f:
            return _keras3_layers(f["layers"])
    raise UserError(f"{path}: an HDF5 file, but not Keras weights (no layer_names or layers/ group)")


def _text(values) -> list[str]:
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _legacy_layers(group) -> dict[str, list[np.ndarray]]:
    out = {}
    for name in _text(group.attrs["layer_names"]):
        weight_names = _text(group[name].attrs.get("weight_names", []))
        if weight_names:
            out[name] = [np.asarray(group[name][w]) for w in weight_names]
    return out


def _keras3_layers(layers) -> dict[str, list[np.ndarray]]:
    out = {}
    for auto_name, group in layers.items():
        if "vars" not in group or not len(group["vars"]):
            continue
        vars_ = group["vars"]
        name = vars_.attrs.get("name", auto_name)
        name = name.decode("utf8") if isinstance(name, bytes) else str(name)
        out[name] = [np.asarray(vars_[str(i)]) for i in range(len(vars_))]
    return out


def detect(layers: dict, path) -> ModelSpec:
    """Architecture, top and head size, read off the layer names and shapes."""
    names = set(layers)
    top = "predictions" in names
    num_classes = layers["predictions"][0].shape[-1] if top else 0
    if "post_bn" in names or "conv2_block1_preact_bn" in names:
        raise UserError(f"{path}: a Keras ResNetV2 file; only ResNet v1 (ResNet50/101/152) is supported")
    if "res2a_branch2a" in names:
        raise UserError(f"{path}: the 2016 Keras ResNet50 file (res2a_branch2a names, BN epsilon 1e-3, an unpadded "
                        "max-pool), which differs from keras.applications' current ResNet50; use the current file")
    if "conv1_conv" in names and "conv2_block1_1_conv" in names:
        blocks = sum(bool(re.fullmatch(r"conv4_block\d+_1_conv", n)) for n in names)
        if blocks not in DEPTH_BY_STAGE3_BLOCKS:
            raise UserError(f"{path}: a Keras ResNet with {blocks} blocks in conv4; known: 6, 23, 36")
        return ModelSpec(DEPTH_BY_STAGE3_BLOCKS[blocks], "keras", top, num_classes)
    if "block1_conv1" in names:
        return ModelSpec("vgg19" if "block5_conv4" in names else "vgg16", "keras", top, num_classes)
    sample = ", ".join(sorted(names)[:5])
    raise UserError(f"{path}: not a Keras ResNet50/101/152 or VGG16/19 weight file (layers: {sample}, ...)")


# Keras' ResNet layer names (keras.applications.resnet): conv{stage + 1}_block{n}_{k}_conv; _0_ is the shortcut.
RESNET_NAMES = {
    "stem_conv": "conv1_conv", "stem_bn": "conv1_bn", "head": "predictions",
    "block": "conv{group}_block{block}", "conv": "{src}_{k}_conv", "bn": "{src}_{k}_bn",
    "downsample_conv": "{src}_0_conv", "downsample_bn": "{src}_0_bn",
}
KINDS = {"conv": "conv", "bn": "bn", "dense": "dense"}


def resnet_names(arch: str) -> dict[str, tuple[str, str]]:
    """Keras layer name -> (param path, kind)."""
    return mapping.resnet_table(arch, RESNET_NAMES, KINDS)


def vgg_names(arch: str) -> dict[str, tuple[str, str]]:
    table = {f"block{b}_conv{k}": (f"block{b}/conv{k}", "conv") for b in range(1, 6) for k in range(1, 5)}
    table.update({"fc1": ("fc1", "dense"), "fc2": ("fc2", "dense"), "predictions": ("head/fc", "dense")})
    return table


def convert(path):
    """-> (detected spec, flat leaves, names of file layers with no place in the model)."""
    layers = read_layers(path)
    spec = detect(layers, path)
    table = resnet_names(spec.arch) if spec.family == "resnet" else vgg_names(spec.arch)
    flat, unplaced = {}, []
    for name, weights in layers.items():
        if name not in table:
            unplaced.append(name)
            continue
        dst, kind = table[name]
        flat.update(mapping.leaves(kind, dst, weights, f"{path}: layer {name}"))
    return spec, flat, unplaced
