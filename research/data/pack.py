"""`research pack`: decode and resize a dataset once into one HDF5 file that trains and probes read fast.

Layout (`research.data.open("x.h5")` reads it back as a Source):
- `images` uint8 (N, S, S, 3), chunked one or a few images per chunk for random reads, uncompressed;
- `labels` int32 (N,), `label_names` and `paths` (UTF-8; paths relative to the source root);
- `split` int8 (N,) into its `names` attribute (train, validation, test), present when the source has given
  splits or a seeded split was asked for (then computed over the images actually packed);
- attributes: format, resize policy and interpolation, image size, source spec, the skipped files (count, and
  names with reasons as JSON), the package version, and `complete`, written last.

The file is written under a temporary name beside OUT and renamed when complete (`research.io`), so OUT is
either absent, the old file, or a whole new pack; `OUT.lock` keeps a second run off the same OUT.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from research import io
from research.data import loader, splits
from research.data.resize import ResizePolicy, check_size
from research.data.resize import policy as make_policy
from research.data.decode import SkipLog
from research.data.sources import PACK_FORMAT, PACK_SUFFIXES, SPLITS, Source, open_source
from research.errors import UserError

FORMAT_VERSION = 1
CHUNK_BYTES = 64 * 1024  # a chunk holds as many whole images as fit, at least one
WRITE_BATCH = 64


@dataclasses.dataclass
class PackResult:
    out: Path
    count: int
    class_names: tuple[str, ...]
    image_size: int
    policy: ResizePolicy
    split_counts: dict | None
    skips: SkipLog
    seconds: float

    def summary(self) -> str:
        """The lines `research pack` prints."""
        split = ("; split " + ", ".join(f"{k} {v}" for k, v in self.split_counts.items())
                 if self.split_counts else "")
        rate = self.count / self.seconds if self.seconds > 0 else 0.0
        size_mb = self.out.stat().st_size / 2**20
        head = (f"packed {self.count} images, {len(self.class_names)} classes, {self.image_size}px "
                f"{self.policy.method}/{self.policy.interpolation}{split}; {len(self.skips)} skipped; "
                f"{rate:.0f} img/s -> {self.out} ({size_mb:.1f} MiB)")
        return head if not len(self.skips) else head + "\n" + self.skips.summary()


def write(spec, out, image_size: int, resize: str = "direct", interpolation: str = "bilinear", decode: str = "default",
          split_test: float = 0.0, split_val: float = 0.0, seed: int = 0, overwrite: bool = False,
          workers: int | None = None, progress: bool | None = None, crop_pct: float | None = None) -> PackResult:
    """Pack the dataset `spec` into `out`; `progress` None shows a bar only on a terminal."""
    out = _check_out(Path(out), overwrite)
    policy = make_policy(resize, interpolation, decode, crop_pct)
    with io.lock(out):
        return _write(spec, _check_out(out, overwrite), image_size, policy, split_test, split_val, seed, workers,
                      progress)


def _write(spec, out: Path, image_size, policy, split_test, split_val, seed, workers, progress) -> PackResult:
    check_size(image_size)
    source = open_source(spec)
    if source.kind == "pack":
        raise UserError(f"{spec} is already a pack; pack the original images instead")
    splits.check(split_test, split_val, seed)
    seeded = split_test > 0 or split_val > 0
    if seeded and source.split is not None:
        raise UserError(f"{spec} already has train/validation/test folders; drop --split-test/--split-val")
    io.check_space(out.parent, len(source) * (image_size * image_size * 3 + 256), out)
    start = time.perf_counter()
    result = []
    io.atomic_write(out, lambda tmp: result.extend(_write_file(
        tmp, source, image_size, policy, (split_test, split_val, seed) if seeded else None, workers, progress)))
    count, split_counts, skips = result
    return PackResult(out, count, source.class_names, image_size, policy, split_counts, skips,
                      time.perf_counter() - start)


def _check_out(out: Path, overwrite: bool) -> Path:
    if out.suffix.lower() not in PACK_SUFFIXES:
        raise UserError(f"{out}: a pack's name must end in .h5 (or .hdf5) so that it can be read back")
    return io.check_out(out, overwrite, ours=is_pack, what="a pack")


def is_pack(path) -> bool:
    """An HDF5 file `research pack` wrote (complete or not): what --overwrite may replace."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("format") == PACK_FORMAT
    except (OSError, RuntimeError, KeyError, ValueError):
        return False


def _write_file(tmp: Path, source: Source, size: int, policy, seeded, workers, progress):
    skips = SkipLog()
    with io.hdf5_file(tmp, "w", track_order=True) as f:  # attributes list in the order written
        images = f.create_dataset("images", shape=(len(source), size, size, 3), maxshape=(None, size, size, 3),
                                  dtype=np.uint8, chunks=(_images_per_chunk(size), size, size, 3))
        kept = _fill(images, source, size, policy, workers, skips, progress)
        if not len(kept):
            raise UserError(f"{source.spec}: none of its {len(source)} image files could be read "
                            f"({skips.summary()})")
        images.resize(len(kept), axis=0)
        split_ids = _split_ids(source, kept, seeded)
        _write_tables(f, source, kept, split_ids)
        _write_attrs(f, source, size, policy, skips, seeded)
        f.attrs["complete"] = True
    counts = None if split_ids is None else {n: int((split_ids == i).sum()) for i, n in enumerate(SPLITS)}
    return len(kept), counts, skips


def _images_per_chunk(size: int) -> int:
    return max(1, min(64, CHUNK_BYTES // (size * size * 3)))


def _fill(images, source, size, policy, workers, skips, progress) -> np.ndarray:
    """Decode in order on a thread pool and append; returns the indices of the records kept."""
    from tqdm import tqdm

    kept, pos = [], 0
    stream = loader.batches(source, None, WRITE_BATCH, size, policy, workers=workers, skips=skips)
    with tqdm(total=len(source), unit="img", desc="pack", disable=None if progress is None else not progress,
              dynamic_ncols=True) as bar:
        for batch in stream:
            n = len(batch["index"])
            images[pos:pos + n] = np.asarray(batch["images"])  # a jax.Array from --decode gpu
            kept.append(batch["index"])
            pos += n
            bar.update(pos + len(skips) - bar.n)
        bar.update(len(source) - bar.n)
    return np.concatenate(kept) if kept else np.zeros(0, np.int64)


def _split_ids(source: Source, kept: np.ndarray, seeded) -> np.ndarray | None:
    if source.split is not None:
        return source.split[kept]
    if seeded is None:
        return None
    test, val, seed = seeded
    paths = [source.paths[i] for i in kept]
    return splits.stratified(source.labels[kept], paths, source.class_names, test, val, seed).assignment(len(kept))


def _write_tables(f, source: Source, kept: np.ndarray, split_ids) -> None:
    import h5py

    text = h5py.string_dtype("utf-8")
    f.create_dataset("labels", data=source.labels[kept].astype(np.int32))
    f.create_dataset("label_names", data=np.array(source.class_names, dtype=object), dtype=text)
    f.create_dataset("paths", data=np.array([source.paths[i] for i in kept], dtype=object), dtype=text)
    if split_ids is not None:
        f.create_dataset("split", data=split_ids.astype(np.int8))
        f["split"].attrs["names"] = np.array(SPLITS, dtype=object)


def _write_attrs(f, source: Source, size: int, policy, skips: SkipLog, seeded) -> None:
    from research import __version__

    record = policy.record(size)
    f.attrs["format"] = PACK_FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["image_size"] = size
    f.attrs["resize"] = policy.method
    f.attrs["interpolation"] = policy.interpolation
    f.attrs["decode"] = policy.decode
    if policy.crop_pct is not None:
        f.attrs["crop_pct"] = policy.crop_pct
    f.attrs["resize_policy"] = json.dumps(record, sort_keys=True)
    f.attrs["source_spec"] = source.spec
    f.attrs["split_origin"] = ("given" if source.split is not None else "none" if seeded is None else
                               json.dumps({"test": seeded[0], "validation": seeded[1], "seed": seeded[2]}))
    f.attrs["skipped_count"] = len(skips)
    f.attrs["skipped"] = json.dumps([{"path": p, "reason": r} for p, r in skips.items()])
    f.attrs["research_version"] = __version__
