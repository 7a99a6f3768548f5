"""The real Oxford flowers17 folder in ../shared, where present: listing, and a small pack."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import research.data as data
from research.data import pack
from research.data.decode import decode
from research.data.resize import ResizePolicy
from tests.test_data_fixtures import FLOWERS17


@pytest.fixture(scope="module")
def flowers():
    if not FLOWERS17.is_dir():
        pytest.skip(f"{FLOWERS17} is absent")
    return data.open(FLOWERS17)


def test_open_flowers17(flowers):
    assert len(flowers) == 1360 and flowers.num_classes == 17
    assert list(flowers.class_names) == sorted(flowers.class_names)
    assert np.bincount(flowers.labels).tolist() == [80] * 17
    assert flowers.split is None


def test_stratified_split_of_flowers17(flowers):
    split = data.stratified(flowers.labels, flowers.paths, flowers.class_names, test=0.2, seed=0)
    assert np.bincount(flowers.labels[split.test]).tolist() == [16] * 17


def test_pack_two_per_class(flowers, tmp_path):
    for name in flowers.class_names:
        (tmp_path / "d" / name).mkdir(parents=True)
    picks = [p for c in range(17) for p in [q for q, y in zip(flowers.paths, flowers.labels) if y == c][:2]]
    for path in picks:
        shutil.copy(FLOWERS17 / path, tmp_path / "d" / path)
    result = pack.write(tmp_path / "d", tmp_path / "f.h5", 32, split_test=0.5, seed=0, workers=2, progress=False)
    source = data.open(tmp_path / "f.h5")
    assert result.count == 34 and source.class_names == flowers.class_names
    assert {k: len(v) for k, v in source.split_indices().items()} == {"train": 17, "test": 17}
    first = next(iter(data.batches(source, [0], 1)))["images"][0]
    np.testing.assert_array_equal(first, ResizePolicy().apply(decode(FLOWERS17 / source.paths[0]), 32))
