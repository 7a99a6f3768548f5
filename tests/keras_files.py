"""Keras models with random weights, written in every weight-file style that keras.applications users have.

Keras 3 writes `.weights.h5`, `.keras` and the legacy `.h5` itself. Keras 2 and the 2016 VGG files cannot be
produced without their old Keras, so they are written here with h5py in their documented layout: a
`layer_names` attribute, and per layer a `weight_names` attribute naming datasets inside the layer's group.
"""
from __future__ import annotations

import h5py
import numpy as np

STYLES = ("weights.h5", "keras", "model_h5", "legacy_h5", "keras2_h5", "keras2016_h5")


def case_values(case) -> tuple:
    """A parametrize case's values, whether a plain tuple or a `pytest.param` (marked `full`, say)."""
    return tuple(getattr(case, "values", case))


def randomize(model, seed: int = 0) -> None:
    """He-scaled kernels and random BatchNorm statistics: Keras' defaults of 0 and 1 would hide a swap."""
    import keras
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if isinstance(layer, keras.layers.BatchNormalization):  # gamma only where it has a scale
            draws = {"gamma": lambda s: rng.uniform(0.5, 1.5, s), "beta": lambda s: rng.normal(0, 0.2, s),
                     "moving_mean": lambda s: rng.normal(0, 0.2, s),
                     "moving_variance": lambda s: rng.uniform(0.5, 2.0, s)}
            new = [draws[v.name](tuple(v.shape)) for v in layer.weights]
        elif isinstance(layer, keras.layers.SeparableConv2D):  # He-scaled per kernel: k*k fan-in, then C
            depthwise, pointwise, *rest = weights
            new = [rng.normal(0, (2 / np.prod(depthwise.shape[:2])) ** 0.5, depthwise.shape),
                   rng.normal(0, (2 / pointwise.shape[2]) ** 0.5, pointwise.shape)]
            new += [rng.normal(0, 0.1, b.shape) for b in rest]
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


def check_styles(model, arch: str, styles, images, reference: dict, tmp_path, expected: dict) -> float:
    """Writes `model` in each style and loads it back: every style must give the spec fields in `expected` and
    the same variables as the first, and the first must match Keras' `reference` outputs at every tap. Returns
    the worst relative error over the taps."""
    import jax

    import research
    from research import parity

    first, worst = None, 0.0
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
            errors = {tap: parity.relative_error(out[tap], ref) for tap, ref in reference.items()}
            print(f"{arch} {images.shape[1]}px: worst relative error {max(errors.values()):.1e}")  # pytest -s
            for tap, err in errors.items():
                assert err <= parity.FLOAT32, f"{style} {tap}: relative error {err:.2e}"
                worst = max(worst, err)
        else:
            same = jax.tree.map(np.array_equal, bundle.variables, first.variables)
            assert all(jax.tree.leaves(same)), f"{style} converts differently from {styles[0]}"
        path.unlink()
    return worst


def producer(model, layer: str) -> str:
    """The name of the layer whose output `layer` reads: how tests find Keras' automatically named layers."""
    return model.get_layer(layer).input._keras_history.operation.name


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


def check_fresh_head(model, images, tmp_path, num_classes: int = 5) -> None:
    """A headless Keras `model` loaded with a fresh head (`research.load(num_classes=...)`): bf16 features stay
    within parity.BFLOAT16 of float32, and with every BatchNorm frozen a train-mode forward (batch statistics
    updates asked for) gives the inference logits."""
    import jax

    import research
    from research import parity, preprocess

    path = tmp_path / "fresh_head.weights.h5"
    model.save_weights(path)
    bundle = research.load(path, num_classes=num_classes)
    assert bundle.spec.num_classes == num_classes and not bundle.spec.include_top
    taps = [bundle.spec.taps[-3], "logits"]
    out = bundle.features(images, taps=taps)
    low = bundle.features(images, taps=taps, dtype="bfloat16")
    for tap in taps:
        err = parity.relative_error(low[tap], out[tap])
        assert err <= parity.BFLOAT16, f"bf16 {tap}: relative error {err:.2e}"
    stats = bundle.variables["batch_stats"]
    frozen = frozenset("/".join(k[:-1]) for k in _flat(stats) if k[-1] == "mean")
    module = bundle.spec.build(frozen_bn=frozen)
    x = preprocess.apply(bundle.preprocessing, images)
    train, updates = module.apply(bundle.variables, x, train=True, taps=("logits",), mutable=["batch_stats"])
    assert parity.relative_error(train["logits"], out["logits"]) <= parity.FLOAT32
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, updates["batch_stats"], stats)))


def _flat(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flat(v, prefix + (k,))
        else:
            yield prefix + (k,)


def check_fine_tuning(model, images, tmp_path) -> None:
    """A (randomised, headless) Keras `model` loaded with a fresh 5-class head: the head works; bf16 features stay
    within `parity.BFLOAT16` of float32 at every tap; a training forward with the `top_block` preset's frozen
    BatchNorms leaves their statistics bit-identical and every tap below the top block as in inference, while
    the top block's BatchNorms update."""
    import jax
    from flax import traverse_util

    import research
    from research import parity, preprocess
    from research.train import freeze

    path = tmp_path / "fine_tuning.weights.h5"
    model.save_weights(path)
    bundle = research.load(path, num_classes=5)
    taps = list(bundle.spec.taps)
    ref = bundle.features(images, taps=taps)
    assert ref["logits"].shape == (len(images), 5)
    half = bundle.features(images, taps=taps, dtype="bfloat16")
    for tap in taps:
        err = parity.relative_error(half[tap], ref[tap])
        assert err <= parity.BFLOAT16, f"bf16 {tap}: relative error {err:.2e}"

    record = bundle.spec.record
    plan = freeze.plan("top_block", record.name, bundle.variables["params"])
    stats = traverse_util.flatten_dict(bundle.variables["batch_stats"], sep="/")
    frozen = plan.frozen_bn(stats)
    net = bundle.spec.build(frozen_bn=frozen)
    x = preprocess.apply(bundle.preprocessing, images)
    out, updates = jax.jit(lambda v, x: net.apply(v, x, train=True, taps=taps, mutable=["batch_stats"]))(
        bundle.variables, x)
    new = traverse_util.flatten_dict(updates["batch_stats"], sep="/")
    for path_, value in stats.items():
        changed = not np.array_equal(np.asarray(new[path_]), value)
        assert changed != (path_.rsplit("/", 1)[0] in frozen), path_
    for tap in taps[:taps.index(record.top_block)]:
        err = parity.relative_error(out[tap], ref[tap])
        assert err <= parity.FLOAT32, f"train-mode {tap} with frozen BatchNorm: relative error {err:.2e}"
    path.unlink()


def check_bfloat16(model, images, tmp_path, taps) -> None:
    """`model`'s weights loaded back: bf16 compute at `taps` within parity.BFLOAT16 of float32."""
    import research
    from research import parity

    path = tmp_path / "bf16.weights.h5"
    model.save_weights(path)
    bundle = research.load(path)
    full, half = bundle.features(images, taps), bundle.features(images, taps, dtype="bfloat16")
    for tap in taps:
        assert parity.relative_error(half[tap], full[tap]) <= parity.BFLOAT16, tap
