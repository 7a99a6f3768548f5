"""`--decode gpu` on nvImageCodec's CPU backend (RESEARCH_GPU_DECODE_BACKEND=cpu): everything but the device
placement. The decode against PIL's, the device resize against ResizePolicy.apply, fallbacks and skips, bounded
compiles, a `research features` run, and the one-line error where it cannot run."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import research.data as data
from research import cli, parity
from research.cli import main
from research.data import gpu_decode, loader, resize
from research.data.decode import SkipLog, decode
from research.errors import UserError
from tests.conftest import SHARED

FLOWERS = SHARED / "datasets" / "flowers17"
needs_codec = pytest.mark.skipif(not gpu_decode.installed(),
                                 reason="nvImageCodec is not installed (pip install nvidia-nvimgcodec-cu12)")


@pytest.fixture
def cpu_backend(monkeypatch):
    monkeypatch.setenv(gpu_decode.BACKEND_ENV, "cpu")


@pytest.fixture(scope="module")
def flowers():
    """Six real photos, one from each of six classes (about 500x500-750 px)."""
    files = sorted(FLOWERS.glob("*/*.jpg"))[::80][:6]
    if len(files) < 6:
        pytest.skip(f"{FLOWERS} is absent")
    return [f.read_bytes() for f in files]


def encoded(pixels, fmt="JPEG", mode=None, **options) -> bytes:
    out = io.BytesIO()
    image = Image.fromarray(pixels)
    (image.convert(mode) if mode else image).save(out, fmt, **options)
    return out.getvalue()


def smooth(h, w, seed=0):
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    rgb = np.stack([128 + 90 * np.sin(x / 7.0 + seed), 128 + 90 * np.cos(y / 5.0), (x * 3 + y) % 256], -1)
    return np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)


@needs_codec
def test_decoded_pixels_are_pils(cpu_backend, flowers):
    """Both decode with libjpeg-turbo: equal, on real photos and on greyscale, CMYK and progressive JPEGs."""
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90": neither reference applies it, nor do we
    extra = [encoded(smooth(37, 53), "JPEG", "L"), encoded(smooth(37, 53), "JPEG", "CMYK"),
             encoded(smooth(40, 30), "JPEG", progressive=True, quality=90), encoded(smooth(20, 36), exif=exif)]
    blobs = flowers + extra
    for got, blob in zip(gpu_decode.decode_many(blobs), blobs):
        want = decode(blob)
        assert got.shape == want.shape and got.dtype == np.uint8
        assert np.abs(got.astype(int) - want).max() <= parity.GPU_DECODE_LEVELS


@needs_codec
@pytest.mark.parametrize("method,interpolation,crop_pct,size", [("direct", "bilinear", None, 48),
                                                                ("shorter_center_crop", "bilinear", None, 32),
                                                                ("shorter_center_crop", "bicubic", 0.95, 48),
                                                                ("direct", "lanczos", None, 32),
                                                                ("shorter_center_crop", "nearest", None, 48)])
def test_device_resize_follows_the_policy(cpu_backend, flowers, method, interpolation, crop_pct, size):
    """Downscaling real photos, upscaling a small image, and an image already at the size."""
    images = [decode(b) for b in flowers] + [smooth(21, 17, 1), smooth(48, 48, 2)]
    got = gpu_decode.resize(images, size, resize.policy(method, interpolation, "gpu", crop_pct))
    want = np.stack([resize.policy(method, interpolation, "default", crop_pct).apply(im, size) for im in images])
    assert got.shape == want.shape and got.dtype == np.uint8
    assert np.abs(np.asarray(got).astype(int) - want).max() <= parity.GPU_RESIZE_LEVELS


def test_buckets_bound_the_compiles():
    assert [gpu_decode.bucket(n) for n in (3, 8, 33, 333, 500, 512, 513, 700)] == [3, 8, 40, 384, 512, 512, 640, 768]
    policy = resize.policy("direct", "bilinear", "gpu")
    before = gpu_decode._resize_into._cache_size()
    batches = [[(450, 500), (500, 450), (470, 470)], [(449, 511)], [(511, 449), (460, 490)]]  # one bucket
    for shapes in batches:  # batches of 3, the last ones short
        got = gpu_decode.resize([smooth(h, w) for h, w in shapes], 8, policy, batch=3)
        assert got.shape == (len(shapes), 8, 8, 3)
    assert gpu_decode._resize_into._cache_size() - before == 1


def make_folder(root):
    """Class folders with JPEGs, a greyscale and a CMYK JPEG, a PNG and a GIF (PIL decodes those), and unreadable
    files: a truncated JPEG, an empty file, and text named .jpg."""
    files = {"a/0.jpg": encoded(smooth(50, 60, 0)), "a/1.jpg": encoded(smooth(64, 40, 1), "JPEG", "L"),
             "a/2.jpg": encoded(smooth(45, 45, 2), "JPEG", "CMYK"), "a/3.png": encoded(smooth(33, 70, 3), "PNG"),
             "b/0.gif": encoded(smooth(40, 40, 4), "GIF"), "b/1.jpg": encoded(smooth(80, 50, 5))[:300],
             "b/2.jpg": b"", "b/3.jpg": b"not a jpeg", "b/4.jpg": encoded(smooth(52, 52, 6))}
    for name, blob in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(blob)
    return root


@needs_codec
def test_the_loader_skips_bad_files_and_falls_back_to_pil(cpu_backend, tmp_path):
    import jax

    source = data.open(make_folder(tmp_path / "d"))
    (tmp_path / "d" / "b" / "4.jpg").unlink()  # gone since it was listed
    skips = SkipLog()
    policy = resize.policy("shorter_center_crop", "bilinear", "gpu")
    got = list(loader.batches(source, None, 2, 32, policy, workers=2, skips=skips))
    assert [len(b["index"]) for b in got] == [2, 2, 1]  # survivors batched full, as the CPU path does
    assert all(isinstance(b["images"], jax.Array) and b["images"].shape[1:] == (32, 32, 3) for b in got)
    index = np.concatenate([b["index"] for b in got])
    assert [source.paths[i] for i in index] == ["a/0.jpg", "a/1.jpg", "a/2.jpg", "a/3.png", "b/0.gif"]
    cpu_skips = SkipLog()
    want = np.concatenate([b["images"] for b in loader.batches(source, None, 2, 32, "shorter_center_crop",
                                                               skips=cpu_skips)])
    assert skips.items() == cpu_skips.items() and skips.names == ["b/1.jpg", "b/2.jpg", "b/3.jpg", "b/4.jpg"]
    assert dict(skips.items())["b/4.jpg"] == "no such file"
    images = np.concatenate([np.asarray(b["images"]) for b in got])
    assert np.abs(images.astype(int) - want).max() <= parity.GPU_RESIZE_LEVELS
    np.testing.assert_array_equal(np.concatenate([b["labels"] for b in got]), source.labels[index])


@needs_codec
def test_features_end_to_end_and_a_pack(cpu_backend, tmp_path, capsys):
    from benchmarks.models import setup
    from research.features import read

    folder = make_folder(tmp_path / "d")
    weights = setup("resnet18:torchvision", 32, 1, "float32").bundle.save(tmp_path / "w")  # random, no init compile
    out = tmp_path / "f.h5"
    assert main(["features", "--weights", str(weights), "--data", str(folder), "--tap", "pre_logits", "--out",
                 str(out), "--image-size", "32", "--batch-size", "4", "--decode", "gpu"]) == 0
    got = read(out)
    attrs = got["attrs"]
    assert attrs["complete"] is True and attrs["skipped_count"] == 3 and len(got["paths"]) == 6
    assert attrs["resize_policy"]["decode"] == "gpu" and attrs["resize_policy"]["resize"] == "shorter_center_crop"
    assert np.isfinite(got["features"]["pre_logits"]).all() and got["features"]["pre_logits"].shape == (6, 512)
    from research.data import pack
    pack.write(folder, tmp_path / "p.h5", 32, decode="gpu", progress=False)
    packed = data.open(tmp_path / "p.h5")
    assert packed.attrs["decode"] == "gpu" and len(packed) == 6


def test_unavailable_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    assert cli.DECODES == resize.DECODES
    source = data.open(make_folder(tmp_path / "d"))
    gpu = resize.policy("direct", "bilinear", "gpu")
    monkeypatch.delenv(gpu_decode.BACKEND_ENV, raising=False)
    import jax
    if jax.default_backend() != "gpu":  # here: no GPU, whether or not nvImageCodec is installed
        with pytest.raises(UserError, match=r"pip install -e '\.\[gpu-decode\]'"):
            loader.batches(source, None, 2, 32, gpu)
    monkeypatch.setattr(gpu_decode, "_codec", lambda: (None, []))
    with pytest.raises(UserError, match=r"needs NVIDIA nvImageCodec, which is not installed: pip install -e"):
        loader.batches(source, None, 2, 32, gpu)
    code = main(["pack", str(tmp_path / "d"), str(tmp_path / "p.h5"), "--image-size", "32", "--decode", "gpu"])
    assert code == 2 and capsys.readouterr().err.count("\n") == 1
    from benchmarks.models import setup
    weights = setup("resnet18:torchvision", 32, 1, "float32").bundle.save(tmp_path / "w")
    code = main(["features", "--weights", str(weights), "--data", str(tmp_path / "d"), "--tap", "pre_logits",
                 "--out", str(tmp_path / "f.h5"), "--image-size", "32", "--decode", "gpu"])
    assert code == 2 and "gpu-decode" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "w"]  # no output, partial or lock left behind
    with pytest.raises(UserError, match="--decode gpu reads image files"):
        loader.batches(data.open("sklearn:digits"), None, 2, 32, gpu)


@needs_codec
def test_oversized_and_unreadable_jpegs_are_left_to_pil(cpu_backend, monkeypatch):
    """PIL's pixel limit (its decompression-bomb check) holds here too: such a JPEG goes to PIL, which refuses it."""
    blob = encoded(smooth(40, 40))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 40 // 2 - 1)
    assert gpu_decode.decode_many([blob, blob[:100], b"\xff\xd8\xff junk"]) == [None, None, None]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 40)
    assert gpu_decode.decode_many([blob])[0].shape == (40, 40, 3)


def test_features_devices_pad_a_device_batch_on_the_device():
    """features.dump's Devices.put takes the jax.Array batches of --decode gpu: padded with zeros to a multiple
    of the device count (four fake CPU devices) and sharded."""
    import os
    import subprocess
    import sys

    script = ("import jax, jax.numpy as jnp\nfrom research.features.dump import Devices\n"
              "images = jnp.arange(6 * 12, dtype=jnp.uint8).reshape(6, 2, 2, 3)\n"
              "array, n = Devices().put(images)\n"
              "assert array.shape == (8, 2, 2, 3) and n == 6 and len(array.sharding.device_set) == 4\n"
              "assert (array[:6] == images).all() and int(array[6:].sum()) == 0\n")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
