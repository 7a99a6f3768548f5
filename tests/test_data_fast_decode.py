"""`--decode fast`: JPEGs decoded at a reduced DCT scale (PIL's draft) before the same resize; off by default."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import research.data as data
from research.data import loader, resize
from research.data.decode import decode_image
from research.errors import UserError


def photo(path, size=(800, 600), fmt="JPEG"):
    """A smooth photo-like image (JPEG's DCT scaling keeps it close to a full decode)."""
    y, x = np.mgrid[0:size[1], 0:size[0]]
    rgb = np.stack([128 + 100 * np.sin(x / 37.0), 128 + 100 * np.cos(y / 23.0), (x + y) % 256], -1)
    Image.fromarray(rgb.astype(np.uint8)).save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


@pytest.mark.parametrize("method,needed,decoded", [("direct", 224, (400, 300)), ("shorter_center_crop", 256, (400, 300))])
def test_jpegs_decode_at_the_smallest_scale_that_covers_the_resize(tmp_path, method, needed, decoded):
    path = photo(tmp_path / "a.jpg")
    policy = resize.policy(method, "bilinear", "fast")
    assert policy.draft(224) == (needed, needed)
    assert decode_image(path, policy.draft(224)).size == decoded  # 1/2: 1/4 would be 200x150, too small
    assert decode_image(path).size == (800, 600)
    fast, full = policy.apply(decode_image(path, policy.draft(224)), 224), resize.policy(method).apply(
        decode_image(path), 224)
    assert fast.shape == full.shape == (224, 224, 3) and not np.array_equal(fast, full)
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 3  # close, as the README measures on a probe


def test_fast_is_recorded_off_by_default_and_leaves_other_formats_alone(tmp_path):
    assert resize.policy("direct").draft(224) is None and "decode" not in resize.policy("direct").record(224)
    assert resize.policy("direct", "bilinear", "fast").record(224)["decode"] == "fast"
    png = photo(tmp_path / "a.png", fmt="PNG")
    np.testing.assert_array_equal(np.asarray(decode_image(png, (224, 224))), np.asarray(decode_image(png)))
    with pytest.raises(UserError, match="unknown decode 'turbo'"):
        resize.policy("direct", "bilinear", "turbo")


def test_the_loader_decodes_fast_from_folders_only(tmp_path):
    for i in range(3):
        (tmp_path / "d" / "c").mkdir(parents=True, exist_ok=True)
        photo(tmp_path / "d" / "c" / f"{i}.jpg", (640 + 16 * i, 480))
    source = data.open(tmp_path / "d")
    fast = resize.policy("direct", "bilinear", "fast")
    got = np.concatenate([b["images"] for b in loader.batches(source, None, 2, 224, fast, workers=2)])
    want = np.stack([fast.apply(decode_image(source.file(i), (224, 224)), 224) for i in range(3)])
    np.testing.assert_array_equal(got, want)
    from research.data import pack
    pack.write(tmp_path / "d", tmp_path / "p.h5", 32, decode="fast", progress=False)
    packed = data.open(tmp_path / "p.h5")
    assert packed.attrs["decode"] == "fast"
    assert len(next(loader.batches(packed, None, 2, 32, fast))["images"]) == 2  # as packed
    with pytest.raises(UserError, match="packed with direct/bilinear/fast decoding, not direct/bilinear/default"):
        next(loader.batches(packed, None, 2, 32, "direct"))
