"""Shared fixtures. Reference material lives in ../shared beside the checkout; tests that need it skip
cleanly where it is absent."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
GOLDEN = SHARED / "golden" / "torchvision"


@pytest.fixture(scope="session")
def golden() -> Path:
    if not (GOLDEN / "images_uint8.npy").is_file():
        pytest.skip(f"{GOLDEN} is absent")
    return GOLDEN


@pytest.fixture(scope="session")
def photos() -> np.ndarray:
    """Real photographs (4, 224, 224, 3) uint8 where ../shared has them, else smooth synthetic images."""
    path = GOLDEN / "images_uint8.npy"
    if path.is_file():
        return np.load(path)
    yy, xx = np.mgrid[0:224, 0:224] / 224.0
    channels = [np.sin(6 * xx + k) * np.cos(4 * yy - k) for k in range(12)]
    images = np.stack(channels, -1).reshape(224, 224, 4, 3).transpose(2, 0, 1, 3)
    return ((images + 1) * 127.5).astype(np.uint8)


def resize(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images])
