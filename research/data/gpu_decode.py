"""`--decode gpu`: JPEGs decoded by NVIDIA nvImageCodec (nvJPEG) and resized on the device; off by default.

File bytes are read on host threads (`decode.read_file`, with its checks), JPEGs decoded a batch at a time by
nvImageCodec, and each batch resized on the device to NxN by the ResizePolicy's method, crop rule and filter,
with PIL's resampling weights (below), giving uint8 (B,N,N,3) jax.Arrays. Optional: `pip install -e
'.[gpu-decode]'` (nvImageCodec, nvJPEG, JAX with CUDA).

- **Which files:** JPEGs (by their first bytes) go to nvImageCodec, which decodes baseline, progressive,
  greyscale and CMYK JPEGs to RGB. Every other format (PNG, GIF, WebP, ...), and any JPEG nvImageCodec cannot
  decode, goes through the CPU decoder (`decode.decode_image`) for that file, so its outcome is exactly the default
  path's: PIL's pixels, or a logged skip in the SkipLog with PIL's reason. EXIF orientation is not applied, as on
  the CPU path.
- **Pixels:** on the CPU backend (libjpeg-turbo, as PIL) the decode equals PIL's bit for bit; nvJPEG on a GPU may
  differ by a few levels (its IDCT and chroma upsampling are its own). The resize follows Pillow's separable
  resampling (its filter supports and window clipping at the edges, the horizontal pass rounded to uint8 before the
  vertical one) in float32 instead of Pillow's fixed point, so outputs are within `parity.GPU_RESIZE_LEVELS` (1) of
  `ResizePolicy.apply`. The policy record says `decode: gpu`, like `fast`.
- **Compiles are bounded:** XLA compiles once per input shape, so each decoded image is padded into a size bucket
  (each side rounded up to 4 steps per octave: at most 25% padding a side) and its sizes passed as traced values;
  the images of a batch that share a bucket go through one call per CHUNK of them, and a short last batch fills
  a full-size output. So a run compiles once per bucket pair it meets: 11 for all of Flowers-17 (1,360 photos of
  486 sizes), where taking each decoded image as its own array would compile 486 times. The padding is done on the
  host, where the decoded pixels are copied back (one PCIe copy of each, far cheaper than the decode it
  replaces), since a pad on the device would itself compile once per image size.
- **Where:** on a GPU by default. `RESEARCH_GPU_DECODE_BACKEND=cpu` selects nvImageCodec's CPU backend and JAX's
  default device, so the tests exercise everything but the device placement without a GPU; it is not a user option.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from research.data.decode import BadImage, SkipLog, decode, read_file
from research.data.resize import geometry
from research.errors import UserError

log = logging.getLogger(__name__)

BACKEND_ENV = "RESEARCH_GPU_DECODE_BACKEND"  # "cpu": nvImageCodec's CPU backend (tests only)
EXTRA = "pip install -e '.[gpu-decode]'"
JPEG_MAGIC = b"\xff\xd8\xff"
STEPS_PER_OCTAVE = 4
CHUNK = 16  # images of one size bucket per resize call
# Pillow's filters: support radius and kernel (PIL/Resample.c); nearest is the one-hot index rule below.
SUPPORTS = {"bilinear": 1.0, "bicubic": 2.0, "lanczos": 3.0}


def backend() -> str:
    return "cpu" if os.environ.get(BACKEND_ENV, "").lower() == "cpu" else "gpu"


@functools.cache
def _codec():
    """nvImageCodec, imported with its extension loader's messages (about nvJPEG2000 and nvTIFF, which JPEGs do
    not need) captured and logged at debug level; returns (module or None where not installed, messages)."""
    os.environ.setdefault("PYNVIMGCODEC_VERBOSITY", "0")  # a failed decode comes back as None, which we handle
    messages = []
    with _stderr_into(messages):
        try:
            from nvidia import nvimgcodec
        except ImportError:
            nvimgcodec = None
    for line in messages:
        log.debug("nvimgcodec: %s", line)
    return nvimgcodec, messages


@contextlib.contextmanager
def _stderr_into(lines: list):
    """File descriptor 2, where C extensions print, sent to a temporary file while inside; its lines appended to
    `lines` after."""
    with tempfile.TemporaryFile() as f:
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            f.seek(0)
            lines.extend(line for line in f.read().decode(errors="replace").splitlines() if line.strip())


def installed() -> bool:
    """Whether nvImageCodec imports here."""
    return _codec()[0] is not None


def check() -> None:
    """A UserError naming the extra unless nvImageCodec can decode where asked (a GPU with nvJPEG, by default)."""
    module, messages = _codec()
    if module is None:
        raise UserError(f"--decode gpu needs NVIDIA nvImageCodec, which is not installed: {EXTRA}")
    if backend() == "cpu":
        return
    if jax.default_backend() != "gpu":
        raise UserError(f"--decode gpu needs a GPU that JAX can use (it sees {jax.default_backend()}): {EXTRA}")
    if any("nvjpeg library" in m.lower() for m in messages):
        raise UserError(f"--decode gpu: nvImageCodec cannot load nvJPEG: {EXTRA}")


@functools.cache
def _decoder(where: str):
    n, _ = _codec()
    params = n.DecodeParams(apply_exif_orientation=False, color_spec=n.ColorSpec.SRGB,
                            sample_format=n.SampleFormat.I_RGB)
    if where == "cpu":
        return n.Decoder(device_id=n.NVIMGCODEC_DEVICE_CPU_ONLY, backends=[n.Backend(n.CPU_ONLY)]), params
    # every backend nvImageCodec has: the hardware JPEG decoder where the GPU has one (A100, H100, H200), nvJPEG's
    # CUDA and hybrid decoders, and libjpeg-turbo for what none of them takes
    device = jax.local_devices()[0]
    return n.Decoder(device_id=getattr(device, "local_hardware_id", None) or 0), params  # the CUDA ordinal


def decode_many(blobs: list[bytes]) -> list[np.ndarray | None]:
    """JPEG bytes -> uint8 HxWx3 host arrays; None where nvImageCodec cannot read one's header or decode it, or
    where it has more pixels than PIL accepts (left to PIL, which refuses it as a decompression bomb)."""
    streams = [_stream(blob) for blob in blobs]
    todo = [i for i, stream in enumerate(streams) if stream is not None]
    out = [None] * len(blobs)
    if todo:
        decoder, params = _decoder(backend())
        for i, image in zip(todo, decoder.decode([streams[i] for i in todo], params=params)):
            out[i] = None if image is None else np.asarray(image.cpu())
    return out


def _stream(blob: bytes):
    n, _ = _codec()
    try:
        stream = n.CodeStream(blob)
        pixels = stream.width * stream.height
    except Exception:  # nvImageCodec raises RuntimeError for an unreadable header; PIL will say why
        return None
    return stream if 0 < pixels <= 2 * Image.MAX_IMAGE_PIXELS else None


def batches(source, order, batch_size: int, image_size: int, policy, drop_remainder: bool, workers: int,
            prefetch: int, skips: SkipLog) -> Iterator[dict]:
    """loader.batches' folder batches (which has made `check`), decoded by nvImageCodec and resized on the device;
    `images` is a jax.Array."""
    from research.data import loader

    stack = functools.partial(_batch, size=image_size, policy=policy, batch=batch_size)
    return loader.batched(_decoded(source, order, batch_size, workers, prefetch), skips, batch_size,
                           drop_remainder, stack)


def _batch(elements: list, size: int, policy, batch: int) -> dict:
    return {"images": resize([e["images"] for e in elements], size, policy, batch),
            "labels": np.array([e["labels"] for e in elements], np.int32),
            "index": np.array([e["index"] for e in elements], np.int64)}


def _decoded(source, order, chunk: int, workers: int, prefetch: int) -> Iterator[dict]:
    """One element per record in `order`'s order: {"images", "labels", "index"} (loader's element, one image of
    any size) or {"skip": (name, reason)}. Bytes
    are read `prefetch` chunks ahead on `workers` threads; each chunk's JPEGs are decoded in one call."""
    pool = ThreadPoolExecutor(max(1, workers))
    ahead = collections.deque()
    try:
        for start in range(0, len(order), chunk):
            ahead.append(pool.map(functools.partial(_read, source), order[start:start + chunk]))
            if len(ahead) > max(1, prefetch):
                yield from _decode_chunk(ahead.popleft(), pool, source)
        while ahead:
            yield from _decode_chunk(ahead.popleft(), pool, source)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _read(source, index) -> tuple[int, bytes | None, tuple | None]:
    index = int(index)
    try:
        return index, read_file(source.file(index)), None
    except BadImage as e:
        return index, None, (source.paths[index], e.reason)
    except FileNotFoundError:
        return index, None, (source.paths[index], "no such file")
    except OSError as e:  # unreadable (permissions, I/O): a skip, as on the CPU path
        return index, None, (source.paths[index], e.strerror or type(e).__name__)


def _decode_chunk(reads, pool, source) -> list[dict]:
    reads = list(reads)
    jpegs = [i for i, (_, data, _) in enumerate(reads) if data is not None and data.startswith(JPEG_MAGIC)]
    images = dict(zip(jpegs, decode_many([reads[i][1] for i in jpegs])))
    # the rest, and JPEGs nvImageCodec refused, through PIL: its pixels or its reason for a skip
    fallback = [i for i, (_, data, _) in enumerate(reads) if data is not None and images.get(i) is None]
    images.update(zip(fallback, pool.map(lambda i: _pil(reads[i][1], source.paths[reads[i][0]]), fallback)))
    out = []
    for i, (index, _, skip) in enumerate(reads):
        image = images.get(i)
        if skip is not None or isinstance(image, tuple):
            out.append({"skip": skip or image})
        else:
            out.append({"images": image, "labels": int(source.labels[index]), "index": index})
    return out


def _pil(data: bytes, name: str):
    try:
        return decode(data)
    except BadImage as e:
        return name, e.reason


def bucket(n: int) -> int:
    """n rounded up to STEPS_PER_OCTAVE steps per octave (500 -> 512, 333 -> 384, 700 -> 768)."""
    step = 1 << max(int(n).bit_length() - 1 - int(np.log2(STEPS_PER_OCTAVE)), 0)
    return -(-int(n) // step) * step


def resize(images: list[np.ndarray], size: int, policy, batch: int | None = None):
    """uint8 HxWx3 host arrays of any sizes -> uint8 (B, size, size, 3) on JAX's default device, by `policy`.
    `batch`: the full batch size, so that a short last batch reuses its compiles."""
    rows_out = max(len(images), batch or 0)
    chunk = min(CHUNK, rows_out)
    out = jnp.zeros((rows_out, size, size, 3), jnp.uint8)
    groups = collections.defaultdict(list)
    for i, image in enumerate(images):
        groups[bucket(image.shape[0]), bucket(image.shape[1])].append(i)
    for (bh, bw), rows in groups.items():
        for start in range(0, len(rows), chunk):
            pixels = np.zeros((chunk, bh, bw, 3), np.uint8)
            shapes = np.ones((chunk, 6), np.int32)  # h, w, resized h, resized w, crop top, crop left
            nearest = np.zeros((chunk, 2, size), np.int32)
            where = np.full(chunk, rows_out, np.int32)  # unused slots land out of bounds and are dropped
            for slot, i in enumerate(rows[start:start + chunk]):
                h, w = images[i].shape[:2]
                pixels[slot, :h, :w] = images[i]
                shapes[slot] = h, w, *geometry((h, w), size, policy)
                if policy.interpolation == "nearest":
                    nearest[slot] = _nearest(h, shapes[slot, 2], shapes[slot, 4], size), _nearest(
                        w, shapes[slot, 3], shapes[slot, 5], size)
                where[slot] = i
            out = _resize_into(out, jax.device_put(pixels), shapes, nearest, where, size, policy.interpolation)
    return out if rows_out == len(images) else out[:len(images)]


def _nearest(in_size: int, out_size: int, offset: int, count: int) -> np.ndarray:
    """Pillow's nearest source indices: int(x) of x = (i + 0.5) * in / out summed up one step at a time in
    double precision (its affine scale loop), which a float32 product would miss by one where x is near an
    integer."""
    step = in_size / out_size
    x = np.cumsum(np.r_[step * 0.5, np.full(offset + count - 1, step)])
    return x[offset:].astype(np.int32)


@functools.partial(jax.jit, static_argnums=(5, 6))
def _resize_into(out, pixels, shapes, nearest, where, size, interpolation):
    one = functools.partial(_resize_one, size=size, interpolation=interpolation)
    return out.at[where].set(jax.vmap(one)(pixels, shapes, nearest), mode="drop")


def _resize_one(pixels, shapes, nearest, size, interpolation):
    """One padded image -> uint8 size x size x 3 by Pillow's separable `resize` to (resized h, resized w), then the
    crop at (top, left) (`shapes`), computing only the rows and columns the crop keeps."""
    h, w, rh, rw, top, left = (shapes[k] for k in range(6))
    if interpolation == "nearest":
        rows = _one_hot(nearest[0], pixels.shape[0])
        cols = _one_hot(nearest[1], pixels.shape[1])
    else:
        rows = _weights(h, rh, top, size, pixels.shape[0], interpolation)  # (size, padded h)
        cols = _weights(w, rw, left, size, pixels.shape[1], interpolation)  # (size, padded w)
    highest = jax.lax.Precision.HIGHEST
    x = _to_uint8(jnp.einsum("ow,hwc->hoc", cols, pixels.astype(jnp.float32), precision=highest))  # Pillow: w first
    return _to_uint8(jnp.einsum("oh,hwc->owc", rows, x.astype(jnp.float32), precision=highest))


def _one_hot(index, padded):
    return (jnp.arange(padded)[None, :] == index[:, None]).astype(jnp.float32)


def _to_uint8(x):
    return jnp.clip(jnp.floor(x + 0.5), 0, 255).astype(jnp.uint8)


def _weights(in_size, out_size, offset, count, padded, interpolation):
    """(count, padded) resampling weights for outputs offset..offset+count-1 of an in_size -> out_size resize:
    Pillow's `precompute_coeffs` (support widened by the scale when shrinking, the window clipped to the image
    and renormalised), zero over the padding."""
    scale = in_size.astype(jnp.float32) / jnp.asarray(out_size, jnp.float32)
    centre = (jnp.arange(count, dtype=jnp.float32) + offset + 0.5) * scale  # (count,)
    x = jnp.arange(padded, dtype=jnp.float32)
    stretch = jnp.maximum(scale, 1.0)
    support = SUPPORTS[interpolation] * stretch
    lo = jnp.maximum(jnp.floor(centre - support + 0.5), 0.0)[:, None]
    hi = jnp.minimum(jnp.floor(centre + support + 0.5), in_size.astype(jnp.float32))[:, None]
    k = _kernel(interpolation, (x[None, :] - centre[:, None] + 0.5) / stretch)
    k = jnp.where((x[None, :] >= lo) & (x[None, :] < hi), k, 0.0)
    total = k.sum(axis=1, keepdims=True)
    return k / jnp.where(total == 0, 1.0, total)


def _kernel(interpolation, x):
    x = jnp.abs(x)
    if interpolation == "bilinear":
        return jnp.maximum(1.0 - x, 0.0)
    if interpolation == "bicubic":  # Keys, a = -0.5
        a = -0.5
        near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
        return jnp.where(x < 1.0, near, jnp.where(x < 2.0, far, 0.0))
    return jnp.where(x < 3.0, jnp.sinc(x) * jnp.sinc(x / 3.0), 0.0)  # lanczos, a = 3
