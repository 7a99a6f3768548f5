"""The peer: the same network in Keras 3 on the JAX backend, same batch, input size and dtype, in the same
process. Forward is timed both ways a Keras user would run it (`predict_on_batch`, and the model's stateless call
under `jax.jit`); training with `train_on_batch`, Adam, and the frozen layers `trainable=False`."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from . import timing

APPS = {"resnet50": "ResNet50", "resnet101": "ResNet101", "resnet152": "ResNet152", "vgg16": "VGG16",
        "vgg19": "VGG19", "mobilenet_v2": "MobileNetV2", "efficientnet_b0": "EfficientNetB0",
        "convnext_tiny": "ConvNeXtTiny"}
# Keras' layer-name prefixes of our top block: stage4 / block5 / MobileNetV2's stage5 (blocks 13-16) and top /
# EfficientNet's stage7 and top conv / ConvNeXt-T's last stage with its downsampling and the pooled LayerNorm
TOP_BLOCK = {"resnet": ("conv5_",), "vgg": ("block5_",),
             "mobilenet": ("block_13_", "block_14_", "block_15_", "block_16_", "Conv_1", "out_relu"),
             "efficientnet": ("block7", "top_"),
             "convnext": ("convnext_tiny_downsampling_block_2", "convnext_tiny_stage_3", "layer_normalization")}
# imagenet_utils.preprocess_input's mode, caffe for the others; None: the application normalises inside
PREPROCESS_MODE = {"mobilenet": "tf", "efficientnet": None, "convnext": None}


def load():
    """(keras, None) or (None, why not): the peer is optional."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        import keras
    except Exception as e:  # not installed, or a broken install: the peer columns are then absent
        return None, f"keras not importable: {type(e).__name__}: {e}"
    if keras.backend.backend() != "jax":
        return None, f"keras runs on {keras.backend.backend()}, not jax (set KERAS_BACKEND=jax)"
    return keras, None


def absent_reason(spec) -> str | None:
    if spec.layout != "keras" or spec.arch not in APPS:
        return f"keras.applications has no {spec.arch} ({spec.layout} layout)"
    return None


class Peer:
    """The Keras twin of a `models.Setup`: a headless application plus the same fresh head."""

    def __init__(self, keras, s, classes: int):
        keras.config.set_dtype_policy("mixed_bfloat16" if s.dtype == "bfloat16" else "float32")
        size = s.images.shape[1]
        self.keras, self.family = keras, s.spec.family
        self.base = getattr(keras.applications, APPS[s.spec.arch])(
            weights=None, include_top=False, input_shape=(size, size, 3),
            pooling=None if self.family == "vgg" else "avg")
        x = keras.layers.GlobalAveragePooling2D()(self.base.output) if self.family == "vgg" else self.base.output
        self.model = keras.Model(self.base.input, keras.layers.Dense(classes)(x))
        keras.config.set_dtype_policy("float32")  # the policy only matters while layers are built
        mode = PREPROCESS_MODE.get(self.family, "caffe")
        self.preprocess = ((lambda x: x) if mode is None else
                           lambda x: keras.applications.imagenet_utils.preprocess_input(x, mode=mode))
        self.images = s.images
        self.x_host = np.asarray(self.preprocess(np.asarray(s.images, np.float32)))
        self.x = jax.device_put(self.x_host)
        self.labels = s.labels

    def predict_on_batch(self) -> timing.Runner:
        """Features from float input preprocessed on the host (Keras' documented way), transfer included."""
        return timing.Runner(lambda: self.base.predict_on_batch(self.x_host),
                             first_s=timing.first_call(lambda: self.base.predict_on_batch(self.x_host)))

    def jitted(self) -> timing.Runner:
        """`stateless_call` under `jax.jit` with Keras' preprocessing on device: uint8 in, as ours."""
        base, preprocess = self.base, self.preprocess

        @jax.jit
        def forward(trainable, non_trainable, images):
            x = preprocess(images.astype(jnp.float32))
            return base.stateless_call(trainable, non_trainable, x, training=False)[0].astype(jnp.float32)

        # copies: Keras' own predict/train functions donate the variables' current buffers
        copy = lambda variables: [jnp.array(v.value, copy=True) for v in variables]  # noqa: E731
        args = (copy(base.trainable_variables), copy(base.non_trainable_variables), self.images)
        compiled, compile_s, flops = timing.compile_aot(forward, *args)
        return timing.Runner(lambda: compiled(*args), compile_s, flops)

    def train(self, preset: str) -> timing.Runner:
        """`train_on_batch` on device-resident preprocessed input (it returns host floats, so it syncs)."""
        self._freeze(preset)
        keras = self.keras
        self.model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True,
                           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        call = lambda: self.model.train_on_batch(self.x, self.labels)  # noqa: E731
        trainable = sum(int(np.prod(v.shape)) for v in self.model.trainable_variables)
        return timing.Runner(call, first_s=timing.first_call(call), extra={"trainable_params": trainable})

    def _freeze(self, preset: str) -> None:
        """head: the whole base frozen (its BatchNorm then runs in inference mode, as our frozen_bn does);
        top_block: only the last stage's layers train; all: everything trains."""
        self.base.trainable = True
        for layer in self.base.layers:
            layer.trainable = preset == "all" or (preset == "top_block" and layer.name.startswith(
                TOP_BLOCK[self.family]))  # str.startswith takes a tuple of prefixes

    def runners(self, case: str, preset: str | None) -> dict:
        """{"keras:WAY": Runner} for case a (both ways) or a train case."""
        if case == "a":
            return {"keras:predict_on_batch": self.predict_on_batch(), "keras:jit_stateless_call": self.jitted()}
        return {"keras:train_on_batch": self.train(preset)}
