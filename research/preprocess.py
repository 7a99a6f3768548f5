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


def apply(name: str, images):
    """uint8 RGB NHWC -> float32 NHWC, as the named weights expect."""
    if name not in FUNCTIONS:
        raise UserError(f"unknown preprocessing {name!r}; known: {', '.join(FUNCTIONS)}")
    return FUNCTIONS[name](images)
