"""Reading feature files for the probe.

The file is read by `research.features.hdf5.read`, the one reader of the layout; this adds the checks a fit
needs (labels in range, finite features, one row per label) and names a single-tap file's tap `features`.

Layout. Single-tap: datasets `features` (N, D), `labels` (N,), `label_names` (C,), optional `paths` (N,).
Multi-label files have `labels` (N, C) instead: 1 present, 0 absent, -1 ignored (VOC's "difficult"; see
`research.probe.metrics`).
Multi-tap: a group per tap holding `features`, with `labels`, `label_names`, `paths` at the root; the root
attribute `taps` (JSON list or array) gives the depth order, else the file's group order is used. Root
attributes are provenance; `complete=True` is written last, so a file without it is refused.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from research.errors import UserError
from research.features import hdf5

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

    @property
    def multilabel(self) -> bool:
        return self.labels.ndim == 2

    def __len__(self) -> int:
        return len(self.labels)


def read(path) -> FeatureSet:
    """Load a complete feature file; UserError for anything missing, incomplete or inconsistent."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no feature file at {path}")
    data = hdf5.read(path)
    taps = data["attrs"]["taps"]
    missing = [t for t in taps if t not in data["features"]]
    if missing:
        raise UserError(f"{path}: taps {missing} are listed in the 'taps' attribute but have no group")
    names = taps if data["grouped"] else [SINGLE]
    features = {name: np.asarray(data["features"][t], np.float32) for name, t in zip(names, taps)}
    labels = np.asarray(data["labels"]).astype(np.int64)
    _check(path, features, labels, data["label_names"], data["paths"])
    return FeatureSet(path, features, labels, data["label_names"], data["paths"], json_safe(data["attrs"]))


def _check(path, features, labels, label_names, paths) -> None:
    n = len(labels)
    if n == 0:
        raise UserError(f"{path} holds no samples")
    if labels.ndim == 2:
        if labels.shape[1] != len(label_names) or not np.isin(labels, (-1, 0, 1)).all():
            raise UserError(f"{path}: multi-label labels must be ({n}, {len(label_names)}) with values 1, 0 or -1 "
                            f"(present, absent, ignored); found shape {labels.shape}, values "
                            f"{np.unique(labels)[:5].tolist()}")
    elif labels.ndim != 1:
        raise UserError(f"{path}: labels must be (N,) class ids or an (N, C) multi-label matrix, not {labels.shape}")
    elif labels.min() < 0 or labels.max() >= len(label_names):
        raise UserError(f"{path}: labels must lie in [0, {len(label_names)}), found {labels.min()}..{labels.max()}")
    if paths is not None and len(paths) != n:
        raise UserError(f"{path}: {len(paths)} paths for {n} labels")
    for tap, x in features.items():
        if x.ndim != 2 or len(x) != n:
            raise UserError(f"{path}: tap {tap!r} has features of shape {x.shape}, expected ({n}, D)")
        if not np.isfinite(x).all():
            raise UserError(f"{path}: tap {tap!r} has non-finite features")


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
