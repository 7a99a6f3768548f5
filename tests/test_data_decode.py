"""decode(): every PIL mode to uint8 RGB, alpha dropped, 16-bit scaled, EXIF ignored, bad files as BadImage."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from research.data.decode import BadImage, SkipLog, decode, scale_16_to_8
from research.errors import UserError
from tests.test_data_fixtures import DEEP_EXPECTED, make_mode_images, noise, save, truncated_jpeg


@pytest.fixture(scope="module")
def modes(tmp_path_factory):
    return make_mode_images(tmp_path_factory.mktemp("modes"))


def test_every_mode_is_uint8_rgb(modes):
    for path in modes.values():
        out = decode(path)
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3, path


def test_greyscale_and_alpha_are_dropped_not_composited(modes):
    assert (decode(modes["L"]) == 100).all()
    assert (decode(modes["LA"]) == 100).all()  # alpha 50 ignored, as convert("RGB") does
    assert (decode(modes["RGBA"]) == [10, 20, 30]).all()  # fully transparent, colour kept
    assert (decode(modes["P"]) == [255, 0, 0]).all()  # transparent palette index keeps its colour


def test_cmyk_jpeg_becomes_rgb(modes):
    pixel = decode(modes["CMYK"])[3, 3].astype(int)
    assert np.abs(pixel - [255, 0, 0]).max() <= 3


def test_16_bit_is_scaled_not_clipped(modes):
    with Image.open(modes["I;16"]) as image:
        assert image.mode.startswith("I")
    out = decode(modes["I;16"])
    np.testing.assert_array_equal(out[..., 0], DEEP_EXPECTED)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    np.testing.assert_array_equal(scale_16_to_8(np.array([65535, 65534, 128, 129])), [255, 255, 0, 1])


def test_exif_orientation_is_not_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = save(noise(20, 10), tmp_path / "rotated.jpg", "JPEG", exif=exif)
    assert decode(path).shape == (10, 20, 3)  # the stored grid, as Keras and torchvision see it


def test_bytes_and_paths_agree(modes):
    np.testing.assert_array_equal(decode(modes["RGBA"].read_bytes()), decode(modes["RGBA"]))


@pytest.mark.parametrize("name,content", [("empty.jpg", b""), ("text.jpg", b"hello, not a jpeg\n"),
                                          ("truncated.jpg", None)])
def test_unreadable_files_raise_bad_image(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(truncated_jpeg() if content is None else content)
    with pytest.raises(BadImage) as info:
        decode(path)
    assert isinstance(info.value, UserError)
    assert info.value.path == str(path) and name in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_is_bad_image(tmp_path):
    with pytest.raises(BadImage, match="no such file"):
        decode(tmp_path / "gone.png")


def test_skip_log_counts_and_names(caplog):
    skips = SkipLog()
    with caplog.at_level(logging.WARNING):
        skips.add("b.jpg", "truncated")
        skips.add("a.jpg", "not an image")
    assert len(skips) == 2 and skips.names == ["a.jpg", "b.jpg"]
    assert "b.jpg" in caplog.text
    assert skips.summary().startswith("skipped 2 unreadable files: a.jpg (not an image), b.jpg")
    assert SkipLog().summary() == "skipped 0 unreadable files"
