"""From a source's tensors to the model's variables, and the check that they fit.

Each family supplies a name table per source (source layer -> (param path, kind); research/models/registry.py);
the functions here turn one layer's tensors of a given kind into Flax leaves, and `assemble` checks the result
against the model.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from research.errors import UserError
from research.models import ModelSpec, registry

# Flax leaf name of each BatchNorm tensor, in the order Keras stores them, and where it lives.
BN_LEAVES = (("params", "scale"), ("params", "bias"), ("batch_stats", "mean"), ("batch_stats", "var"))


def _leaf(path: str, collection: str, name: str) -> tuple[str, ...]:
    return (collection, *path.split("/"), name)


def conv_leaves(path: str, kernel, bias=None) -> dict:
    """`kernel` is HWIO already."""
    out = {_leaf(path, "params", "kernel"): kernel}
    if bias is not None:
        out[_leaf(path, "params", "bias")] = bias
    return out


def dense_leaves(path: str, kernel, bias=None) -> dict:
    """`kernel` is (in, out) already; no bias where the layer has none (a ViT's qkv without bias)."""
    return conv_leaves(path, kernel, bias)


def bn_leaves(path: str, scale, bias, mean, var) -> dict:
    return {_leaf(path, col, name): value for (col, name), value in zip(BN_LEAVES, (scale, bias, mean, var))}


def depthwise_leaves(path: str, kernel) -> dict:
    """Keras' DepthwiseConv2D kernel (k, k, C, 1) as Flax's grouped conv kernel (k, k, 1, C)."""
    k1, k2, channels, multiplier = kernel.shape
    if multiplier != 1:
        raise UserError(f"{path}: a depthwise kernel {kernel.shape} with depth multiplier {multiplier}; "
                        "only 1 is supported")
    return {_leaf(path, "params", "kernel"): kernel.reshape(k1, k2, 1, channels)}


def bn_noscale_leaves(path: str, bias, mean, var) -> dict:
    """A BatchNorm without its scale (Keras' `scale=False`: beta, mean, variance)."""
    return {_leaf(path, col, name): value for (col, name), value in zip(BN_LEAVES[1:], (bias, mean, var))}


def separable_leaves(path: str, depthwise, pointwise, bias=None) -> dict:
    """Keras' SeparableConv2D as two convs, `{path}/depthwise` (grouped) and `{path}/pointwise` (1x1, the bias)."""
    return {**depthwise_leaves(f"{path}/depthwise", depthwise), **conv_leaves(f"{path}/pointwise", pointwise, bias)}


def conv_dense_leaves(path: str, kernel, bias) -> dict:
    """A 1x1 conv with bias applied to a 1x1 map (Keras MobileNet's `conv_preds`) as a dense layer."""
    return dense_leaves(path, kernel.reshape(-1, kernel.shape[-1]), bias)


def normalization_leaves(path: str, mean, var, count=None) -> dict:
    """Keras' Normalization layer (mean, variance and, from TF 2.3 on, a sample count that is not needed) as the
    `batch_stats` of research/models/layers.py `Normalization`."""
    return {_leaf(path, "batch_stats", "mean"): mean, _leaf(path, "batch_stats", "var"): var}


def layer_norm_leaves(path: str, gamma, beta) -> dict:
    return {_leaf(path, "params", "scale"): gamma, _leaf(path, "params", "bias"): beta}


def layer_scale_leaves(path: str, gamma) -> dict:
    """ConvNeXt's per-channel layer scale (Keras' `LayerScale.gamma`)."""
    return {_leaf(path, "params", "gamma"): gamma}


def conv_layer_norm_leaves(path: str, kernel, bias, gamma, beta) -> dict:
    """A nested Sequential(Conv2D, LayerNormalization) as one legacy-.h5 layer: `path/conv`, `path/norm`."""
    return {**conv_leaves(f"{path}/conv", kernel, bias), **layer_norm_leaves(f"{path}/norm", gamma, beta)}


def layer_norm_conv_leaves(path: str, gamma, beta, kernel, bias) -> dict:
    """A nested Sequential(LayerNormalization, Conv2D) as one legacy-.h5 layer: `path/norm`, `path/conv`."""
    return conv_layer_norm_leaves(path, kernel, bias, gamma, beta)


def tensor_leaves(path: str, value) -> dict:
    """A bare parameter (a ViT's `cls_token`, `pos_embed`): `path` names the leaf itself, in the source's shape."""
    module, _, name = path.rpartition("/")
    return {("params", *filter(None, module.split("/")), name): value}


# Leaf builders by kind, and how many tensors each takes (in the source's order).
KINDS = {"conv": (conv_leaves, (1, 2)), "dense": (dense_leaves, (1, 2)), "bn": (bn_leaves, (4,)),
         "depthwise": (depthwise_leaves, (1,)), "conv_dense": (conv_dense_leaves, (2,)),
         "bn_noscale": (bn_noscale_leaves, (3,)), "separable": (separable_leaves, (2, 3)),
         "normalization": (normalization_leaves, (2, 3)), "layer_norm": (layer_norm_leaves, (2,)),
         "layer_scale": (layer_scale_leaves, (1,)), "conv_layer_norm": (conv_layer_norm_leaves, (4,)),
         "layer_norm_conv": (layer_norm_conv_leaves, (4,)), "tensor": (tensor_leaves, (1,))}


def leaves(kind: str, path: str, tensors, where: str) -> dict:
    build, counts = KINDS[kind]
    if len(tensors) not in counts:
        raise UserError(f"{where}: {len(tensors)} tensors where a {kind} layer has {' or '.join(map(str, counts))}")
    return build(path, *tensors)


def identify(source: str, contents: dict, path, head_width) -> tuple[ModelSpec, dict] | None:
    """(spec, name table) of a `source` file whose {layer: tensors} are `contents`, as the family that claims it
    says; None if none does. `head_width(name)`: the width of the file's classifier layer `name`, None if absent
    (then the spec has no top)."""
    found = registry.detect(source, contents, path)
    if found is None:
        return None
    family, arch = found
    reader = family.sources[source]
    table = reader.names(arch)
    head = next(src for src, (dst, _kind) in table.items() if dst == f"{registry.HEAD}/fc")
    if reader.canonical_names is not None:  # the table keyed by the file's own names
        names = reader.canonical_names(contents)
        table = {name: table[canonical] for name, canonical in names.items() if canonical in table}
        head = next((name for name, canonical in names.items() if canonical == head), head)
    width = head_width(head)
    return ModelSpec(arch, source, width is not None, width or 0), table


def nchw_flatten_to_nhwc(kernel: np.ndarray, channels: int) -> np.ndarray:
    """Reorders the rows of a dense kernel (in, out) that was trained on an NCHW flatten, for an NHWC one."""
    n_in, n_out = kernel.shape
    side = int(round((n_in // channels) ** 0.5))
    if side * side * channels != n_in:
        raise UserError(f"cannot reorder a {kernel.shape} kernel for {channels}-channel square inputs")
    return kernel.reshape(channels, side, side, n_out).transpose(1, 2, 0, 3).reshape(n_in, n_out)


@functools.lru_cache(maxsize=None)
def template(spec: ModelSpec) -> dict[tuple[str, ...], tuple[int, ...]]:
    """The model's variable shapes, flattened, at no compute cost."""
    model = spec.build()
    size = spec.input_size
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), taps=spec.taps))
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes).items()}


def mismatch_report(found: dict, expected: dict, unplaced=()) -> str | None:
    """One readable line naming every missing key, extra key and shape mismatch, or None if all fit.

    `unplaced` are source names that the name table has no place for; they count as "in file, not in model".
    """
    extra = sorted(["/".join(k) for k in found.keys() - expected.keys()] + list(unplaced))
    missing = sorted("/".join(k) for k in expected.keys() - found.keys())
    shapes = sorted(f"{'/'.join(k)} file {tuple(found[k].shape)} vs model {expected[k]}"
                    for k in found.keys() & expected.keys() if tuple(found[k].shape) != expected[k])
    parts = [f"{title} ({len(items)}): {', '.join(items)}"
             for title, items in (("in file, not in model", extra), ("in model, not in file", missing),
                                  ("shape mismatches", shapes)) if items]
    return "; ".join(parts) or None


def assemble(flat: dict, spec: ModelSpec, source: str, unplaced=()) -> dict:
    """Checks `flat` against the model and nests it as {params, batch_stats}, all float32."""
    problem = mismatch_report(flat, template(spec), unplaced)
    if problem:
        raise UserError(f"{source} does not fit {spec.arch} ({spec.layout}): {problem}")
    return traverse_util.unflatten_dict({k: np.asarray(v, np.float32) for k, v in flat.items()})
