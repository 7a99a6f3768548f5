"""Keras models with random weights, written in every weight-file style that keras.applications users have.

Keras 3 writes `.weights.h5`, `.keras` and the legacy `.h5` itself. Keras 2 and the 2016 VGG files cannot be
produced without their old Keras, so they are written here with h5py in their documented layout: a
`layer_names` attribute, and per layer a `weight_names` attribute naming datasets inside the layer's group.
"""
from __future__ import annotations

import h5py
import numpy as np

STYLES = ("weights.h5", "keras", "model_h5", "legacy_h5", "keras2_h5", "keras2016_h5")


def randomize(model, seed: int = 0) -> None:
    """He-scaled kernels and random BatchNorm statistics: Keras' defaults of 0 and 1 would hide a swap."""
    import keras
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = weights[0].shape
            new = [rng.uniform(0.5, 1.5, shape), rng.normal(0, 0.2, shape), rng.normal(0, 0.2, shape),
                   rng.uniform(0.5, 2.0, shape)]
        elif isinstance(layer, keras.layers.LayerNormalization):
            new = [rng.uniform(0.5, 1.5, w.shape) if i == 0 else rng.normal(0, 0.2, w.shape)
                   for i, w in enumerate(weights)]
        elif isinstance(layer, keras.layers.Normalization):  # mean, variance, count (an integer: kept)
            mean, var, *rest = weights
            layer.set_weights([rng.normal(100, 20, mean.shape).astype(np.float32),
                               rng.uniform(500, 5000, var.shape).astype(np.float32), *rest])
            layer.finalize_state()  # what Keras' weight loaders do: the layer computes with a copy made here
            continue
        else:
            kernel, *rest = weights
            fan_in = int(np.prod(kernel.shape[:-1]))
            new = [rng.normal(0, (2 / fan_in) ** 0.5, kernel.shape)] + [rng.normal(0, 0.1, b.shape) for b in rest]
        layer.set_weights([w.astype(np.float32) for w in new])


def _layer_weights(model):
    for layer in model.layers:
        if layer.weights:
            yield layer.name, [(v.path.split("/")[-1], np.asarray(v.numpy())) for v in layer.weights]


def _write_h5py(model, path, weight_name) -> None:
    """Legacy layout; `weight_name(layer, leaf, index)` gives the dataset path inside the layer group."""
    with h5py.File(path, "w") as f:
        names = []
        for layer in model.layers:
            names.append(layer.name.encode())
            f.create_group(layer.name).attrs["weight_names"] = np.array([], dtype="S1")
        f.attrs["layer_names"] = np.array(names)
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.x"
        for layer_name, weights in _layer_weights(model):
            group = f[layer_name]
            paths = [weight_name(layer_name, leaf, i) for i, (leaf, _) in enumerate(weights)]
            for p, (_, value) in zip(paths, weights):
                group.create_dataset(p, data=value)
            group.attrs["weight_names"] = np.array([p.encode() for p in paths])


def _keras2016_name(layer, leaf, index):
    """The 2016 VGG files: `block1_conv1_W_1:0`, `block1_conv1_b_1:0`."""
    return f"{layer}_{'W' if index == 0 else 'b'}_1:0"


def write(model, path, style: str) -> None:
    from keras.src.legacy.saving import legacy_h5_format
    if style == "weights.h5":
        model.save_weights(path)
    elif style in ("keras", "model_h5"):
        model.save(path)
    elif style == "legacy_h5":
        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, model)
    elif style == "keras2_h5":
        _write_h5py(model, path, lambda layer, leaf, i: f"{layer}/{leaf}:0")
    elif style == "keras2016_h5":
        _write_h5py(model, path, _keras2016_name)
    else:
        raise ValueError(style)


def suffix(style: str) -> str:
    return {"weights.h5": ".weights.h5", "keras": ".keras"}.get(style, ".h5")


def check_styles(model, arch: str, styles, images, reference: dict, tmp_path, expected: dict) -> None:
    """Writes `model` in each style and loads it back: every style must give the spec fields in `expected` and
    the same variables as the first, and the first must match Keras' `reference` outputs at every tap."""
    import jax

    import research
    from research import parity

    first = None
    for style in styles:
        path = tmp_path / f"{arch}_{style.replace('.', '_')}{suffix(style)}"
        write(model, path, style)
        bundle = research.load(path)
        got = {"preprocessing": bundle.preprocessing, **{k: getattr(bundle.spec, k) for k in expected
                                                          if k != "preprocessing"}}
        assert got == expected, style
        if first is None:
            first = bundle
            assert set(reference) == set(bundle.spec.taps)
            out = bundle.features(images, taps=list(reference))
            for tap, ref in reference.items():
                err = parity.relative_error(out[tap], ref)
                assert err <= parity.FLOAT32, f"{style} {tap}: relative error {err:.2e}"
        else:
            same = jax.tree.map(np.array_equal, bundle.variables, first.variables)
            assert all(jax.tree.leaves(same)), f"{style} converts differently from {styles[0]}"
        path.unlink()


def reference(model, taps: dict, images, mode: str | None) -> dict[str, np.ndarray]:
    """Keras' outputs at `taps` ({our tap: Keras layer name}) for uint8 `images`, preprocessed by
    `preprocess_input(mode=...)` (None: raw 0-255 floats, for models that normalise inside). `pre_logits`, if
    not in `taps`, is the GlobalAveragePooling2D layer's output, found by type; `logits` is `predictions` where
    the model has it."""
    import keras
    from keras.applications import imagenet_utils

    taps = dict(taps)
    names = [layer.name for layer in model.layers]
    if "pre_logits" not in taps:
        taps["pre_logits"] = next(layer.name for layer in model.layers
                                  if isinstance(layer, keras.layers.GlobalAveragePooling2D))
    if "logits" not in taps and "predictions" in names:
        taps["logits"] = "predictions"
    x = images.astype("float32")
    if mode is not None:
        x = imagenet_utils.preprocess_input(x, mode=mode)
    probe = keras.Model(model.input, [model.get_layer(layer).output for layer in taps.values()])
    out = dict(zip(taps, probe.predict(x, verbose=0)))
    out["pre_logits"] = out["pre_logits"].reshape(len(images), -1)  # some tops pool with keepdims
    return out


def check_application(name: str, taps: dict, mode: str | None, images, tmp_path, styles, expected: dict,
                      include_top: bool = True, seed: int = 0, **kwargs) -> None:
    """keras.applications.`name` with random weights at `images`' size, written in each of `styles` and loaded
    back: every style must convert alike and match Keras at every tap (see `check_styles`). `expected` holds
    the spec fields and preprocessing the file must load as; `kwargs` go to the application (alpha, ...)."""
    import keras

    size = images.shape[1]
    model = getattr(keras.applications, name)(weights=None, include_top=include_top, input_shape=(size, size, 3),
                                              pooling=None if include_top else "avg", classifier_activation=None,
                                              **kwargs)
    randomize(model, seed=seed)
    ref = reference(model, taps, images, mode)
    check_styles(model, expected["arch"], styles, images, ref, tmp_path,
                 {"layout": "keras", "include_top": include_top, "num_classes": 1000 if include_top else 0,
                  **expected})
