"""Seeded stratified splits: per-class counts, determinism, independence from listing order."""
from __future__ import annotations

import numpy as np
import pytest

from research.data.splits import class_counts, given, stratified, train_on_validation
from research.errors import UserError

SIZES = {"a": 10, "b": 7, "c": 3, "d": 1, "e": 80}


def listing(sizes=SIZES, order_seed=None):
    """(labels, paths, class names) for classes of the given sizes, optionally listed in a shuffled order."""
    names = sorted(sizes)
    rows = [(names.index(c), f"{c}/{i:03d}.jpg") for c in names for i in range(sizes[c])]
    if order_seed is not None:
        rows = [rows[i] for i in np.random.default_rng(order_seed).permutation(len(rows))]
    return np.array([r[0] for r in rows]), [r[1] for r in rows], names


def per_class(split, labels, part):
    return np.bincount(labels[split.indices(part)], minlength=len(SIZES)).tolist()


def test_counts_round_to_nearest_per_class():
    labels, paths, names = listing()
    split = stratified(labels, paths, names, test=0.2, validation=0.1, seed=0)
    # a 10: 2 + 1; b 7: round(1.4)=1 + round(0.7)=1; c 3: round(0.6)=1 + 0; d 1: all train; e 80: 16 + 8
    assert per_class(split, labels, "test") == [2, 1, 1, 0, 16]
    assert per_class(split, labels, "validation") == [1, 1, 0, 0, 8]
    assert per_class(split, labels, "train") == [7, 5, 2, 1, 56]
    every = np.concatenate([split.train, split.validation, split.test])
    assert sorted(every) == list(range(len(labels)))


def test_class_counts_keep_one_for_training():
    assert class_counts(1, 0.6, 0.0) == (0, 0)
    assert class_counts(2, 0.4, 0.4) == (1, 0)  # validation gives way first
    assert class_counts(5, 0.5, 0.0) == (3, 0)  # halves round up
    assert class_counts(30, 0.1, 0.0) == (3, 0)  # 0.1 * 30 is not quite 3.0 in floating point


def test_same_seed_same_split_whatever_the_listing_order():
    base = stratified(*listing(), test=0.2, validation=0.1, seed=7).record
    for order_seed in (1, 2):
        labels, paths, names = listing(order_seed=order_seed)
        assert stratified(labels, paths, names, test=0.2, validation=0.1, seed=7).record == base
    assert base["seed"] == 7 and base["fractions"] == {"validation": 0.1, "test": 0.2}


def test_different_seed_different_split():
    labels, paths, names = listing()
    one = stratified(labels, paths, names, test=0.2, seed=1)
    two = stratified(labels, paths, names, test=0.2, seed=2)
    assert one.record["test"] != two.record["test"]
    assert per_class(one, labels, "test") == per_class(two, labels, "test")


def test_a_class_split_does_not_depend_on_other_classes():
    labels, paths, names = listing()
    fewer = {k: v for k, v in SIZES.items() if k != "b"}
    labels2, paths2, names2 = listing(fewer)
    e_test = [p for p in stratified(labels, paths, names, test=0.3, seed=5).record["test"] if p.startswith("e/")]
    e_test2 = [p for p in stratified(labels2, paths2, names2, test=0.3, seed=5).record["test"] if p.startswith("e/")]
    assert e_test == e_test2


def test_assignment_and_given():
    labels, paths, names = listing()
    split = stratified(labels, paths, names, test=0.2, validation=0.1, seed=0)
    ids = split.assignment(len(labels))
    again = given(ids, paths)
    for part in ("train", "validation", "test"):
        np.testing.assert_array_equal(again.indices(part), split.indices(part))
    assert again.record["fractions"] == "given"


@pytest.mark.parametrize("test,val,seed", [(1.0, 0.0, 0), (-0.1, 0.0, 0), (0.5, 0.5, 0), (0.2, 0.0, -1)])
def test_bad_fractions_are_user_errors(test, val, seed):
    with pytest.raises(UserError):
        stratified(*listing(), test=test, validation=val, seed=seed)


def test_train_on_validation_moves_validation_into_train():
    labels, paths, names = listing()
    split = stratified(labels, paths, names, test=0.2, validation=0.2, seed=1)
    merged = train_on_validation(split)
    assert sorted(merged.train) == sorted(np.concatenate([split.train, split.validation]))
    assert len(merged.validation) == 0 and np.array_equal(merged.test, split.test)
    assert merged.record["train"] == sorted(split.record["train"] + split.record["validation"])
    assert merged.record["validation_in_train"] == len(split.validation) > 0
