"""Swapping heads: the source weights with a fresh head for a new set of classes.

Used by fine-tuning (the dataset's classes) and by `Bundle.with_head` / `research.load(num_classes=...)`. The
head is replaced unless the source already has exactly the asked-for head (resuming from a fine-tuned
workdir); VGG's fc1/fc2 are dropped when the target spec has no top.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from research.errors import UserError
from research.models import HeadSpec, ModelSpec, layers

TOP_LAYERS = ("fc1", "fc2", "head")


def target_spec(source: ModelSpec, num_classes: int, head_cfg: dict, include_top: bool) -> ModelSpec:
    keep_top = source.include_top and include_top
    return dataclasses.replace(source, num_classes=num_classes, head=HeadSpec.of(head_cfg),
                               include_top=keep_top)


def attach(source: ModelSpec, variables: dict, spec: ModelSpec, image_size: int, seed: int) -> dict:
    """`variables` of `source` -> those of `spec`: the backbone kept, a fresh head initialised from `seed`."""
    if spec == source:
        return variables
    if spec.fixed_input_size and spec.fixed_input_size != image_size:
        raise UserError(f"{spec.arch} with this head flattens into a dense layer and needs "
                        f"{spec.fixed_input_size}px images, not {image_size}px; use head.pool='avg'")
    dropped = ("head",) if spec.include_top else TOP_LAYERS
    out = {col: {k: v for k, v in tree.items() if k not in dropped} for col, tree in variables.items()}
    if spec.num_classes:
        for col, tree in fresh_head(spec, image_size, seed).items():
            out.setdefault(col, {})["head"] = jax.tree.map(np.asarray, tree)
    return out


def fresh_head(spec: ModelSpec, image_size: int, seed: int) -> dict:
    """A new head's variables, sized by the backbone's output at `image_size` (computed abstractly)."""
    backbone = dataclasses.replace(spec, num_classes=0, head=HeadSpec()).build()
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    features = jax.eval_shape(lambda x: backbone.init_with_output(jax.random.key(0), x, taps=(spec.feed_tap,))[0],
                              x)[spec.feed_tap]
    norm = layers.norm_partial(jnp.float32, False, **dict(spec.bn_settings))
    head = layers.Head(spec.num_classes, jnp.float32, spec.head, False, norm)
    return head.init(jax.random.key(seed), jnp.zeros(features.shape, jnp.float32))
