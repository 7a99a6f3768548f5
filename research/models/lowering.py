"""How convolutions are lowered: XLA's own, except where a measured rewrite with the same sums is faster.

Every Conv in the model families takes `conv_general_dilated` from here (injected through `layers.conv_partial`),
so a lowering choice is made once for all of them; benchmarks/lowering.py holds the races that justify each one.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from research import xla


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, preferred_element_type=None):
    """`lax.conv_general_dilated`, except for plain NHWC cases that XLA:CPU runs far below its usual rate, computed
    with the same sums (benchmarks/results/cpu_lowering.md races each against lax):

    - 1x1 kernels, on CPU: a strided slice, then one matmul. As convolutions, their weight gradients make XLA:CPU
      copy the input activations into a [C, H, W, N] layout, recomputing the ops that produced them inside the
      copy (96 ms of ResNet-50's 1.2 s top-block step at 224 px); a dot's gradients are plain matmuls.
    - inputs smaller than the kernel (ResNet-50's 3x3 stage4 convs on 2x2 maps at 64 px): XLA:CPU rewrites
      those into a reversed-window form (67 ms against 4 ms for the same conv on 4x4 maps), so they are one
      matrix product over the kernel's shifted windows, with a fast backward too.
    - depthwise and grouped convolutions, on CPU: see `grouped`."""
    kernel = rhs.shape[:2]
    plain = (dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
             and all(d == 1 for d in (lhs_dilation or (1, 1)) + (rhs_dilation or (1, 1))))
    if plain and isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], kernel, window_strides, padding)
    dot = functools.partial(jnp.dot, precision=precision, preferred_element_type=preferred_element_type)
    if plain and feature_group_count > 1 and xla.on_cpu():
        return grouped(lhs, rhs, tuple(window_strides), tuple(map(tuple, padding)), feature_group_count, precision,
                       preferred_element_type)
    if plain and feature_group_count == 1 and kernel == (1, 1) and not any(map(any, padding)) and xla.on_cpu():
        (sh, sw) = window_strides
        return dot(lhs[:, ::sh, ::sw], rhs[0, 0])
    if plain and feature_group_count == 1 and max(kernel) > 1 and any(n < k for n, k in zip(lhs.shape[1:3], kernel)):
        patches = jnp.concatenate(windows(jnp.pad(lhs, ((0, 0), *padding, (0, 0))), kernel, window_strides), axis=-1)
        return dot(patches, rhs.reshape(-1, rhs.shape[-1]))
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, precision=precision,
                                    preferred_element_type=preferred_element_type)


def grouped(lhs, rhs, strides, padding, groups, precision=None, preferred_element_type=None):
    """A grouped NHWC convolution on XLA:CPU, whose grouped kernels run far below its dense rate (issue 14:
    MobileNetV2's 3x3 depthwise on 112x112x96 maps, 500-630 ms as a convolution, 25-60 ms as below), and whose
    weight gradients, as a convolution with `batch_group_count`, are 10-100x slower still where groups have several
    channels. So:

    - depthwise (one input channel per group): the sum over the kernel's offsets of a shifted, strided slice times
      that offset's weights (`_shifted`), and its autodiff for the gradients;
    - several input channels per group: the forward and the input gradient stay XLA's convolutions (their rate is
      fine), and the weight gradient is `_shifted`'s: per kernel offset, one matmul batched over the groups."""
    args = (strides, padding, groups, precision, preferred_element_type)
    return (_shifted if rhs.shape[2] == 1 else _grouped)(lhs, rhs, *args)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _grouped(lhs, rhs, strides, padding, groups, precision, preferred_element_type):
    return _lax(lhs, rhs, strides, padding, groups, precision, preferred_element_type)


def _lax(lhs, rhs, strides, padding, groups, precision, preferred_element_type):
    numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    return lax.conv_general_dilated(lhs, rhs, strides, padding, dimension_numbers=numbers,
                                    feature_group_count=groups, precision=precision,
                                    preferred_element_type=preferred_element_type)


def _shifted(lhs, rhs, strides, padding, groups, precision, preferred_element_type):
    """The grouped convolution as a sum of one product per kernel offset: elementwise where each group has one
    input channel, else a matmul batched over the groups. Computes in `preferred_element_type` where given (the
    products of two bfloat16 numbers are exact in float32, as lax's are)."""
    out_dtype = preferred_element_type or jnp.result_type(lhs, rhs)
    if preferred_element_type is not None:
        lhs, rhs = lhs.astype(preferred_element_type), rhs.astype(preferred_element_type)
    (kh, kw, per_group, features) = rhs.shape
    rhs = rhs.reshape(kh * kw, per_group, groups, features // groups)
    total = None
    for k, window in enumerate(windows(jnp.pad(lhs, ((0, 0), *padding, (0, 0))), (kh, kw), strides)):
        window = window.reshape(*window.shape[:3], groups, per_group)
        if per_group == 1:  # (groups, multiplier) weights broadcast over the pixels
            term = window * rhs[k, 0]
        else:
            term = jnp.einsum("nhwgi,igo->nhwgo", window, rhs[k], precision=precision)
        total = term if total is None else total + term
    return total.reshape(*total.shape[:3], features).astype(out_dtype)


def _grouped_fwd(lhs, rhs, *args):
    return _lax(lhs, rhs, *args), (lhs, rhs)


def _grouped_bwd(*args):
    *args, (lhs, rhs), cotangent = args
    _, input_vjp = jax.vjp(lambda x: _lax(x, rhs, *args), lhs)
    _, weight_vjp = jax.vjp(lambda w: _shifted(lhs, w, *args), rhs)
    return input_vjp(cotangent) + weight_vjp(cotangent)


_grouped.defvjp(_grouped_fwd, _grouped_bwd)


def windows(x, kernel, strides) -> list:
    """The strided NHWC slices, one per kernel offset (row-major), whose elements meet in each output pixel of an
    unpadded window op on `x`: what a convolution or a pool combines, as plain slices."""
    out = [(n - k) // s + 1 for n, k, s in zip(x.shape[1:3], kernel, strides)]
    (sh, sw), (oh, ow) = strides, out
    return [x[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw] for i in range(kernel[0])
            for j in range(kernel[1])]
