"""The check a user makes before switching: Keras' own application against `research.load(...).features`, through
the public API only. Keras saves its (random) weights to a `.weights.h5`, `research.load` converts that file, and
both forwards run on the same uint8 batch from the host; the outputs are compared, then the ways are raced.

    python -m benchmarks.direct [--image-size 224] [--batch-size 16] [--models resnet50,vgg16] [--repeats 5]

Keras is timed the ways its users call it, each with `preprocess_input` on the host as its docs show:
`predict` (batch_size = the batch), `predict_on_batch` and `model(x, training=False)`; the ratio is ours over the
fastest of them.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import keras_peer, run, timing


def keras_ways(model, preprocess, images: np.ndarray) -> dict:
    def x():
        return preprocess(images.astype(np.float32))

    return {"keras:predict": lambda: model.predict(x(), batch_size=len(images), verbose=0),
            "keras:predict_on_batch": lambda: model.predict_on_batch(x()),
            "keras:call": lambda: model(x(), training=False)}


def case(keras, name: str, size: int, batch: int, repeats: int, tmp: Path) -> dict:
    import research
    from research import parity

    app = getattr(keras.applications, keras_peer.APPS[name])
    model = app(weights=None, include_top=False, input_shape=(size, size, 3),
                pooling="avg" if name.startswith("resnet") else None)
    path = tmp / f"{name}.weights.h5"
    model.save_weights(path)
    bundle = research.load(str(path))
    tap = bundle.spec.feed_tap  # what the Keras model ends in: pooled features, or block5_pool
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    preprocess = keras.applications.imagenet_utils.preprocess_input
    runners = {"research:features": lambda: bundle.features(images, taps=(tap,))[tap],
               **keras_ways(model, preprocess, images)}
    ours, reference = np.asarray(runners["research:features"]()), np.asarray(model.predict(
        preprocess(images.astype(np.float32)), verbose=0))
    timed = {k: timing.Runner(v, first_s=timing.first_call(v)) for k, v in runners.items()}
    out = timing.race(timed, repeats, batch, None)
    best = max((k for k in out if k.startswith("keras:")), key=lambda k: out[k]["img_per_s"])
    return {"model": name, "image_size": size, "batch": batch, "tap": tap, "ways": out,
            "max_rel_diff": parity.relative_error(ours, reference),
            "fastest_keras": best, "ours_over_keras": round(out["research:features"]["img_per_s"]
                                                            / out[best]["img_per_s"], 3)}


def markdown(result: dict) -> str:
    lines = [f"## research.load(...).features against Keras {result['date']}", "", f"`{result['command']}`", "",
             f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; "
             + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".", "",
             "| model | px | batch | research features img/s | Keras predict | predict_on_batch | call "
             "| ours/fastest Keras | max rel diff |", "|---|---|---|---|---|---|---|---|---|"]
    for c in result["cases"]:
        w = {k.split(":")[1]: v["img_per_s"] for k, v in c["ways"].items()}
        lines.append(f"| {c['model']} | {c['image_size']} | {c['batch']} | {w['features']:.1f} | {w['predict']:.1f} "
                     f"| {w['predict_on_batch']:.1f} | {w['call']:.1f} | {c['ours_over_keras']:.2f} "
                     f"| {c['max_rel_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.direct", description=__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--models", default="resnet50,vgg16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(run.RESULTS / "cpu_direct.json"))
    args = p.parse_args(argv)
    keras, why = keras_peer.load()
    if keras is None:
        sys.exit(f"error: {why}")
    result = run.header("direct", argv, ("research", "jax", "jaxlib", "keras"))
    with tempfile.TemporaryDirectory() as tmp:
        result["cases"] = [case(keras, name, args.image_size, args.batch_size, args.repeats, Path(tmp))
                           for name in args.models.split(",")]
    run.write(result, Path(args.out), markdown)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
