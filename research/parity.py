"""How close a converted model must be to its source: the project's tolerances, kept in one place.

The measure is max|ours - ref| / max|ref| over a whole tap: relative to the tap's scale, so that deep ResNet
taps whose activations reach a few hundred are judged like shallow ones.
"""
from __future__ import annotations

import numpy as np

# float32 forward against the source framework's float32 forward.
FLOAT32 = 1e-4
# bfloat16 compute (float32 params) against our own float32 forward. bf16 keeps 8 mantissa bits (~4e-3
# relative per op); through 50 layers the error at the deepest taps stays within a few percent of the scale.
BFLOAT16 = 5e-2
# --decode gpu (research.data.gpu_decode) against ResizePolicy.apply on PIL's decode of the same JPEG, in uint8
# levels. nvImageCodec's CPU backend decodes as PIL does (both libjpeg-turbo: 0 levels apart on Flowers-17); the
# device resize uses Pillow's weights in float32 where Pillow uses 22-bit fixed point, so a value that falls
# within rounding of a half level can round the other way in either pass: measured at most 1 level (<= 0.2% of
# values, bilinear, bicubic and lanczos at 32-224 px; nearest is exact). nvJPEG on a GPU is not covered.
GPU_DECODE_LEVELS = 0
GPU_RESIZE_LEVELS = 1


def relative_error(ours, ref) -> float:
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        raise ValueError(f"shape {ours.shape} vs reference {ref.shape}")
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


def nchw_to_nhwc(x):
    """torch's spatial outputs are NCHW; ours are NHWC."""
    x = np.asarray(x)
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x
