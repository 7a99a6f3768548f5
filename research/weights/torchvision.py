"""torch `state_dict`s (`.pth`): torchvision's ImageNet files (ResNet-18..152, VGG-11..19 with or without
BatchNorm) and the placing of any torch source's tensors (research/weights/efficientnet_lite.py uses it too).
The families' `torchvision` sources (research/models) recognise the files and name their modules.

Tensors are read without torch (see `torch_reader`) and upcast to float32. torch stores conv kernels OIHW and
linear weights (out, in); Flax wants HWIO and (in, out). VGG's fc6 (`classifier.0`) was trained on an NCHW
flatten, and is reordered here for the NHWC flatten the model does.
"""
from __future__ import annotations

import numpy as np

from research.errors import UserError
from research.models import ModelSpec, registry
from research.weights import mapping
from research.weights.torch_reader import read_state_dict

SOURCE = "torchvision"
# The tensors of each kind of torch layer, in the order `mapping.leaves` takes them, and their layout change.
# `conv_linear` is a 1x1 conv used as a dense layer (timm ConvNeXt's `conv_mlp`); a `tensor` is a bare
# parameter whose table key is its whole state_dict key (`cls_token`).
SUFFIXES = {
    "conv": ("weight", "bias"),
    "bn": ("weight", "bias", "running_mean", "running_var"),
    "linear": ("weight", "bias"),
    "linear_nchw": ("weight", "bias"),
    "conv_linear": ("weight", "bias"),
    "layer_norm": ("weight", "bias"),
    "layer_scale": ("gamma",),
}
KIND = {"conv": "conv", "bn": "bn", "linear": "dense", "linear_nchw": "dense", "conv_linear": "dense",
        "layer_norm": "layer_norm", "layer_scale": "layer_scale", "tensor": "tensor"}
IGNORED = {"num_batches_tracked"}
VGG_CHANNELS = 512


def _relayout(kind: str, suffix: str, x: np.ndarray) -> np.ndarray:
    if suffix != "weight":
        return x
    if kind == "conv":
        return x.transpose(2, 3, 1, 0)  # OIHW -> HWIO; depthwise (C, 1, k, k) -> (k, k, 1, C)
    if kind == "linear":
        return x.T
    if kind == "conv_linear":
        return x.reshape(x.shape[0], -1).T
    if kind == "linear_nchw":
        return mapping.nchw_flatten_to_nhwc(x.T, VGG_CHANNELS)
    return x


def identify(state: dict, path, source: str = SOURCE, what: str = "") -> tuple[ModelSpec, dict]:
    """(spec, the family's name table for it) of a torch `state_dict` from `source`, by the families' detectors."""
    found = mapping.identify(source, state, path,
                             lambda head: state[f"{head}.weight"].shape[0] if f"{head}.weight" in state else None)
    if found is None:
        sample = ", ".join(sorted(state)[:5])
        what = what or f"a torchvision {registry.describe(source)}"
        raise UserError(f"{path}: not {what} state_dict (keys: {sample}, ...)")
    return found


def detect(state: dict, path) -> ModelSpec:
    return identify(state, path)[0]


def _group(state: dict, table: dict) -> dict[str, dict[str, np.ndarray]]:
    """{module: {suffix: tensor}}; a key the table names whole (a `tensor`) is its own group."""
    groups: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        module, _, suffix = key.rpartition(".")
        if table.get(key, ("", ""))[1] == "tensor" or not module:
            module = suffix = key
        if suffix not in IGNORED:
            groups.setdefault(module, {})[suffix] = value
    return groups


def _key(module: str, suffix: str) -> str:
    return module if module == suffix else f"{module}.{suffix}"


def convert(path):
    """-> (detected spec, flat leaves, keys of file tensors with no place in the model)."""
    state = read_state_dict(path)
    spec, table = identify(state, path)
    return (spec, *place(state, table, path))


def place(state: dict, table: dict, path) -> tuple[dict, list]:
    """A torch state_dict -> (flat Flax leaves, keys with no place in `table`), by module name and kind."""
    flat, unplaced = {}, []
    for module, tensors in _group(state, table).items():
        if module not in table:
            unplaced += [_key(module, s) for s in tensors]
            continue
        dst, kind = table[module]
        order = SUFFIXES.get(kind, (module,))
        unplaced += [_key(module, s) for s in tensors if s not in order]
        ordered = [_relayout(kind, s, np.asarray(tensors[s], np.float32)) for s in order if s in tensors]
        flat.update(mapping.leaves(KIND[kind], dst, ordered, f"{path}: module {module}"))
    return flat, unplaced
