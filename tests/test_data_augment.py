"""research.data.augment: exact special cases, the statistics of the sampled matrices, reproducibility, jit."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.data.augment import AugmentConfig, augment, sample_matrices, warp
from research.errors import UserError

OFF = dict(flip=False, rotation=0.0, shift=0.0, shear=0.0, zoom=0.0)
DRAWS = 4000


def only(**kw) -> AugmentConfig:
    return AugmentConfig(**{**OFF, **kw})


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (4, 12, 12, 3), dtype=np.uint8)


def draws(cfg: AugmentConfig, shape=(20, 30)) -> np.ndarray:
    return np.asarray(sample_matrices(jax.random.key(1), DRAWS, cfg, shape))


def centred(m: np.ndarray, shape) -> np.ndarray:
    """Matrices about the image centre again (undo sample_matrices' offsets), to read angles and scales off."""
    h, w = shape
    c = np.array([[1, 0, (w - 1) / 2], [0, 1, (h - 1) / 2], [0, 0, 1]])
    return np.linalg.inv(c) @ m @ c


def test_identity_is_exact(images):
    cfg = AugmentConfig.identity()
    assert cfg.is_identity
    np.testing.assert_array_equal(augment(jax.random.key(0), images, cfg), images)
    eye = np.broadcast_to(np.eye(3, dtype=np.float32), (4, 3, 3))
    np.testing.assert_array_equal(warp(images, eye), images)  # the warp itself is exact on grid points
    floats = images.astype(np.float32) / 255
    np.testing.assert_array_equal(warp(floats, eye), floats)


def test_certain_flip_is_a_mirror(images):
    m = np.broadcast_to(np.diag([-1.0, 1.0, 1.0]).astype(np.float32), (4, 3, 3)).copy()
    m[:, 0, 2] = images.shape[2] - 1
    np.testing.assert_array_equal(warp(images, m), images[:, :, ::-1])
    out = np.asarray(augment(jax.random.key(3), images, only(flip=True)))
    for got, image in zip(out, images):  # the random flip: each image as is or mirrored, exactly
        assert np.array_equal(got, image) or np.array_equal(got, image[:, ::-1])


def test_flip_happens_half_the_time():
    signs = draws(only(flip=True))[:, 0, 0]
    assert set(np.unique(signs)) == {-1.0, 1.0}
    assert abs((signs < 0).mean() - 0.5) < 0.03


def test_quarter_turn_is_rot90(images):
    out = augment(jax.random.key(0), images, only(rotation=(90, 90)))
    np.testing.assert_array_equal(out, np.rot90(images, 1, axes=(1, 2)))  # counter-clockwise, as Keras
    out = augment(jax.random.key(0), images.astype(np.float32), only(rotation=(-90, -90)))
    np.testing.assert_array_equal(out, np.rot90(images, -1, axes=(1, 2)).astype(np.float32))


def test_rotation_angles_are_uniform_in_range():
    m = centred(draws(only(rotation=30)), (20, 30))
    angles = np.degrees(np.arctan2(m[:, 1, 0], m[:, 0, 0]))
    assert angles.min() >= -30.001 and angles.max() <= 30.001 and angles.max() - angles.min() > 59
    counts = np.histogram(angles, bins=6, range=(-30, 30))[0]
    assert counts.min() > 0.8 * DRAWS / 6  # roughly uniform
    np.testing.assert_allclose(np.hypot(m[:, 0, 0], m[:, 1, 0]), 1, atol=1e-5)  # a pure rotation


def test_shift_is_a_fraction_of_each_side():
    m = centred(draws(only(shift=(0.1, 0.25))), (20, 30))
    tx, ty = m[:, 0, 2], m[:, 1, 2]
    assert np.abs(tx).max() <= 0.25 * 30 + 1e-4 and np.abs(tx).max() > 0.24 * 30
    assert np.abs(ty).max() <= 0.1 * 20 + 1e-4 and np.abs(ty).max() > 0.09 * 20
    np.testing.assert_allclose(m[:, :2, :2], np.broadcast_to(np.eye(2), (DRAWS, 2, 2)), atol=1e-6)


def test_zoom_factors_are_independent_and_in_range():
    m = centred(draws(only(zoom=0.2)), (20, 30))
    zx, zy = m[:, 0, 0], m[:, 1, 1]
    for z in (zx, zy):
        assert z.min() >= 0.8 - 1e-6 and z.max() <= 1.2 + 1e-6 and z.max() - z.min() > 0.38
    assert abs(np.corrcoef(zx, zy)[0, 1]) < 0.1


def test_zoom_above_one_zooms_out():
    """A factor above 1 samples a wider input area: the output's border shows the edge fill."""
    image = np.zeros((1, 21, 21, 1), np.float32)
    image[0, 5:16, 5:16] = 1.0  # a centred square
    out = np.asarray(augment(jax.random.key(0), image, only(zoom=(2.0, 2.0), fill="constant")))
    assert out[0, 10, 10, 0] == 1.0 and out[0, 10, 3:8, 0].sum() < 5 and out[0, 2, 2, 0] == 0.0
    assert 0 < out[0].sum() < image.sum() / 2


def test_shear_is_keras_degrees():
    m = centred(draws(only(shear=20)), (20, 30))
    angles = np.degrees(np.arcsin(-m[:, 0, 1]))  # input x = x - sin(s) y, input y = cos(s) y
    assert angles.min() >= -20.001 and angles.max() <= 20.001 and angles.max() - angles.min() > 39
    np.testing.assert_allclose(m[:, 1, 1], np.cos(np.radians(angles)), atol=1e-5)


def test_random_resized_crop_boxes_fit_and_follow_scale():
    m = centred(draws(only(crop_scale=(0.08, 1.0))), (20, 30))
    sx, sy = m[:, 0, 0], m[:, 1, 1]  # crop width / W and crop height / H
    area = sx * sy
    assert area.min() >= 0.08 - 1e-4 and area.max() <= 1 + 1e-5
    assert (sx <= 1 + 1e-6).all() and (sy <= 1 + 1e-6).all()
    ratio = (sx * 30) / (sy * 20)
    fitted = (sx < 1 - 1e-6) & (sy < 1 - 1e-6)
    assert ratio[fitted].min() >= 3 / 4 - 1e-3 and ratio[fitted].max() <= 4 / 3 + 1e-3
    left = m[:, 0, 2] - sx * 15  # the crop stays inside the image
    assert (left >= -15 - 1e-3).all() and (m[:, 0, 2] + sx * 15 <= 15 + 1e-3).all()


def test_reproducible_from_the_key(images):
    cfg = AugmentConfig()
    a = augment(jax.random.key(7), images, cfg)
    np.testing.assert_array_equal(a, augment(jax.random.key(7), images, cfg))
    assert not np.array_equal(a, augment(jax.random.key(8), images, cfg))


def test_jit_vmap_and_dtypes(images):
    cfg = AugmentConfig(crop_scale=(0.5, 1.0), fill="constant")
    step = jax.jit(lambda k, x: augment(k, x, cfg))
    out = step(jax.random.key(0), jnp.asarray(images))
    assert out.dtype == jnp.uint8 and out.shape == images.shape
    per_key = jax.vmap(lambda k: augment(k, jnp.asarray(images), cfg))(jax.random.split(jax.random.key(0), 2))
    assert per_key.shape == (2, *images.shape)


def test_config_from_dict_and_bad_values():
    assert AugmentConfig.from_dict({"rotation": 10, "crop_scale": [0.2, 1.0]}).crop_scale == (0.2, 1.0)
    for bad in ({"rotation": -1}, {"zoom": 1.5}, {"fill": "wrap"}, {"crop_scale": (0.5, 2.0)}, {"nope": 1},
                {"rotation": (1, 2, 3)}):
        with pytest.raises(UserError):
            AugmentConfig.from_dict(bad)
