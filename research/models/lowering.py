"""How convolutions are lowered: XLA's own, except where a measured rewrite with the same sums is faster.

Every Conv in the model families takes `conv_general_dilated` from here (injected through `layers.conv_partial`),
so a lowering choice is made once for all of them; benchmarks/lowering.py holds the races that justify each one.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from research import xla


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None):
    """`lax.conv_general_dilated`, except for two plain NHWC cases that XLA:CPU runs far below its usual rate,
    computed as matrix products with the same sums (benchmarks/results/cpu_lowering.md races each against lax):

    - 1x1 kernels, on CPU: a strided slice, then one matmul. As convolutions, their weight gradients make XLA:CPU
      copy the input activations into a [C, H, W, N] layout, recomputing the ops that produced them inside the
      copy (96 ms of ResNet-50's 1.2 s top-block step at 224 px); a dot's gradients are plain matmuls.
    - inputs smaller than the kernel (ResNet-50's 3x3 stage4 convs on 2x2 maps at 64 px): XLA:CPU rewrites
      those into a reversed-window form (67 ms against 4 ms for the same conv on 4x4 maps), so they are one
      matrix product over the kernel's shifted windows, with a fast backward too."""
    kernel = rhs.shape[:2]
    plain = (dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
             and feature_group_count == 1 and all(d == 1 for d in (lhs_dilation or (1, 1)) + (rhs_dilation or (1, 1))))
    if plain and isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], kernel, window_strides, padding)
    if plain and kernel == (1, 1) and not any(map(any, padding)) and xla.on_cpu():
        (sh, sw) = window_strides
        return jnp.dot(lhs[:, ::sh, ::sw], rhs[0, 0], precision=precision)
    if plain and max(kernel) > 1 and any(n < k for n, k in zip(lhs.shape[1:3], kernel)):
        patches = jnp.concatenate(windows(jnp.pad(lhs, ((0, 0), *padding, (0, 0))), kernel, window_strides), axis=-1)
        return jnp.dot(patches, rhs.reshape(-1, rhs.shape[-1]), precision=precision)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, precision=precision)


def windows(x, kernel, strides) -> list:
    """The strided NHWC slices, one per kernel offset (row-major), whose elements meet in each output pixel of an
    unpadded window op on `x`: what a convolution or a pool combines, as plain slices."""
    out = [(n - k) // s + 1 for n, k, s in zip(x.shape[1:3], kernel, strides)]
    (sh, sw), (oh, ow) = strides, out
    return [x[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw] for i in range(kernel[0])
            for j in range(kernel[1])]
