"""The input normalisations that ImageNet weights were trained with.

The weights' metadata names one of these, and every consumer (features, training) takes it from there, so a
Keras model can never be fed torchvision-normalised pixels by accident.
"""
from __future__ import annotations

import jax.numpy as jnp

from research.errors import UserError

CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)

DESCRIPTIONS = {
    "caffe": "RGB->BGR, minus BGR mean (103.939, 116.779, 123.68), no scaling",
    "torch": "RGB/255, minus mean (0.485, 0.456, 0.406), divided by std (0.229, 0.224, 0.225)",
    "tflite": "RGB, minus 127, divided by 128 (TF-Lite's EfficientNet-Lite convention)",
    "tf": "RGB/127.5 - 1, i.e. scaled to [-1, 1] (Keras' \"tf\" mode: MobileNet, MobileNetV2)",
    "raw": "RGB 0-255 as float32; the model rescales and normalises inside (Keras' Rescaling/Normalization layers)",
}


def caffe(images):
    x = images.astype(jnp.float32)[..., ::-1]
    return x - jnp.asarray(CAFFE_BGR_MEAN, jnp.float32)


def torch(images):
    """Divides first, then normalises, in the order torchvision's ToTensor and Normalize do."""
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(TORCH_MEAN, jnp.float32)) / jnp.asarray(TORCH_STD, jnp.float32)


def tflite(images):
    return (images.astype(jnp.float32) - 127.0) / 128.0


def tf(images):
    return images.astype(jnp.float32) / 127.5 - 1.0


def raw(images):
    """For models that normalise inside (research/models/layers.py `Normalization`)."""
    return images.astype(jnp.float32)


FUNCTIONS = {"caffe": caffe, "torch": torch, "tflite": tflite, "tf": tf, "raw": raw}
MEAN_STD = "mean_std:"  # + "m,m,m/s,s,s": RGB/255, minus a mean, divided by a std that the weights' config gives


def mean_std(mean, std) -> str:
    """The preprocessing name for RGB/255 normalised by `mean` and `std` (timm's `pretrained_cfg`): "torch"
    for ImageNet's, else a name that carries the values, so that a record stays one self-describing string."""
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise UserError(f"mean/std must be 3 values each, std positive; got mean {mean}, std {std}")
    if (mean, std) == (TORCH_MEAN, TORCH_STD):
        return "torch"
    return MEAN_STD + ",".join(map(repr, mean)) + "/" + ",".join(map(repr, std))


def _parse_mean_std(name: str):
    try:
        mean, std = (tuple(float(v) for v in part.split(",")) for part in name[len(MEAN_STD):].split("/"))
    except ValueError:
        raise UserError(f"unreadable preprocessing {name!r}; expected {MEAN_STD}m,m,m/s,s,s") from None
    mean_std(mean, std)  # the same checks
    return mean, std


def apply(name: str, images):
    """uint8 RGB NHWC -> float32 NHWC, as the named weights expect."""
    if name.startswith(MEAN_STD):
        mean, std = _parse_mean_std(name)
        x = images.astype(jnp.float32) / 255.0
        return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    if name not in FUNCTIONS:
        raise UserError(f"unknown preprocessing {name!r}; known: {', '.join(FUNCTIONS)}, {MEAN_STD}...")
    return FUNCTIONS[name](images)


def describe(name: str) -> str:
    if name.startswith(MEAN_STD):
        mean, std = _parse_mean_std(name)
        return f"RGB/255, minus mean {mean}, divided by std {std}"
    return DESCRIPTIONS[name]
