"""Keras ImageNet weight files: every HDF5 generation that keras.applications users have on disk.

- legacy `.h5` (Keras 1/2 and the Keras 3 legacy writer, weights-only or a whole saved model): layer groups
  listed in the `layer_names` attribute, each with a `weight_names` attribute. The weight names come in three
  styles (`block1_conv1_W_1:0`, `conv1_conv/kernel:0`, `conv1_conv/kernel`), so they are only used to find
  the datasets, never interpreted: a layer's weights are taken in order.
- Keras 3 `.weights.h5`: `layers/<auto name>/vars/<i>`, the layer's real name in the `vars` group's attribute.

Which family and architecture a file holds, and where each layer goes, is the families' to say (their `keras`
`Source` in research/models): this module only reads files.
"""
from __future__ import annotations

import io
import os
import re
import zipfile

import h5py
import numpy as np

from research.errors import UserError
from research.models import ModelSpec, registry
from research.weights import mapping

SOURCE = "keras"
KERAS_ZIP_WEIGHTS = "model.weights.h5"
# Keras names a layer built without a name after its class (`normalization`) and numbers the later ones of a
# session (`normalization_1`): the name tables hold the first name, and a file's numbered one is looked up so.
AUTO_NUMBER = re.compile(r"_\d+$")


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


MAX_NESTING = 8  # Keras applications nest one Sequential deep


def _keras3_layers(layers, path=None, depth: int = 0) -> dict[str, list]:
    """Layer name (from `vars`' attribute) -> its weight datasets `vars/0..n-1` (unread). Nested models (ConvNeXt's
    stem and downsampling `Sequential`s) are `<auto name>/layers/...`: their layers are read as the model's own,
    by their real names; HDF5 links can form cycles, so nesting stops at MAX_NESTING."""
    if depth > MAX_NESTING:
        raise UserError(f"{path}: Keras layers nested deeper than {MAX_NESTING} levels (a damaged or looping file)")
    out = {}
    for auto_name, group in layers.items():
        if not isinstance(group, h5py.Group):
            continue
        if "layers" in group:
            out.update(_keras3_layers(group["layers"], path, depth + 1))
        if "vars" not in group or not len(group["vars"]):
            continue
        vars_ = group["vars"]
        name = vars_.attrs.get("name", auto_name)
        name = name.decode("utf8") if isinstance(name, bytes) else str(name)
        out[name] = [_child(vars_, str(i), h5py.Dataset, path, "weight") for i in range(len(vars_))]
    return out


def detect(layers: dict, path) -> ModelSpec:
    """Architecture, top and head size, read off the layer names and shapes by the families' detectors."""
    return identify(layers, path)[0]


def identify(layers: dict, path) -> tuple[ModelSpec, dict]:
    """(spec, the family's name table for it) of a file's {layer: weights}."""
    found = mapping.identify(SOURCE, layers, path, lambda head: layers[head][0].shape[-1] if head in layers else None)
    if found is None:
        sample = ", ".join(sorted(layers)[:5])
        raise UserError(f"{path}: not a Keras {registry.describe(SOURCE)} weight file (layers: {sample}, ...)")
    return found


def convert(path):
    """-> (detected spec, flat leaves, names of file layers with no place in the model)."""
    layers = read_layers(path)
    spec, table = identify(layers, path)
    flat, unplaced = {}, []
    for name, weights in layers.items():
        key = name if name in table else AUTO_NUMBER.sub("", name)
        if key not in table or (key != name and key in layers):
            unplaced.append(name)
            continue
        dst, kind = table[key]
        flat.update(mapping.leaves(kind, dst, weights, f"{path}: layer {name}"))
    return spec, flat, unplaced
