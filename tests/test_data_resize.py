"""Resize policies: direct (Keras) and shorter_center_crop (torchvision), with explicit interpolation."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from research.data.resize import ResizePolicy, policy, resize, shorter_side
from research.errors import UserError


def banded(w=300, h=200) -> np.ndarray:
    """Green bands at the left and right edges, a red block in the middle, blue elsewhere."""
    image = np.zeros((h, w, 3), np.uint8)
    image[...] = (0, 0, 255)
    image[:, :40] = image[:, -40:] = (0, 255, 0)
    image[h // 2 - 20:h // 2 + 20, w // 2 - 20:w // 2 + 20] = (255, 0, 0)
    return image


@pytest.mark.parametrize("method", ["direct", "shorter_center_crop"])
@pytest.mark.parametrize("wh", [(300, 200), (200, 300), (50, 50), (3, 40)])
def test_shapes(method, wh):
    out = resize(np.zeros((wh[1], wh[0], 3), np.uint8), 32, ResizePolicy(method))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_shorter_side_is_n_over_0875():
    assert shorter_side(224) == 256 and shorter_side(32) == 37


def test_center_crop_keeps_the_centre():
    out = resize(banded(), 100, ResizePolicy("shorter_center_crop", "nearest"))
    assert (out[50, 50] == [255, 0, 0]).all()
    assert not (out == [0, 255, 0]).all(axis=-1).any()  # the side bands were cropped away
    # torchvision's arithmetic: 300x200 -> short side 114, long int(114 * 1.5) = 171; offsets round(35.5), 7
    expected = Image.fromarray(banded()).resize((171, 114), Image.Resampling.NEAREST).crop((36, 7, 136, 107))
    np.testing.assert_array_equal(out, np.asarray(expected))


def test_direct_squashes_everything_in():
    out = resize(banded(), 100, ResizePolicy("direct", "nearest"))
    assert (out[50, 50] == [255, 0, 0]).all()
    assert (out[:, 0] == [0, 255, 0]).all() and (out[:, -1] == [0, 255, 0]).all()


def test_direct_is_pil_resize():
    image = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    for name, flag in [("bilinear", Image.Resampling.BILINEAR), ("lanczos", Image.Resampling.LANCZOS)]:
        expected = np.asarray(Image.fromarray(image).resize((16, 16), flag))
        np.testing.assert_array_equal(resize(image, 16, policy("direct", name)), expected)


def test_interpolation_matters_and_is_recorded():
    image = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    near, bil = (resize(image, 16, ResizePolicy("direct", i)) for i in ("nearest", "bilinear"))
    assert not np.array_equal(near, bil)
    assert ResizePolicy().record(224) == {"resize": "direct", "interpolation": "bilinear", "image_size": 224}
    assert ResizePolicy("shorter_center_crop", "bicubic").record(224) == {
        "resize": "shorter_center_crop", "interpolation": "bicubic", "image_size": 224, "shorter_side": 256}


def test_bad_names_are_user_errors():
    with pytest.raises(UserError, match="unknown resize"):
        ResizePolicy("stretch")
    with pytest.raises(UserError, match="unknown interpolation"):
        policy("direct", "cubic")
    with pytest.raises(UserError, match="positive"):
        resize(np.zeros((4, 4, 3), np.uint8), 0, ResizePolicy())
