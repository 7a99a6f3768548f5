"""The features file: its layout as constants, the writer's helpers, and `read`, which probes use.

One tap (the layout Keras-era scripts read: `db["features"]`, `db["labels"]`, `db["label_names"]`):
- `features` (N, D) float32 or float16, `labels` int32 (N,), `label_names` (C,) and `paths` (N,) as UTF-8
  strings, `index` int64 (N,): each row's record in the dataset source.
Several taps: `/<tap>/features` per tap instead of `features`; the rest stays at the root.
Multi-label data: `labels` int8 (N, C), 1 present, 0 absent, -1 ignored (VOC's "difficult"); the probes read it
(`research.probe.metrics`), the dump writes single-label sources only.

Attributes (root; each tap group also holds its `tap` and `pooling`) record the weights, taps, pooling,
preprocessing, resize policy, dataset and split, skipped files, version and dtype, and `complete`, written
last. A file without `complete=True` is a partial one: `read` refuses it.

Multi-process dumps write one shard file per process; `stitch` joins them into one file whose `features` are
HDF5 virtual datasets over the shards (kept beside it) and whose attributes name the shards.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import h5py
import numpy as np

from research.errors import UserError
from research.h5 import plain, strings

FORMAT = "research.features"
FORMAT_VERSION = 1
FEATURES = "features"
LABELS = "labels"
LABEL_NAMES = "label_names"
PATHS = "paths"
INDEX = "index"
COMPLETE = "complete"
PROGRESS = "progress"  # rows flushed so far, while partial
ARGS_HASH = "args_hash"  # what defines the content, so a resume continues only the same computation
CHUNK_BYTES = 1 << 20


def features_name(tap: str, taps) -> str:
    """The dataset holding `tap`: `features` when it is the only tap, else `<tap>/features`."""
    return FEATURES if len(taps) == 1 else f"{tap}/{FEATURES}"


def read(path) -> dict:
    """A complete features file -> {"features": {tap: array}, "grouped", "labels", "label_names", "paths",
    "index", "attrs"}; `grouped` says taps live in groups (else one root `features`); `paths` is None where the
    source had none. UserError for a partial or foreign file."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            attrs = check(f, path)
            taps = attrs["taps"]
            grouped = [t for t in taps if f"{t}/{FEATURES}" in f]
            return {"features": {t: f[f"{t}/{FEATURES}" if t in grouped else FEATURES][()] for t in taps},
                    "grouped": bool(grouped),
                    "labels": f[LABELS][()],
                    "label_names": strings(f[LABEL_NAMES]),
                    "paths": strings(f[PATHS]) if PATHS in f else None,
                    "index": f[INDEX][()] if INDEX in f else None,
                    "attrs": attrs}
    except DAMAGED as e:
        raise UserError(f"cannot read {path}: {_first_line(e)} (a damaged or foreign file; write it again)") from e


# What h5py raises for a file whose bytes are wrong (missing objects, flipped bits, bad JSON in attributes).
DAMAGED = (OSError, KeyError, ValueError, RuntimeError, TypeError, IndexError)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def check(f, path) -> dict:
    """The attributes of an open file (JSON ones decoded), or UserError unless it is a complete features file.

    Files from other writers in the same layout (no `format` attribute) are read too, if marked complete; a
    single `features` dataset is then taken as their one tap.
    """
    if f.attrs.get("format", FORMAT) != FORMAT or LABELS not in f:
        raise UserError(f"{path} is not a features file (no {LABELS!r} dataset, or another format)")
    if LABEL_NAMES not in f:
        raise UserError(f"{path} has no {LABEL_NAMES!r} dataset (damaged, or written by another program)")
    if not _truthy(f.attrs.get(COMPLETE, False)):
        raise UserError(f"{path} is incomplete (its writing was interrupted); run the same command again")
    attrs = attributes(f)
    if isinstance(attrs.get("taps"), str):
        attrs["taps"] = json.loads(attrs["taps"])
    if "taps" not in attrs:
        attrs["taps"] = [FEATURES] if FEATURES in f else [k for k in f if isinstance(f[k], h5py.Group)]
    return attrs


def _truthy(flag) -> bool:
    """True, 1 or "true": writers differ in how they store a flag."""
    return flag is True or flag == 1 or str(plain(flag)).lower() == "true"


def attributes(f) -> dict:
    """Attributes as Python values; the JSON-valued ones (named in `json_attrs`) decoded."""
    out = {k: plain(v) for k, v in f.attrs.items()}
    for key in json.loads(out.get("json_attrs", "[]")):
        out[key] = json.loads(out[key])
    return out


def write_attrs(node, values: dict) -> None:
    """Plain values as they are; lists, dicts and None as JSON, named in `json_attrs` so `attributes` decodes
    them."""
    encoded = [k for k, v in values.items() if v is None or isinstance(v, (list, tuple, dict))]
    for key, value in values.items():
        node.attrs[key] = json.dumps(value, sort_keys=True) if key in encoded else value
    if encoded:
        previous = json.loads(node.attrs.get("json_attrs", "[]"))
        node.attrs["json_attrs"] = json.dumps(sorted(set(previous) | set(encoded)))


def chunk_rows(width: int, itemsize: int) -> int:
    """Rows per chunk: about a MiB, at least one."""
    return max(1, CHUNK_BYTES // max(1, width * itemsize))


def is_features_file(path) -> bool:
    """True for an HDF5 file this project wrote as features (complete or not): what --overwrite may replace."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return plain(f.attrs.get("format")) == FORMAT
    except (OSError, RuntimeError, KeyError, ValueError):
        return False


def is_complete(path) -> bool:
    """True for a readable, complete features file."""
    import h5py

    if not Path(path).is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("format") == FORMAT and _truthy(f.attrs.get(COMPLETE, False))
    except OSError:
        return False


SAME_ACROSS_SHARDS = ("format_version", "model", "weights_sha256", "taps", "pooling", "preprocessing",
                      "resize_policy", "dataset_spec", "split", "dtype")


def stitch(out, shards, overwrite: bool = False) -> Path:
    """One file from the shard files of a multi-process dump, listed in shard order: each tap's `features` is
    a virtual dataset over the shards' (which must stay beside `out`); labels, paths and index are copied.
    Written under a temporary name and renamed when complete, holding the output's lock."""
    from research import io

    out, shards = Path(out), [Path(s) for s in shards]
    io.check_out(out, overwrite, ours=is_features_file, what="a features file")
    with io.lock(out):
        io.check_out(out, overwrite, ours=is_features_file, what="a features file")
        return io.atomic_write(out, lambda tmp: _write_stitched(tmp, shards, out))


def _write_stitched(tmp: Path, shards: list, out: Path) -> None:
    from research import io

    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(_open_complete(s)) for s in shards]
        attrs = _stitched_attrs(files, shards)
        taps = attrs["taps"]
        with io.hdf5_file(tmp, "w", track_order=True) as f:
            for tap in taps:
                name = features_name(tap, taps)
                _virtual(f, name, [g[name] for g in files], shards, out.parent)
                if len(taps) > 1:
                    f[tap].attrs.update(dict(files[0][tap].attrs))
            for name in (LABELS, INDEX, PATHS):
                f.create_dataset(name, data=np.concatenate([g[name][()] for g in files]), dtype=files[0][name].dtype)
            f.create_dataset(LABEL_NAMES, data=files[0][LABEL_NAMES][()], dtype=files[0][LABEL_NAMES].dtype)
            write_attrs(f, attrs)
            f.attrs[COMPLETE] = True


@contextlib.contextmanager
def _open_complete(path: Path):
    import h5py

    try:
        f = h5py.File(path, "r")
    except DAMAGED as e:
        raise UserError(f"cannot read {path} as HDF5: {_first_line(e)}") from e
    with f:
        check(f, path)
        yield f


def _stitched_attrs(files: list, shards: list) -> dict:
    """Shard 0's provenance, checked to agree across shards, with the skips merged and the shards named."""
    every = [attributes(f) for f in files]
    first = every[0]
    seen = [a.get("shard") for a in every]
    if seen != [[i, len(files)] for i in range(len(files))]:
        raise UserError(f"expected shards 0..{len(files) - 1} of {len(files)} in order, got {seen}")
    for path, attrs in zip(shards, every):
        differ = [k for k in SAME_ACROSS_SHARDS if attrs.get(k) != first.get(k)]
        if differ:
            raise UserError(f"{path} differs from {shards[0]} in {', '.join(differ)}")
    skipped = sorted((s for a in every for s in a["skipped"]), key=lambda s: s["path"])
    dropped = {"shard", "listing_sha256", ARGS_HASH, PROGRESS, COMPLETE, "json_attrs"}
    kept = {k: v for k, v in first.items() if k not in dropped}
    return {**kept, "skipped": skipped, "skipped_count": len(skipped), "shards": [s.name for s in shards]}


def _virtual(f, name: str, sources: list, shards: list, folder: Path) -> None:
    """A virtual dataset stacking the shards' rows; sources named relative to `folder`, where HDF5 looks."""
    import h5py

    rows, width = sum(d.shape[0] for d in sources), sources[0].shape[1]
    layout = h5py.VirtualLayout(shape=(rows, width), dtype=sources[0].dtype)
    start = 0
    for shard, dataset in zip(shards, sources):
        layout[start:start + dataset.shape[0]] = h5py.VirtualSource(_relative(shard, folder), name,
                                                                    shape=dataset.shape)
        start += dataset.shape[0]
    f.create_virtual_dataset(name, layout)


def _relative(path: Path, folder: Path) -> str:
    try:
        return path.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())
