"""Fixtures for the fine-tuning tests: a tiny dataset of class folders and random-init weights, made on the fly."""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from research.experiments.smoke import class_folders


def make_dataset(root: Path, classes: int = 3, per_class: int = 8, size: int = 32, seed: int = 0) -> Path:
    """Class folders of PNGs whose colour says the class, with noise, so a model can learn them quickly."""
    return class_folders(root, classes, per_class, size, seed=seed)


def make_weights(out: Path, arch: str = "resnet18", seed: int = 0, **spec_fields) -> Path:
    """A converted checkpoint of a randomly initialised model, as `research convert` would write."""
    from research import Bundle
    from research.models import ModelSpec

    spec = ModelSpec(arch, "torchvision", **spec_fields)
    size = spec.fixed_input_size or 32
    variables = jax.jit(spec.build().init)(jax.random.key(seed), jnp.zeros((1, size, size, 3)))
    variables = jax.tree.map(np.asarray, dict(variables))
    meta = {"model": spec.to_dict(), "preprocessing": "torch", "source": {"file": "random", "framework": "test"}}
    Bundle(spec, variables, meta).save(out)
    return out


LAST_BLOCK = (("^(stage4/block2|head)/", "train"), (".*", "frozen"))


def tiny_config(weights: Path, data: Path, **fields):
    """A fast config: 32 px, batches of 8, the last ResNet block and the head trained."""
    from research.train import config as configs

    config = configs.defaults()
    values = {"weights": str(weights), "data": str(data), "image_size": 32, "batch_size": 8, "split.test": 0.25,
              "freeze": LAST_BLOCK, "log_every": 1, "workers": 2, **fields}
    for name, value in values.items():
        configs.assign(config, name, value)
    return config
