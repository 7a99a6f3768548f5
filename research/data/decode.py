"""File bytes -> uint8 HxWx3 RGB, the same pixels Keras' `load_img` and torchvision's default loader give.

Choices, each made so that features match what the reference pipelines compute from the same files:
- **Alpha is dropped**, not composited: RGBA, LA and palette-with-transparency go through PIL's
  `convert("RGB")`, as both `keras.utils.load_img` and torchvision's `pil_loader` do.
- **EXIF orientation is ignored**: neither reference applies `ImageOps.exif_transpose`, so neither do we
  (the stored pixel grid is used as is).
- **16-bit greyscale is scaled, not clipped**: PIL's `convert("RGB")` clips `I;16` values above 255 to white,
  so we map v -> round(v * 255 / 65535) first (mode `I` is taken as 16-bit too). 16-bit RGB PNGs are
  already reduced to 8 bits by PIL on open.
- Animated images give their first frame.

Unreadable files (zero bytes, truncated, not an image, over the size cap, or not a regular file: a FIFO, a
device such as a `/dev/zero` symlink, a socket) raise `BadImage`; callers skip them and record the name in a
`SkipLog`, so one bad file never costs the good ones.
"""
from __future__ import annotations

import io
import logging
import os
import stat
import threading

import numpy as np
from PIL import Image

from research.errors import UserError

log = logging.getLogger(__name__)

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
DEFAULT_MAX_IMAGE_BYTES = 256 << 20  # far above any photo; what a file claiming more is refused at


class BadImage(UserError):
    """A file that cannot be decoded; `path` and `reason` say which and why."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode {self.path}: {reason}")


def max_image_bytes() -> int:
    """The largest image file read: $RESEARCH_MAX_IMAGE_BYTES, else 256 MiB."""
    return int(os.environ.get("RESEARCH_MAX_IMAGE_BYTES", DEFAULT_MAX_IMAGE_BYTES))


def read_file(path, limit: int | None = None) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, else BadImage. FIFOs, devices and sockets are
    refused before any read (opened non-blocking, checked again on the open descriptor), so none can hang or
    stream without end; the size is checked on the descriptor and the read bounded by it."""
    limit = max_image_bytes() if limit is None else limit
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise BadImage(path, f"not a regular file ({_kind(os.stat(path).st_mode)})")
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb", buffering=0) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadImage(path, f"not a regular file ({_kind(st.st_mode)})")
        if st.st_size > limit:
            raise BadImage(path, f"{st.st_size} bytes, over the {limit}-byte cap (RESEARCH_MAX_IMAGE_BYTES)")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BadImage(path, f"grew past the {limit}-byte cap while being read")
    return data


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))
    return next((text for test, text in kinds if test(mode)), "not a file")


def open_image(path_or_bytes, draft: tuple[int, int] | None = None) -> Image.Image:
    """A fully loaded PIL image, or BadImage. Files are read whole first (`read_file`: regular files under a
    size cap), so no handle stays open (PIL keeps one for animated images); loading here exposes truncation.
    `draft` (w, h): a JPEG is decoded at the smallest DCT scale (1/1..1/8) that keeps both sides at least that
    large; other formats ignore it."""
    name = "<bytes>" if isinstance(path_or_bytes, (bytes, bytearray)) else str(path_or_bytes)
    try:
        data = path_or_bytes if isinstance(path_or_bytes, (bytes, bytearray)) else read_file(path_or_bytes)
        image = Image.open(io.BytesIO(data))
        if draft:
            image.draft(None, draft)
        image.load()
    except FileNotFoundError as e:
        raise BadImage(name, "no such file") from e
    except Image.DecompressionBombError as e:
        raise BadImage(name, "too many pixels (PIL decompression-bomb limit)") from e
    except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError is an OSError
        raise BadImage(name, _reason(e)) from e
    return image


def _reason(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if "cannot identify image file" in text:
        return "not an image (or an empty file)"
    return text


def to_rgb(image: Image.Image, name: str = "<image>") -> Image.Image:
    """Any PIL mode -> an RGB PIL image, with the 16-bit rule above."""
    if image.mode in SIXTEEN_BIT_MODES:
        grey = scale_16_to_8(np.asarray(image))
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))
    if image.mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError as e:
        raise BadImage(name, f"cannot convert mode {image.mode} to RGB") from e


def scale_16_to_8(values: np.ndarray) -> np.ndarray:
    """Round-to-nearest rescale of 0..65535 to 0..255 (libpng's accurate strip)."""
    wide = np.clip(values.astype(np.int64), 0, 65535)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def decode_image(path_or_bytes, draft: tuple[int, int] | None = None) -> Image.Image:
    """As `decode`, but kept as a PIL image, which saves two copies when a resize follows; `draft` as in
    `open_image`."""
    name = "<bytes>" if isinstance(path_or_bytes, (bytes, bytearray)) else str(path_or_bytes)
    return to_rgb(open_image(path_or_bytes, draft), name)


def decode(path_or_bytes) -> np.ndarray:
    """A file path or its bytes -> uint8 HxWx3 RGB; BadImage if it cannot be read."""
    return np.array(decode_image(path_or_bytes), dtype=np.uint8)


class SkipLog:
    """The files skipped as unreadable: a warning each, a count and names for output metadata."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items: dict[str, str] = {}

    def add(self, name: str, reason: str) -> None:
        with self._lock:
            self._items[str(name)] = reason
        log.warning("skipping %s: %s", name, reason)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def names(self) -> list[str]:
        """Sorted, so metadata does not depend on which thread finished first."""
        with self._lock:
            return sorted(self._items)

    def items(self) -> list[tuple[str, str]]:
        with self._lock:
            return sorted(self._items.items())

    def summary(self) -> str:
        if not self._items:
            return "skipped 0 unreadable files"
        shown = ", ".join(f"{n} ({r})" for n, r in self.items()[:10])
        more = f", and {len(self) - 10} more" if len(self) > 10 else ""
        return f"skipped {len(self)} unreadable file{'s' if len(self) != 1 else ''}: {shown}{more}"
