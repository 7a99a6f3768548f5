"""Seeded, stratified train/validation/test splits ("20% of each class to test").

Each class is split on its own: its relative paths are sorted, then shuffled by a generator seeded from
(seed, the class name), so the split depends only on the seed, the class and its files, never on the order a
file system lists them in, nor on the other classes. Per class, the test and validation counts are the
fractions times the class size rounded to nearest (halves round up); every class keeps at least one training
image, validation giving way before test.
"""
from __future__ import annotations

import dataclasses
import math
import zlib

import numpy as np

from research.errors import UserError

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class Split:
    """Index lists into the records split, and `record`: the sorted relative paths per split, for provenance."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    record: dict

    def indices(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise UserError(f"unknown split {name!r}; known: {', '.join(SPLITS)}")
        return getattr(self, name)

    def assignment(self, n: int) -> np.ndarray:
        """int8 per record: its position in SPLITS."""
        out = np.zeros(n, np.int8)
        out[self.validation] = 1
        out[self.test] = 2
        return out


def stratified(labels, paths, class_names, test: float = 0.0, validation: float = 0.0, seed: int = 0) -> Split:
    """Split records (parallel `labels` and relative `paths`) by class; see the module docstring."""
    check(test, validation, seed)
    labels = np.asarray(labels)
    if len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels but {len(paths)} paths")
    parts = {name: [] for name in SPLITS}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[np.argsort([paths[i] for i in members], kind="stable")]
        order = _class_rng(seed, class_names[label]).permutation(len(members))
        n_test, n_val = class_counts(len(members), test, validation)
        shuffled = members[order]
        parts["test"].append(shuffled[:n_test])
        parts["validation"].append(shuffled[n_test:n_test + n_val])
        parts["train"].append(shuffled[n_test + n_val:])
    index = {name: np.sort(np.concatenate(chunks or [np.zeros(0, np.int64)])).astype(np.int64)
             for name, chunks in parts.items()}
    record = {"seed": int(seed), "fractions": {"validation": float(validation), "test": float(test)},
              **{name: sorted(paths[i] for i in index[name]) for name in SPLITS}}
    return Split(index["train"], index["validation"], index["test"], record)


def given(split_ids, paths) -> Split:
    """A Split from a source's given splits (int8 into SPLITS per record)."""
    split_ids = np.asarray(split_ids)
    index = {name: np.flatnonzero(split_ids == i).astype(np.int64) for i, name in enumerate(SPLITS)}
    record = {"seed": None, "fractions": "given",
              **{name: sorted(paths[i] for i in index[name]) for name in SPLITS}}
    return Split(index["train"], index["validation"], index["test"], record)


def train_on_validation(split: Split) -> Split:
    """The validation records moved into train (a final fit after choosing on validation); none left to pick
    a best epoch with, so the last one is kept."""
    train = np.sort(np.concatenate([split.train, split.validation]))
    record = {**split.record, "train": sorted(split.record["train"] + split.record["validation"]),
              "validation": [], "validation_in_train": len(split.validation)}
    return Split(train, split.validation[:0], split.test, record)


def class_counts(n: int, test: float, validation: float) -> tuple[int, int]:
    """(test, validation) counts for a class of n, leaving at least one for training."""
    n_test, n_val = _round(test * n), _round(validation * n)
    while n_test + n_val > n - 1 and n_val > 0:
        n_val -= 1
    while n_test + n_val > n - 1 and n_test > 0:
        n_test -= 1
    return n_test, n_val


def _round(x: float) -> int:
    """Halves up, and immune to 0.1 * 30 = 3.0000000000000004."""
    return int(math.floor(round(x, 9) + 0.5))


def _class_rng(seed: int, class_name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(class_name.encode("utf-8"))])


def check(test: float, validation: float, seed: int = 0) -> None:
    """UserError unless the fractions leave something to train on and the seed is usable."""
    if int(seed) < 0:
        raise UserError(f"--seed must be a non-negative integer, got {seed}")
    for name, value in (("test", test), ("validation", validation)):
        if not 0.0 <= value < 1.0:
            raise UserError(f"--split-{'val' if name == 'validation' else name} must be in [0, 1), got {value}")
    if test + validation >= 1.0:
        raise UserError(f"test ({test}) and validation ({validation}) fractions leave nothing to train on")
