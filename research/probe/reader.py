"""Reading feature files for the probe.

A stop-gap reader written against the fixed feature-file layout, kept here so the probe does not wait on
`research.features.hdf5`; `read` is the only entry point, so swapping in the shared reader later means
changing this module alone.

Layout. Single-tap: datasets `features` (N, D), `labels` (N,), `label_names` (C,), optional `paths` (N,).
Multi-tap: a group per tap holding `features`, with `labels`, `label_names`, `paths` at the root; the root
attribute `taps` (JSON list or array) gives the depth order, else the file's group order is used. Root
attributes are provenance; `complete=True` is written last, so a file without it is refused.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from research.errors import UserError

SINGLE = "features"  # the tap name given to a single-tap file's features


@dataclasses.dataclass
class FeatureSet:
    """Everything the probe needs from one file: features per tap (depth order), labels and provenance."""

    path: Path
    features: dict  # tap -> (N, D) float array, in depth order
    labels: np.ndarray
    label_names: list
    paths: list | None
    attrs: dict

    @property
    def taps(self) -> list:
        return list(self.features)

    @property
    def multi_tap(self) -> bool:
        return list(self.features) != [SINGLE]

    def __len__(self) -> int:
        return len(self.labels)


def read(path) -> FeatureSet:
    """Load a complete feature file; UserError for anything missing, incomplete or inconsistent."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise UserError(f"no feature file at {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise UserError(f"{path} is not a readable HDF5 file ({e})") from None
    with f:
        attrs = json_safe(dict(f.attrs))
        if not _is_complete(attrs.get("complete")):
            raise UserError(f"{path} is incomplete (no complete=True attribute): the dump did not finish")
        for name in ("labels", "label_names"):
            if name not in f:
                raise UserError(f"{path} has no '{name}' dataset")
        labels = np.asarray(f["labels"][()]).astype(np.int64)
        label_names = [_text(x) for x in f["label_names"][()]]
        paths = [_text(x) for x in f["paths"][()]] if "paths" in f else None
        features = {tap: np.asarray(f[key][()], np.float32) for tap, key in _tap_keys(f, path)}
    _check(path, features, labels, label_names, paths)
    return FeatureSet(path, features, labels, label_names, paths, attrs)


def _tap_keys(f, path) -> list:
    """(tap, dataset key) pairs in depth order."""
    import h5py

    if isinstance(f.get(SINGLE), h5py.Dataset):
        return [(SINGLE, SINGLE)]
    groups = [k for k in f if isinstance(f[k], h5py.Group) and "features" in f[k]]
    if not groups:
        raise UserError(f"{path} has neither a 'features' dataset nor tap groups holding one")
    order = f.attrs.get("taps")
    if order is not None:
        order = json.loads(order) if isinstance(order, (str, bytes)) else [_text(t) for t in order]
        missing = [t for t in order if t not in groups]
        if missing:
            raise UserError(f"{path}: taps {missing} are listed in the 'taps' attribute but have no group")
        groups = list(order)
    return [(tap, f"{tap}/features") for tap in groups]


def _check(path, features, labels, label_names, paths) -> None:
    n = len(labels)
    if n == 0:
        raise UserError(f"{path} holds no samples")
    if labels.min() < 0 or labels.max() >= len(label_names):
        raise UserError(f"{path}: labels must lie in [0, {len(label_names)}), found {labels.min()}..{labels.max()}")
    if paths is not None and len(paths) != n:
        raise UserError(f"{path}: {len(paths)} paths for {n} labels")
    for tap, x in features.items():
        if x.ndim != 2 or len(x) != n:
            raise UserError(f"{path}: tap {tap!r} has features of shape {x.shape}, expected ({n}, D)")
        if not np.isfinite(x).all():
            raise UserError(f"{path}: tap {tap!r} has non-finite features")


def _is_complete(value) -> bool:
    """True, 1 or "true": writers differ in how they store a flag."""
    return value is True or (isinstance(value, int) and value == 1) or str(value).lower() == "true"


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def json_safe(value):
    """HDF5 attribute values (numpy scalars, arrays, bytes) as plain JSON types; JSON strings stay strings."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [json_safe(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        value = float(value)
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value
