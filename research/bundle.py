"""A model with its weights and what they expect: the object everything downstream works with."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from research import preprocess, xla
from research.errors import UserError
from research.models import ModelSpec, heads
from research.weights import store

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def forward_body(spec: ModelSpec, taps: tuple[str, ...], dtype: str, preprocessing: str):
    """(variables, uint8 images) -> {tap: float32}, not jitted: for use inside another jitted function."""
    model = spec.build(DTYPES[dtype])

    def forward(variables, images):
        out = model.apply(variables, preprocess.apply(preprocessing, images), train=False, taps=taps)
        return {name: value.astype(jnp.float32) for name, value in out.items()}

    return forward


@functools.lru_cache(maxsize=64)
def forward_fn(spec: ModelSpec, taps: tuple[str, ...], dtype: str, preprocessing: str):
    """One jitted forward per (spec, taps, dtype, preprocessing); jax caches it per input shape."""
    return xla.jit(forward_body(spec, taps, dtype, preprocessing))


@dataclasses.dataclass
class Bundle:
    spec: ModelSpec
    variables: dict
    meta: dict
    _placed: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def preprocessing(self) -> str:
        return self.meta["preprocessing"]

    @property
    def num_params(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.variables.get("params", {})))

    def model(self, dtype: Any = jnp.float32):
        return self.spec.build(dtype)

    def features(self, images, taps=("logits",), dtype: str = "float32") -> dict[str, jax.Array]:
        """uint8 RGB NHWC images at the model's input size -> {tap: float32 array}, NHWC where spatial.

        The weights' own preprocessing is applied; the forward stops at the deepest tap asked for.
        """
        taps = self.spec.check_taps([taps] if isinstance(taps, str) else taps)
        images = self.check_images(images)
        if dtype not in DTYPES:
            raise UserError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
        return forward_fn(self.spec, taps, dtype, self.preprocessing)(self.placed(), images)

    def placed(self, sharding=None):
        """The variables on device (laid out by `sharding` when given), transferred once per sharding: each
        `features` call or dump would otherwise copy every weight again (26 ms for ResNet-50 on CPU)."""
        if sharding not in self._placed:
            self._placed[sharding] = jax.device_put(self.variables, sharding)
        return self._placed[sharding]

    def check_images(self, images):
        if not isinstance(images, jax.Array):
            images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise UserError(f"images must be uint8 RGB NHWC (N, H, W, 3), got {images.dtype} {images.shape}")
        fixed = self.spec.fixed_input_size
        if fixed and images.shape[1:3] != (fixed, fixed):
            raise UserError(f"{self.spec.arch} flattens into a dense layer here and takes {fixed}x{fixed} images, "
                            f"got {images.shape[1]}x{images.shape[2]}")
        return images

    def with_head(self, num_classes: int, seed: int = 0, image_size: int = 224) -> "Bundle":
        """A fresh head of `num_classes` (0 removes it), shaped like the current one; the rest is kept.

        `image_size` sizes a head that reads a flattened feature map (VGG without its top)."""
        spec = dataclasses.replace(self.spec, num_classes=num_classes)
        variables = heads.attach(self.spec, self.variables, spec, spec.fixed_input_size or image_size, seed)
        meta = {**self.meta, "model": spec.to_dict(), "head": {"num_classes": num_classes, "seed": seed}}
        return Bundle(spec, variables, meta)

    def save(self, out, overwrite: bool = False):
        return store.save(out, self.variables, self.meta, overwrite)
