"""Resize policies: how a decoded image becomes NxN, named so that outputs can record it.

- `direct`: straight to NxN, aspect ratio not kept, as Keras' `load_img(target_size=...)` does.
- `shorter_center_crop`: shorter side to round(N / 0.875) (256 for 224), then the centre NxN, as torchvision's
  `Resize(256) + CenterCrop(224)` eval transform does, including its integer rules (the long side is
  truncated, the crop offset rounded) so the pixels agree. With a `crop_pct` (a timm snapshot's
  `pretrained_cfg`), the shorter side is floor(N / crop_pct), as timm's eval transform computes it.

Both use PIL's `resize` with an explicit filter (bilinear unless told), which is what both references call.

`decode="fast"` (off by default) lets libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale in the DCT domain (PIL's
`Image.draft`), the smallest scale still at least as large as what the resize needs, before the same resize: 2-4x
less decoding for photos much larger than the input, but pixels that differ from Keras' and torchvision's, which
decode at full size (README: its speed and its effect on a probe).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

from research.errors import UserError

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
METHODS = ("direct", "shorter_center_crop")
DECODES = ("default", "fast", "gpu")
CROP_FRACTION = 0.875
MAX_SIZE = 4096  # the largest NxN any command makes: far above ImageNet models' inputs, far below memory limits


def check_size(size, what: str = "--image-size") -> int:
    """`size` as an int in [1, MAX_SIZE], else a UserError."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= MAX_SIZE:
        raise UserError(f"{what} must be an integer in [1, {MAX_SIZE}], got {size!r}")
    return int(size)


@dataclasses.dataclass(frozen=True)
class ResizePolicy:
    """A method and an interpolation; `record(size)` is the JSON-able description outputs store."""

    method: str = "direct"
    interpolation: str = "bilinear"
    decode: str = "default"
    crop_pct: float | None = None  # timm's; None: torchvision's 0.875 with its rounding

    def __post_init__(self):
        if self.method not in METHODS:
            raise UserError(f"unknown resize {self.method!r}; known: {', '.join(METHODS)}")
        if self.interpolation not in INTERPOLATIONS:
            raise UserError(f"unknown interpolation {self.interpolation!r}; known: {', '.join(INTERPOLATIONS)}")
        if self.decode not in DECODES:
            raise UserError(f"unknown decode {self.decode!r}; known: {', '.join(DECODES)}")
        if self.crop_pct is not None and not 0.1 <= self.crop_pct <= 1:
            raise UserError(f"crop_pct must be in [0.1, 1], got {self.crop_pct}")

    def apply(self, image, size: int) -> np.ndarray:
        """uint8 HxWx3 (array or PIL image) -> uint8 size x size x 3."""
        return resize(image, size, self)

    def record(self, size: int) -> dict:
        out = {"resize": self.method, "interpolation": self.interpolation, "image_size": int(size)}
        if self.method == "shorter_center_crop":
            out["shorter_side"] = shorter_side(size, self.crop_pct)
            if self.crop_pct is not None:  # absent from records made before the option
                out["crop_pct"] = self.crop_pct
        if self.decode != "default":  # absent from records made before the option, which all decoded in full
            out["decode"] = self.decode
        return out

    def draft(self, size: int) -> tuple[int, int] | None:
        """The (w, h) both sides of a reduced JPEG decode must reach for this resize, or None: decode in full."""
        if self.decode != "fast":
            return None
        side = size if self.method == "direct" else shorter_side(size, self.crop_pct)
        return side, side


def policy(method="direct", interpolation: str = "bilinear", decode: str = "default",
           crop_pct: float | None = None) -> ResizePolicy:
    """A ResizePolicy from names, or the policy itself when given one."""
    if isinstance(method, ResizePolicy):
        return method
    return ResizePolicy(method, interpolation, decode, crop_pct)


def shorter_side(size: int, crop_pct: float | None = None) -> int:
    if crop_pct is None:
        return int(round(size / CROP_FRACTION))
    return int(math.floor(size / crop_pct))


def resize(image, size: int, policy: ResizePolicy) -> np.ndarray:
    """Apply `policy` to make an NxN uint8 RGB image."""
    if size < 1:
        raise UserError(f"image size must be positive, got {size}")
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    resample = INTERPOLATIONS[policy.interpolation]
    if policy.method == "direct":
        out = pil.resize((size, size), resample)
    else:
        out = _center_crop(pil.resize(_shorter_to(pil.size, shorter_side(size, policy.crop_pct)), resample), size)
    return np.array(out, dtype=np.uint8)  # a writable copy; asarray of a PIL image is read-only


def _shorter_to(wh: tuple[int, int], short: int) -> tuple[int, int]:
    """(w, h) with the shorter side `short`; the long side truncated, as torchvision computes it."""
    w, h = wh
    if w <= h:
        return short, int(short * h / w)
    return int(short * w / h), short


def _center_crop(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    left, top = crop_offset(w, size), crop_offset(h, size)
    return image.crop((left, top, left + size, top + size))


def crop_offset(dim: int, size: int) -> int:
    """torchvision's centre-crop offset: int(round((dim - size) / 2))."""
    return int(round((dim - size) / 2.0))


def geometry(hw: tuple[int, int], size: int, policy: ResizePolicy) -> tuple[int, int, int, int]:
    """(resized h, resized w, crop top, crop left) of `policy` on an image of (h, w): what `resize` does, as
    numbers, for resizers that run elsewhere (research.data.gpu_decode)."""
    if policy.method == "direct":
        return size, size, 0, 0
    w, h = _shorter_to((hw[1], hw[0]), shorter_side(size, policy.crop_pct))
    return h, w, crop_offset(h, size), crop_offset(w, size)
