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
    """Nested models (ConvNeXt's stem and downsampling `Sequential`s) are `<auto name>/layers/...`: their layers
    are read as the model's own, by their real names."""
    out = {}
    for auto_name, group in layers.items():
        if "layers" in group:
            out.update(_keras3_layers(group["layers"]))
        if "vars" not in group or not len(group["vars"]):
            continue
        vars_ = group["vars"]
        name = vars_.attrs.get("name", auto_name)
        name = name.decode("utf8") if isinstance(name, bytes) else str(name)
        out[name] = [np.asarray(vars_[str(i)]) for i in range(len(vars_))]
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
