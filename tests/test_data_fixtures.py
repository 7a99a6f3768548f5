"""Image trees generated at run time for the data tests (imported by the other test_data_* files)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared"
FLOWERS17 = SHARED / "datasets" / "flowers17"

# 16-bit greyscale values and what scaling (not clipping) must make of them: round(v * 255 / 65535).
DEEP_VALUES = np.array([[0, 257, 1000, 32768, 65535]], np.uint16)
DEEP_EXPECTED = np.array([[0, 1, 4, 128, 255]], np.uint8)

GOOD_ALPHA = ["alpha/grey.png", "alpha/la.png", "alpha/palette.png", "alpha/cmyk.jpg", "alpha/rgba.png",
              "alpha/deep.png", "alpha/UPPER.JPG", "alpha/photo.jpeg", "alpha/anim.gif", "alpha/pic.webp",
              "alpha/sub/nested.Png"]
GOOD_BETA = [f"beta/b{i}.jpg" for i in range(5)] + ["beta/bitmap.BMP"]
BAD = ["alpha/empty.jpg", "alpha/notreally.jpg", "alpha/truncated.jpg"]
IGNORED = ["alpha/.hidden.jpg", "alpha/notes.txt", ".git/x.png", "beta/.DS_Store", "loose.jpg"]


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def save(image: Image.Image, path: Path, fmt: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **kw)
    return path


def palette_image() -> Image.Image:
    """All pixels are index 0 (red), which is also the transparent index."""
    image = Image.new("P", (8, 6), 0)
    image.putpalette([255, 0, 0, 0, 255, 0])
    return image


def truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    noise(64, 48, 3).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    return data[: len(data) // 2]


def make_mode_images(folder: Path) -> dict[str, Path]:
    """One file per PIL mode the decoder must handle."""
    return {
        "L": save(Image.new("L", (8, 6), 100), folder / "grey.png"),
        "LA": save(Image.new("LA", (8, 6), (100, 50)), folder / "la.png"),
        "P": save(palette_image(), folder / "palette.png", transparency=0),
        "CMYK": save(Image.new("CMYK", (8, 6), (0, 255, 255, 0)), folder / "cmyk.jpg", "JPEG", quality=100),
        "RGBA": save(Image.new("RGBA", (8, 6), (10, 20, 30, 0)), folder / "rgba.png"),
        "I;16": save(Image.fromarray(DEEP_VALUES), folder / "deep.png"),
    }


def make_messy_tree(root: Path) -> Path:
    """Classes alpha, beta and an empty gamma, with every mode, odd names, bad files and files to ignore."""
    alpha = root / "alpha"
    make_mode_images(alpha)
    save(noise(20, 10, 1), alpha / "UPPER.JPG", "JPEG")
    save(noise(10, 20, 2), alpha / "photo.jpeg", "JPEG")
    save(noise(9, 9, 4).convert("P"), alpha / "anim.gif")
    save(noise(12, 8, 5), alpha / "pic.webp", "WEBP")
    save(noise(7, 7, 6), alpha / "sub" / "nested.Png", "PNG")
    save(noise(7, 7, 7), alpha / ".hidden.jpg", "JPEG")
    (alpha / "notes.txt").write_text("not an image\n")
    (alpha / "empty.jpg").write_bytes(b"")
    (alpha / "notreally.jpg").write_text("this is text, not a JPEG\n")
    (alpha / "truncated.jpg").write_bytes(truncated_jpeg())
    for i in range(5):
        save(noise(16 + i, 12, 10 + i), root / "beta" / f"b{i}.jpg", "JPEG")
    save(noise(11, 13, 20), root / "beta" / "bitmap.BMP", "BMP")
    (root / "beta" / ".DS_Store").write_bytes(b"\0\1")
    (root / "gamma").mkdir()
    save(noise(5, 5, 30), root / ".git" / "x.png", "PNG")
    save(noise(5, 5, 31), root / "loose.jpg", "JPEG")
    return root


def make_class_tree(root: Path, counts: dict[str, int], size=(12, 10)) -> Path:
    """Plain RGB JPEGs: counts[class] images per class."""
    for c, (name, n) in enumerate(sorted(counts.items())):
        for i in range(n):
            save(noise(*size, seed=1000 * c + i), root / name / f"img_{i:03d}.jpg", "JPEG")
    return root
