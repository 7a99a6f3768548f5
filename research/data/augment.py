"""On-device augmentation: every transform of an image is folded into ONE affine matrix, applied by one
bilinear warp, so a batch costs a single gather however many transforms are on.

Conventions (chosen to match the references people port configs from):
- Coordinates are (x = column, y = row) pixel coordinates, as Keras' `apply_affine_transform` uses after its
  axis swap; a matrix maps an OUTPUT pixel to the INPUT point it samples, about the image centre
  ((W-1)/2, (H-1)/2).
- `rotation`: degrees, uniform in [-r, r] (or a (lo, hi) range); positive turns the content counter-clockwise
  on screen (90 degrees is `np.rot90(image)`), as Keras' `rotation_range`.
- `shift`: a fraction of the width / height, uniform in [-s, s], as Keras' `width_shift_range` /
  `height_shift_range` (a float for both, or (height, width)).
- `shear`: DEGREES, as Keras' `shear_range` ("shear angle in counter-clockwise direction in degrees"), uniform
  in [-s, s]; the input point is x - sin(s)·y, cos(s)·y. Keras' common `shear_range=0.2` is thus 0.2 degrees.
- `zoom`: as Keras' `zoom_range`: factors zx, zy drawn independently from [1-z, 1+z] (or (lo, hi)), and a factor
  above 1 ZOOMS OUT (the output samples a larger input area, so the content looks smaller).
- `crop_scale`, `crop_ratio`: torchvision's RandomResizedCrop: an area fraction uniform in `crop_scale` and an
  aspect ratio log-uniform in `crop_ratio`, up to 10 tries to fit, else the centre crop with the ratio clamped;
  the crop is resized to the output size by the same warp. Offsets are continuous, not whole pixels.
- `flip`: horizontal, with probability 1/2.
- Order, on the image: crop, then flip, then Keras' rotation / shift / shear / zoom (composed as Keras does).
- `fill`: "nearest" (Keras' default: the edge pixel repeats) or "constant" (`cval`).

A uint8 batch comes back uint8 (rounded); a float batch comes back float. The identity config returns the input
unchanged, and warps on exact grid points (flips, quarter turns) are exact.
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from research.errors import UserError

FILLS = ("nearest", "constant")
CROP_TRIES = 10
# columns of the one uniform draw per image
FLIP, ROTATION, SHIFT_X, SHIFT_Y, SHEAR, ZOOM_X, ZOOM_Y, CROP = range(8)
DRAW_COLUMNS = CROP + 2 * CROP_TRIES + 2  # crop: areas, log-ratios, then the left and top offsets
SNAP = 1e-6  # trig values this close to 0 or ±1 are made exact, so quarter turns land on grid points


def _pair(value, name: str, symmetric: bool = True) -> tuple[float, float]:
    """A float r -> (-r, r) (or (1-r, 1+r) for zoom); a 2-sequence as given."""
    if isinstance(value, (int, float)):
        if value < 0:
            raise UserError(f"augment {name} must be non-negative, got {value}")
        return (-float(value), float(value)) if symmetric else (1.0 - value, 1.0 + value)
    if len(value) != 2:
        raise UserError(f"augment {name} must be a number or a (low, high) pair, got {value}")
    lo, hi = (float(v) for v in value)
    if lo > hi:
        raise UserError(f"augment {name} range must be (low, high), got {value}")
    return lo, hi


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """The random transforms; hashable, so that `augment` can be jitted with it as a static argument."""

    flip: bool = True
    rotation: float | tuple = 40.0
    shift: float | tuple = 0.2
    shear: float | tuple = 0.2
    zoom: float | tuple = 0.2
    crop_scale: tuple | None = None
    crop_ratio: tuple = (3 / 4, 4 / 3)
    fill: str = "nearest"
    cval: float = 0.0

    def __post_init__(self):
        for name in ("rotation", "shift", "shear", "zoom", "crop_scale", "crop_ratio"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if self.fill not in FILLS:
            raise UserError(f"augment fill must be one of {', '.join(FILLS)}, got {self.fill!r}")
        zoom = _pair(self.zoom, "zoom", symmetric=False)
        if zoom[0] <= 0:
            raise UserError(f"augment zoom must keep factors above 0, got {self.zoom}")
        if self.crop_scale is not None:
            lo, hi = _pair(self.crop_scale, "crop_scale")
            if not 0 < lo <= hi <= 1:
                raise UserError(f"augment crop_scale must be within (0, 1], got {self.crop_scale}")
        ratio = _pair(self.crop_ratio, "crop_ratio")
        if ratio[0] <= 0:
            raise UserError(f"augment crop_ratio must be positive, got {self.crop_ratio}")
        for name in ("rotation", "shear"):
            _pair(getattr(self, name), name)
        self.shifts()

    @classmethod
    def from_dict(cls, values) -> "AugmentConfig":
        """From a dict or an ml_collections ConfigDict; unknown keys are a UserError."""
        values = dict(values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown augment option {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return cls(**values)

    @classmethod
    def identity(cls) -> "AugmentConfig":
        return cls(flip=False, rotation=0.0, shift=0.0, shear=0.0, zoom=0.0)

    def shifts(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """((height lo, hi), (width lo, hi)) as fractions."""
        if isinstance(self.shift, tuple):
            if len(self.shift) != 2:
                raise UserError(f"augment shift must be a fraction or (height, width), got {self.shift}")
            return _pair(float(self.shift[0]), "shift"), _pair(float(self.shift[1]), "shift")
        both = _pair(self.shift, "shift")
        return both, both

    @property
    def is_identity(self) -> bool:
        return (not self.flip and _pair(self.rotation, "rotation") == (0, 0) and self.shifts() == ((0, 0), (0, 0))
                and _pair(self.shear, "shear") == (0, 0) and _pair(self.zoom, "zoom", False) == (1, 1)
                and self.crop_scale is None)


@partial(jax.jit, static_argnames=("n", "cfg", "shape"))
def sample_matrices(key, n: int, cfg: AugmentConfig, shape=(224, 224)) -> jax.Array:
    """(n, 3, 3) float32: per image, output pixel (x, y, 1) -> the input point it samples, for HxW `shape`.

    Every random number comes from one uniform draw (a column per parameter), which keeps the compiled
    program small; the columns are fixed, so a config's draws do not shift when another option changes."""
    height, width = shape
    u = jax.random.uniform(key, (n, DRAW_COLUMNS), jnp.float32)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    inner = _mm(_crop(u[:, CROP:], cfg, height, width), _mm(_flip(u[:, FLIP], cfg), _keras_affine(u, cfg, height,
                                                                                                 width)))
    return _mm(_translation(cx, cy), _mm(inner, _translation(-cx, -cy)))


def _mm(a, b) -> jax.Array:
    """Full float32 products: accelerators may otherwise round to TF32 and move exact grid points."""
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def _scaled(u: jax.Array, bounds) -> jax.Array:
    """Uniform [0, 1) draws -> uniform in [lo, hi); exactly lo when lo == hi."""
    lo, hi = bounds
    return lo + (hi - lo) * u


def _matrices(rows) -> jax.Array:
    """Nine (n,) arrays (row-major) -> (n, 3, 3)."""
    return jnp.stack([jnp.stack(rows[i:i + 3], -1) for i in (0, 3, 6)], -2)


def _translation(tx, ty) -> jax.Array:
    return jnp.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]], jnp.float32)


def _snap(x: jax.Array) -> jax.Array:
    """Make cos/sin of quarter turns exact (cos(pi/2) is 6e-17, not 0)."""
    for target in (0.0, 1.0, -1.0):
        x = jnp.where(jnp.abs(x - target) < SNAP, target, x)
    return x


def _keras_affine(u, cfg: AugmentConfig, height, width) -> jax.Array:
    """rotation @ shift @ shear @ zoom, Keras' order, about the centre."""
    theta = jnp.deg2rad(_scaled(u[:, ROTATION], _pair(cfg.rotation, "rotation")))
    (h_lo, h_hi), (w_lo, w_hi) = cfg.shifts()
    tx = _scaled(u[:, SHIFT_X], (w_lo * width, w_hi * width))
    ty = _scaled(u[:, SHIFT_Y], (h_lo * height, h_hi * height))
    shear = jnp.deg2rad(_scaled(u[:, SHEAR], _pair(cfg.shear, "shear")))
    zoom = _pair(cfg.zoom, "zoom", symmetric=False)
    zx, zy = _scaled(u[:, ZOOM_X], zoom), _scaled(u[:, ZOOM_Y], zoom)
    one, zero = jnp.ones_like(zx), jnp.zeros_like(zx)
    cos, sin = _snap(jnp.cos(theta)), _snap(jnp.sin(theta))
    rotation = _matrices([cos, -sin, zero, sin, cos, zero, zero, zero, one])
    shift = _matrices([one, zero, tx, zero, one, ty, zero, zero, one])
    shearing = _matrices([one, -_snap(jnp.sin(shear)), zero, zero, _snap(jnp.cos(shear)), zero, zero, zero, one])
    scaling = _matrices([zx, zero, zero, zero, zy, zero, zero, zero, one])
    return _mm(rotation, _mm(shift, _mm(shearing, scaling)))


def _flip(u, cfg: AugmentConfig) -> jax.Array:
    sign = jnp.where(u < 0.5, -1.0, 1.0) if cfg.flip else jnp.ones_like(u)
    one, zero = jnp.ones_like(u), jnp.zeros_like(u)
    return _matrices([sign, zero, zero, zero, one, zero, zero, zero, one])


def _crop(u, cfg: AugmentConfig, height, width) -> jax.Array:
    """torchvision's RandomResizedCrop as a scale and a shift of the centred output grid (identity when off)."""
    n = u.shape[0]
    if cfg.crop_scale is None:
        return jnp.broadcast_to(jnp.eye(3, dtype=jnp.float32), (n, 3, 3))
    w, h = _crop_size(u[:, :CROP_TRIES], u[:, CROP_TRIES:2 * CROP_TRIES], cfg, height, width)
    left = u[:, 2 * CROP_TRIES] * (width - w)
    top = u[:, 2 * CROP_TRIES + 1] * (height - h)
    one, zero = jnp.ones(n), jnp.zeros(n)
    # output pixel x (centred) samples left + (x + W/2) * w / W - 0.5, less the input centre (W-1)/2
    cx = left + w / 2.0 - width / 2.0
    cy = top + h / 2.0 - height / 2.0
    return _matrices([w / width, zero, cx, zero, h / height, cy, zero, zero, one])


def _crop_size(u_area, u_ratio, cfg: AugmentConfig, height: int, width: int):
    """(w, h) per image: the first of CROP_TRIES draws that fits, else torchvision's fallback."""
    area = height * width * _scaled(u_area, _pair(cfg.crop_scale, "crop_scale"))
    lo, hi = _pair(cfg.crop_ratio, "crop_ratio")
    ratio = jnp.exp(_scaled(u_ratio, (math.log(lo), math.log(hi))))
    w, h = jnp.sqrt(area * ratio), jnp.sqrt(area / ratio)
    fits = (w <= width) & (h <= height)
    first = jnp.argmax(fits, axis=1)[:, None]
    fw, fh = _fallback_box(height, width, lo, hi)
    found = fits.any(axis=1)
    w = jnp.where(found, jnp.take_along_axis(w, first, 1)[:, 0], fw)
    h = jnp.where(found, jnp.take_along_axis(h, first, 1)[:, 0], fh)
    return w, h


def _fallback_box(height: int, width: int, lo: float, hi: float) -> tuple[float, float]:
    """The whole image, narrowed to the nearest allowed aspect ratio (torchvision's fallback)."""
    in_ratio = width / height
    if in_ratio < lo:
        return float(width), width / lo
    if in_ratio > hi:
        return height * hi, float(height)
    return float(width), float(height)


@partial(jax.jit, static_argnames=("fill",))
def warp(images: jax.Array, matrices: jax.Array, fill: str = "nearest", cval: float = 0.0) -> jax.Array:
    """Bilinear warp of (B, H, W, C) images by per-image (B, 3, 3) output -> input matrices; keeps the dtype."""
    out = jax.vmap(partial(_warp_one, fill=fill, cval=cval))(images.astype(jnp.float32), matrices)
    if jnp.issubdtype(images.dtype, jnp.integer):
        info = jnp.iinfo(images.dtype)
        return jnp.clip(jnp.round(out), info.min, info.max).astype(images.dtype)
    return out.astype(images.dtype)


def _warp_one(image, matrix, fill: str, cval: float):
    height, width = image.shape[:2]
    ys, xs = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32),
                          indexing="ij")
    x = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]
    y = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]
    if fill == "nearest":
        x, y = jnp.clip(x, 0, width - 1), jnp.clip(y, 0, height - 1)
    x0, y0 = jnp.floor(x), jnp.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)

    def tap(yy, xx):
        inside = ((xx >= 0) & (xx < width) & (yy >= 0) & (yy < height))[..., None]
        value = image[jnp.clip(yy, 0, height - 1), jnp.clip(xx, 0, width - 1)]
        return jnp.where(inside, value, cval)

    top = tap(y0, x0) * (1 - fx) + tap(y0, x0 + 1) * fx
    bottom = tap(y0 + 1, x0) * (1 - fx) + tap(y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bottom * fy


@partial(jax.jit, static_argnames=("cfg",))
def augment(key, images: jax.Array, cfg: AugmentConfig) -> jax.Array:
    """(B, H, W, C) uint8 or float -> the same shape and dtype, one random transform per image from `key`."""
    if cfg.is_identity:
        return images
    matrices = sample_matrices(key, images.shape[0], cfg, tuple(images.shape[1:3]))
    return warp(images, matrices, cfg.fill, cfg.cval)


def as_numpy(images) -> np.ndarray:
    """A device batch back as a NumPy array (for previews and tests)."""
    return np.asarray(jax.device_get(images))
