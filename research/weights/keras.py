"""Keras ImageNet weight files: every HDF5 generation that keras.applications users have on disk.

- legacy `.h5` (Keras 1/2 and the Keras 3 legacy writer, weights-only or a whole saved model): layer groups
  listed in the `layer_names` attribute, each with a `weight_names` attribute. The weight names come in three
  styles (`block1_conv1_W_1:0`, `conv1_conv/kernel:0`, `conv1_conv/kernel`), so they are only used to find
  the datasets, never interpreted: a layer's weights are taken in order.
- Keras 3 `.weights.h5`: `layers/<auto name>/vars/<i>`, the layer's real name in the `vars` group's attribute.
"""
from __future__ import annotations

import io
import os
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
    """Layer name -> its weights in stored order, for layers that have weights.

    Every dataset's shape and dtype are checked before any data is read: the total may not exceed a budget
    set by the file's size and the memory available (a few bytes of HDF5 can declare a huge dataset filled
    with its fill value), and weights must be numbers. A damaged file is a one-line UserError."""
    try:
        budget = _budget(os.path.getsize(path))
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z, z.open(KERAS_ZIP_WEIGHTS) as member:
                data = member.read(budget + 1)
            if len(data) > budget:
                raise UserError(f"{path}: {KERAS_ZIP_WEIGHTS} decompresses past {budget:,} bytes; refused")
            return _read_h5(io.BytesIO(data), path, _budget(len(data)))
        return _read_h5(path, path, budget)
    except KeyError as e:
        raise UserError(f"{path}: a damaged Keras file ({e})") from None
    except (OSError, ValueError, RuntimeError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: not a readable HDF5 file ({str(e).splitlines()[0] if str(e) else e!r})") from None


# What a file may make us allocate: its datasets' bytes may be at most this many times the file's size (Keras
# stores weights uncompressed), never less than MIN_BUDGET, never more than half the memory available.
SIZE_FACTOR = 8
MIN_BUDGET = 64 << 20


def _budget(file_size: int) -> int:
    from research.io import available_memory

    return min(max(SIZE_FACTOR * file_size, MIN_BUDGET), available_memory() // 2)


def _read_h5(source, path, budget: int = 1 << 62) -> dict[str, list[np.ndarray]]:
    with h5py.File(source, "r") as f:
        if "layer_names" in f.attrs or "model_weights" in f:
            found = _legacy_layers(f["model_weights"] if "model_weights" in f else f, path)
        elif "layers" in f:
            found = _keras3_layers(f["layers"], path)
        else:
            raise UserError(f"{path}: an HDF5 file, but not Keras weights (no layer_names or layers/ group)")
        _check_datasets(found, path, budget)
        return {name: [np.asarray(d) for d in datasets] for name, datasets in found.items()}


def _check_datasets(found: dict, path, budget: int) -> None:
    """Numbers only, and no more bytes than the budget, checked on the datasets' declared shapes."""
    total = 0
    for name, datasets in found.items():
        for d in datasets:
            if d.dtype.kind not in "fiub":
                raise UserError(f"{path}: layer {name!r} weight {d.name} holds {d.dtype} values, not numbers")
            total += d.size * d.dtype.itemsize
    if total > budget:
        raise UserError(f"{path}: its weights declare {total:,} bytes, more than a file of its size can hold or "
                        f"this machine can spare ({budget:,}); refused")


def _text(values) -> list[str]:
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _child(group, key: str, kind, path, what: str):
    """`group[key]` if it is a `kind` (Group or Dataset), else a UserError naming what is missing."""
    node = group.get(key) if isinstance(group, h5py.Group) else None
    if not isinstance(node, kind):
        raise UserError(f"{path}: {what} {key!r} is listed but {group.name} has no such "
                        f"{'group' if kind is h5py.Group else 'dataset'} (a damaged Keras file)")
    return node


def _legacy_layers(group, path=None) -> dict[str, list]:
    """Layer name -> its weight datasets (unread), in the order `weight_names` lists them."""
    if "layer_names" not in group.attrs:
        raise UserError(f"{path}: {group.name} has no layer_names attribute (a damaged Keras file)")
    out = {}
    for name in _text(group.attrs["layer_names"]):
        layer = _child(group, name, h5py.Group, path, "layer")
        weight_names = _text(layer.attrs.get("weight_names", []))
        if weight_names:
            out[name] = [_child(layer, w, h5py.Dataset, path, "weight") for w in weight_names]
    return out


def _keras3_layers(layers, path=None) -> dict[str, list]:
    """Layer name (from `vars`' attribute) -> its weight datasets `vars/0..n-1` (unread)."""
    out = {}
    for auto_name, group in layers.items():
        if not isinstance(group, h5py.Group) or "vars" not in group or not len(group["vars"]):
            continue
        vars_ = group["vars"]
        name = vars_.attrs.get("name", auto_name)
        name = name.decode("utf8") if isinstance(name, bytes) else str(name)
        out[name] = [_child(vars_, str(i), h5py.Dataset, path, "weight") for i in range(len(vars_))]
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
    if "conv_dw_1" in names or "block_1_expand" in names:
        return _detect_mobilenet(layers, path)
    sample = ", ".join(sorted(names)[:5])
    raise UserError(f"{path}: not a Keras ResNet50/101/152 or VGG16/19 weight file, nor a MobileNet/MobileNetV2 "
                    f"one (layers: {sample}, ...)")


# MobileNet v1 / v2 with alpha 1.0: (arch, top layer, layers whose output channels alpha scales, and their width).
MOBILENET_WIDTHS = {"conv_dw_1": ("mobilenet_v1", "conv_preds", {"conv1": 32, "conv_pw_13": 1024}),
                    "block_1_expand": ("mobilenet_v2", "predictions", {"Conv1": 32, "block_16_project": 320})}


def _detect_mobilenet(layers: dict, path) -> ModelSpec:
    arch, top_layer, widths = next(v for k, v in MOBILENET_WIDTHS.items() if k in layers)
    got = {name: layers[name][0].shape[-1] if name in layers else None for name in widths}
    if got != widths:
        raise UserError(f"{path}: a Keras {arch} file of another width (output channels {got}, expected {widths}); "
                        "only alpha 1.0 is supported")
    top = top_layer in layers
    return ModelSpec(arch, "keras", top, layers[top_layer][0].shape[-1] if top else 0)


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


# Keras' MobileNet layer names, by the Keras block id `i` (v1 from 1, v2 from 0; v2's block 0 is
# `expanded_conv`): layer -> (our module within the block, kind).
MOBILENET_BLOCK_NAMES = {
    "mobilenet_v1": {"conv_dw_{i}": ("depthwise_conv", "depthwise"), "conv_dw_{i}_bn": ("depthwise_bn", "bn"),
                     "conv_pw_{i}": ("pointwise_conv", "conv"), "conv_pw_{i}_bn": ("pointwise_bn", "bn")},
    "mobilenet_v2": {"{p}_expand": ("expand_conv", "conv"), "{p}_expand_BN": ("expand_bn", "bn"),
                     "{p}_depthwise": ("depthwise_conv", "depthwise"), "{p}_depthwise_BN": ("depthwise_bn", "bn"),
                     "{p}_project": ("project_conv", "conv"), "{p}_project_BN": ("project_bn", "bn")},
}
MOBILENET_OTHER_NAMES = {
    "mobilenet_v1": {"conv1": ("stem/conv", "conv"), "conv1_bn": ("stem/bn", "bn"),
                     "conv_preds": ("head/fc", "conv_dense")},
    "mobilenet_v2": {"Conv1": ("stem/conv", "conv"), "bn_Conv1": ("stem/bn", "bn"), "Conv_1": ("top/conv", "conv"),
                     "Conv_1_bn": ("top/bn", "bn"), "predictions": ("head/fc", "dense")},
}


def mobilenet_names(arch: str) -> dict[str, tuple[str, str]]:
    from research.models import mobilenet

    table = dict(MOBILENET_OTHER_NAMES[arch])
    for i, stage, block in mobilenet.keras_blocks(arch):
        prefix = f"block_{i}" if i else "expanded_conv"
        for name, (module, kind) in MOBILENET_BLOCK_NAMES[arch].items():
            table[name.format(i=i, p=prefix)] = (f"stage{stage}/block{block}/{module}", kind)
    return table


NAME_TABLES = {"resnet": resnet_names, "vgg": vgg_names, "mobilenet": mobilenet_names}


def convert(path):
    """-> (detected spec, flat leaves, names of file layers with no place in the model)."""
    layers = read_layers(path)
    spec = detect(layers, path)
    table = NAME_TABLES[spec.family](spec.arch)
    flat, unplaced = {}, []
    for name, weights in layers.items():
        if name not in table:
            unplaced.append(name)
            continue
        dst, kind = table[name]
        flat.update(mapping.leaves(kind, dst, weights, f"{path}: layer {name}"))
    return spec, flat, unplaced
