"""`research augment-preview`: a PNG grid to see what an augmentation config does before training with it.

Rows are images (the first `n` of a seeded shuffle of the dataset), columns the original then `k` augmentations
drawn from keys split off `seed`; the same command writes the same bytes. The file is written under a temporary
name and renamed when complete.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from research import io
from research.data import loader
from research.data.augment import AugmentConfig
from research.data.sources import open_source
from research.errors import UserError


def write(spec, out, cfg: AugmentConfig, seed: int = 0, n: int = 8, k: int = 5, image_size: int = 160,
          overwrite: bool = False) -> Path:
    """Writes the grid to `out` ((n * S) x ((k + 1) * S) pixels) and returns its path."""
    out = _check_out(Path(out), overwrite)
    if n < 1 or k < 1:
        raise UserError(f"--n and --k must be positive, got {n} and {k}")
    originals = _originals(spec, seed, n, image_size)
    grid = _grid(originals, _augmented(originals, cfg, seed, k))
    return io.atomic_write(out, lambda tmp: Image.fromarray(grid).save(tmp, "PNG"))


def _check_out(out: Path, overwrite: bool) -> Path:
    if out.suffix.lower() != ".png":
        raise UserError(f"{out}: the preview is a PNG; name it .png")
    return io.check_out(out, overwrite)


def _originals(spec, seed: int, n: int, image_size: int) -> np.ndarray:
    """uint8 (n', S, S, 3): the first n readable images of a seeded shuffle (a pack keeps its own size)."""
    source = open_source(spec)
    order = loader.ordering(len(source), seed, shuffle=True)
    size = None if source.kind == "pack" else image_size
    images = []
    for batch in loader.batches(source, order, batch_size=n, image_size=size, workers=2):
        images.append(batch["images"])
        if sum(len(b) for b in images) >= n:
            break
    return np.concatenate(images)[:n]


def _augmented(originals: np.ndarray, cfg: AugmentConfig, seed: int, k: int) -> list[np.ndarray]:
    import jax

    from research.data.augment import as_numpy, augment

    keys = jax.random.split(jax.random.key(seed), k)
    return [as_numpy(augment(key, originals, cfg)) for key in keys]


def _grid(originals: np.ndarray, augmented: list[np.ndarray]) -> np.ndarray:
    """Rows of [original, augmentation 1, ..., k] side by side."""
    columns = np.stack([originals, *augmented], axis=1)  # (n, k + 1, S, S, 3)
    n, c, s, _, ch = columns.shape
    return columns.transpose(0, 2, 1, 3, 4).reshape(n * s, c * s, ch)
