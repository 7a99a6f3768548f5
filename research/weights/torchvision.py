"""torchvision ImageNet `state_dict`s (`.pth`): ResNet-18..152 and VGG-11..19 with or without BatchNorm.

Tensors are read without torch (see `torch_reader`) and upcast to float32. torch stores conv kernels OIHW and
linear weights (out, in); Flax wants HWIO and (in, out). VGG's fc6 (`classifier.0`) was trained on an NCHW
flatten, and is reordered here for the NHWC flatten the model does.
"""
from __future__ import annotations

import re

import numpy as np

from research.errors import UserError
from research.models import ModelSpec, resnet, vgg
from research.weights import mapping
from research.weights.torch_reader import read_state_dict

# The tensors of each kind of torch layer, in the order `mapping.leaves` takes them, and their layout change.
SUFFIXES = {
    "conv": ("weight", "bias"),
    "bn": ("weight", "bias", "running_mean", "running_var"),
    "linear": ("weight", "bias"),
    "linear_nchw": ("weight", "bias"),
}
KIND = {"conv": "conv", "bn": "bn", "linear": "dense", "linear_nchw": "dense"}
IGNORED = {"num_batches_tracked"}
VGG_CHANNELS = 512


def _relayout(kind: str, suffix: str, x: np.ndarray) -> np.ndarray:
    if suffix != "weight":
        return x
    if kind == "conv":
        return x.transpose(2, 3, 1, 0)  # OIHW -> HWIO; depthwise (C, 1, k, k) -> (k, k, 1, C)
    if kind == "linear":
        return x.T
    if kind == "linear_nchw":
        return mapping.nchw_flatten_to_nhwc(x.T, VGG_CHANNELS)
    return x


# torchvision's ResNet module names: layer{stage}.{index}.conv{k}; downsample.0/1 is the shortcut.
RESNET_NAMES = {
    "stem_conv": "conv1", "stem_bn": "bn1", "head": "fc",
    "block": "layer{stage}.{index}", "conv": "{src}.conv{k}", "bn": "{src}.bn{k}",
    "downsample_conv": "{src}.downsample.0", "downsample_bn": "{src}.downsample.1",
}
RESNET_KINDS = {"conv": "conv", "bn": "bn", "dense": "linear"}


def resnet_names(arch: str) -> dict[str, tuple[str, str]]:
    """torch module name -> (param path, kind)."""
    return mapping.resnet_table(arch, RESNET_NAMES, RESNET_KINDS)


def vgg_names(arch: str) -> dict[str, tuple[str, str]]:
    """`features.N` indices count every conv, BN, ReLU and max-pool in order, as torchvision builds them."""
    batch_norm = arch.endswith("_bn")
    table, index = {}, 0
    for b, depth in enumerate(vgg.BLOCK_DEPTHS[arch.removesuffix("_bn")], start=1):
        for k in range(1, depth + 1):
            table[f"features.{index}"] = (f"block{b}/conv{k}", "conv")
            if batch_norm:
                table[f"features.{index + 1}"] = (f"block{b}/bn{k}", "bn")
            index += 3 if batch_norm else 2
        index += 1  # the max-pool
    table.update({"classifier.0": ("fc1", "linear_nchw"), "classifier.3": ("fc2", "linear"),
                  "classifier.6": ("head/fc", "linear")})
    return table


def detect(state: dict, path) -> ModelSpec:
    keys = set(state)
    if "layer1.0.conv1.weight" in keys:
        return _detect_resnet(state, path)
    convs = [k for k in keys if re.fullmatch(r"features\.\d+\.weight", k) and state[k].ndim == 4]
    if convs:
        return _detect_vgg(state, path, len(convs))
    sample = ", ".join(sorted(keys)[:5])
    raise UserError(f"{path}: not a torchvision ResNet or VGG state_dict (keys: {sample}, ...)")


def _detect_resnet(state: dict, path) -> ModelSpec:
    blocks = tuple(len({m.group(1) for k in state if (m := re.match(rf"layer{i}\.(\d+)\.", k))})
                   for i in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in state
    for arch, (sizes, is_bottleneck) in resnet.STAGE_SIZES.items():
        if tuple(sizes) == blocks and is_bottleneck == bottleneck:
            top = "fc.weight" in state
            return ModelSpec(arch, "torchvision", top, state["fc.weight"].shape[0] if top else 0)
    kind = "bottleneck" if bottleneck else "basic"
    raise UserError(f"{path}: a torchvision ResNet with {kind} blocks {blocks} per stage, which is none of "
                    f"{', '.join(resnet.STAGE_SIZES)}")


def _detect_vgg(state: dict, path, n_convs: int) -> ModelSpec:
    by_count = {sum(depths): name for name, depths in vgg.BLOCK_DEPTHS.items()}
    if n_convs not in by_count:
        raise UserError(f"{path}: a torchvision VGG with {n_convs} convolutions; known: 8, 10, 13, 16")
    batch_norm = any(k.endswith(".running_mean") for k in state)
    arch = by_count[n_convs] + ("_bn" if batch_norm else "")
    top = "classifier.0.weight" in state
    return ModelSpec(arch, "torchvision", top, state["classifier.6.weight"].shape[0] if top else 0)


def _group(state: dict) -> dict[str, dict[str, np.ndarray]]:
    groups: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        module, _, suffix = key.rpartition(".")
        if suffix not in IGNORED:
            groups.setdefault(module, {})[suffix] = value
    return groups


def convert(path):
    """-> (detected spec, flat leaves, keys of file tensors with no place in the model)."""
    state = read_state_dict(path)
    spec = detect(state, path)
    table = resnet_names(spec.arch) if spec.family == "resnet" else vgg_names(spec.arch)
    return (spec, *place(state, table, path))


def place(state: dict, table: dict, path) -> tuple[dict, list]:
    """A torch state_dict -> (flat Flax leaves, keys with no place in `table`), by module name and kind."""
    flat, unplaced = {}, []
    for module, tensors in _group(state).items():
        if module not in table:
            unplaced += [f"{module}.{s}" for s in tensors]
            continue
        dst, kind = table[module]
        order = SUFFIXES[kind]
        unplaced += [f"{module}.{s}" for s in tensors if s not in order]
        ordered = [_relayout(kind, s, np.asarray(tensors[s], np.float32)) for s in order if s in tensors]
        flat.update(mapping.leaves(KIND[kind], dst, ordered, f"{path}: module {module}"))
    return flat, unplaced
