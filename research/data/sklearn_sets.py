"""`sklearn:NAME`: small real labelled image sets that scikit-learn ships inside its wheel, so a pipeline can
run end to end offline on a fresh machine (the README's main job, smoke runs of every experiment).

- `sklearn:digits`: 1,797 handwritten digits, 8x8 grayscale (values 0..16), 10 classes; scaled to 0..255
  and given as RGB so every model and resize policy takes them like photographs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from research.errors import UserError

SETS = ("digits",)


def open_sklearn(spec: str):
    from research.data.sources import Source

    name = spec.split(":", 1)[1]
    if name not in SETS:
        raise UserError(f"unknown scikit-learn image set {name!r}; known: {', '.join(SETS)}")
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(np.int32)
    paths = tuple(f"{name}/{i:04d}" for i in range(len(labels)))

    def reader(index: int) -> Image.Image:
        return Image.fromarray(pixels[index], mode="L").convert("RGB")

    classes = tuple(str(c) for c in digits.target_names)
    return Source(spec, "sklearn", Path(name), classes, paths, labels, reader=reader)
