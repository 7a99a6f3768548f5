"""Feature-file fixtures for the probe tests (written to tmp_path in the fixed layout), and the reader's tests."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from research.errors import UserError
from research.probe import reader

PROVENANCE = {"arch": "resnet50", "tap": "avgpool", "pooling": "avg", "preprocessing": "caffe",
              "weights_sha256": "ab" * 32, "dataset": "digits", "split": "all"}


def write_feats(path, features, labels, label_names, paths=None, complete=True, taps_attr=True, **attrs):
    """A feature file: `features` an array (single tap) or a dict tap -> array in depth order (multi-tap)."""
    with h5py.File(path, "w") as f:
        if isinstance(features, dict):
            for tap, x in features.items():
                f.create_group(tap).create_dataset("features", data=x)
            if taps_attr:
                f.attrs["taps"] = json.dumps(list(features))
        else:
            f.create_dataset("features", data=features)
        f.create_dataset("labels", data=np.asarray(labels, np.int64))
        f.create_dataset("label_names", data=list(label_names), dtype=h5py.string_dtype("utf-8"))
        if paths is not None:
            f.create_dataset("paths", data=list(paths), dtype=h5py.string_dtype("utf-8"))
        for key, value in {**PROVENANCE, **attrs}.items():
            f.attrs[key] = value
        if complete:
            f.attrs["complete"] = True
    return path


def digits():
    """scikit-learn's 8x8 digits: 1797 x 64 features, 10 classes."""
    from sklearn.datasets import load_digits
    d = load_digits()
    return d.data.astype(np.float32), d.target, [f"digit {i}" for i in range(10)]


def mixture(n=1600, d=256, k=8, seed=0, spread=0.28):
    """A Gaussian mixture in d dimensions with overlapping classes, so the probes score well below 100%."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * spread
    y = np.arange(n) % k
    x = means[y] + rng.normal(size=(n, d))
    return x.astype(np.float32), y, [f"class {i}" for i in range(k)]


def write_digits(path, **kw):
    x, y, names = digits()
    return write_feats(path, x, y, names, paths=[f"img/{i:05d}.png" for i in range(len(y))], **kw)


def test_reads_single_tap(tmp_path):
    data = reader.read(write_digits(tmp_path / "d.h5"))
    assert data.taps == [reader.SINGLE] and not data.multi_tap
    assert data.features[reader.SINGLE].shape == (1797, 64) and len(data) == 1797
    assert data.label_names[3] == "digit 3" and data.paths[0] == "img/00000.png"
    assert data.attrs["complete"] is True and data.attrs["arch"] == "resnet50"
    json.dumps(data.attrs)


def test_multi_tap_depth_order(tmp_path):
    x, y, names = mixture(n=80, d=8, k=4)
    taps = {"stage4": x, "stage1": x[:, :4], "stage2": x[:, :6]}  # the attribute, not the alphabet, orders
    data = reader.read(write_feats(tmp_path / "m.h5", taps, y, names))
    assert data.taps == ["stage4", "stage1", "stage2"] and data.multi_tap and data.paths is None


def test_incomplete_refused(tmp_path):
    path = write_digits(tmp_path / "d.h5", complete=False)
    with pytest.raises(UserError, match="incomplete"):
        reader.read(path)


def test_bad_labels_refused(tmp_path):
    path = write_feats(tmp_path / "b.h5", np.zeros((3, 2), np.float32), [0, 1, 5], ["a", "b"])
    with pytest.raises(UserError, match="labels must lie"):
        reader.read(path)


def test_json_safe():
    value = reader.json_safe({"a": np.int64(3), "b": np.array([1.5, 2]), "c": b"x", "d": np.bool_(True),
                          "e": np.float32("nan")})
    assert value == {"a": 3, "b": [1.5, 2.0], "c": "x", "d": True, "e": "nan"}
