"""research.data.open on folders and split trees, and the loader over them (skips named, good images kept)."""
from __future__ import annotations

import logging

import numpy as np
import pytest

import research.data as data
from research.data.decode import SkipLog
from research.errors import UserError
from tests.test_data_fixtures import BAD, GOOD_ALPHA, GOOD_BETA, IGNORED, make_class_tree, make_messy_tree, noise, save


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    return make_messy_tree(tmp_path_factory.mktemp("messy"))


def test_folder_listing(messy, caplog):
    with caplog.at_level(logging.WARNING):
        source = data.open(messy)
    assert source.kind == "folder" and source.spec == str(messy)
    assert source.class_names == ("alpha", "beta", "gamma")
    assert sorted(source.paths) == sorted(GOOD_ALPHA + GOOD_BETA + BAD)  # bad files are found at decode time
    assert not set(IGNORED) & set(source.paths)
    assert source.split is None and source.split_names() is None and source.split_indices() == {}
    assert source.labels.dtype == np.int32
    by_path = dict(zip(source.paths, source.labels))
    assert {by_path[p] for p in GOOD_ALPHA} == {0} and {by_path[p] for p in GOOD_BETA} == {1}
    assert "gamma" in caplog.text and "no images" in caplog.text
    assert "loose" not in caplog.text and "ignoring 1 images" in caplog.text
    assert source.records[0] == (source.paths[0], int(source.labels[0]))


def test_records_are_sorted_within_classes(messy):
    source = data.open(messy)
    for label in (0, 1):
        paths = [p for p, y in zip(source.paths, source.labels) if y == label]
        assert paths == sorted(paths)
    assert list(source.labels) == sorted(source.labels)


def test_loader_skips_bad_files_and_keeps_every_good_one(messy, caplog):
    source = data.open(messy)
    skips = SkipLog()
    with caplog.at_level(logging.WARNING):
        got = list(data.batches(source, None, 4, 16, "direct", workers=2, skips=skips))
    index = np.concatenate([b["index"] for b in got])
    assert sorted(source.paths[i] for i in index) == sorted(GOOD_ALPHA + GOOD_BETA)
    assert skips.names == sorted(BAD) and len(skips) == 3
    assert all(name in caplog.text for name in BAD)
    assert [len(b["index"]) for b in got] == [4, 4, 4, 4, 1]  # batches stay full despite the skips
    first = got[0]
    assert first["images"].dtype == np.uint8 and first["images"].shape == (4, 16, 16, 3)
    assert first["labels"].dtype == np.int32 and first["index"].dtype == np.int64
    np.testing.assert_array_equal(np.concatenate([b["labels"] for b in got]), source.labels[index])


def test_loader_order_is_seeded(tmp_path):
    source = data.open(make_class_tree(tmp_path, {"a": 6, "b": 6}))

    def order(**kw):
        return np.concatenate([b["index"] for b in data.batches(source, None, 5, 8, workers=2, **kw)])

    np.testing.assert_array_equal(order(), np.arange(12))
    assert np.array_equal(order(seed=3, shuffle=True), order(seed=3, shuffle=True))
    assert not np.array_equal(order(seed=3, shuffle=True), order(seed=4, shuffle=True))
    assert len(order(drop_remainder=True)) == 10
    with pytest.raises(ValueError, match="seed"):
        data.ordering(5, shuffle=True)


def test_shard():
    idx = np.arange(10)
    parts = [data.shard(idx, i, 3) for i in range(3)]
    assert [len(p) for p in parts] == [3, 3, 3] and not set(parts[0]) & set(parts[1])
    assert sum(len(data.shard(idx, i, 3, even=False)) for i in range(3)) == 10
    with pytest.raises(ValueError):
        data.shard(idx, 3, 3)


def test_split_tree(tmp_path, caplog):
    for split, classes in {"train": ["cat", "dog"], "validation": ["cat"], "test": ["dog", "cat"]}.items():
        for c in classes:
            for i in range(2):
                save(noise(6, 6, i), tmp_path / split / c / f"{i}.png")
    with caplog.at_level(logging.WARNING):
        source = data.open(tmp_path)
    assert source.class_names == ("cat", "dog")
    assert source.split_names().count("train") == 4 and source.split_names().count("validation") == 2
    assert {k: len(v) for k, v in source.split_indices().items()} == {"train": 4, "validation": 2, "test": 4}
    val = source.split_indices()["validation"]
    assert all(source.paths[i].startswith("validation/cat/") for i in val)
    assert {int(source.labels[i]) for i in val} == {0}
    test_dogs = [i for i in source.split_indices()["test"] if source.paths[i].startswith("test/dog/")]
    assert {int(source.labels[i]) for i in test_dogs} == {1}  # the same id in every split
    assert "'dog' has no folder in validation" in caplog.text


def test_split_subset_is_allowed(tmp_path):
    save(noise(6, 6), tmp_path / "train" / "a" / "x.png")
    source = data.open(tmp_path)
    assert source.split_indices().keys() == {"train"}


@pytest.mark.parametrize("spec,message", [
    ("missing", "no such dataset"),
    ("empty", "holds no images"),
    ("only_text", "holds no images"),
    ("notes.txt", "is not a folder"),
    ("tfds:", "expected tfds:NAME"),
    ("mixed", "mixes split folders"),
])
def test_bad_specs_are_one_line_user_errors(tmp_path, spec, message):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "only_text" / "a").mkdir(parents=True)
    (tmp_path / "only_text" / "a" / "x.txt").write_text("x")
    (tmp_path / "notes.txt").write_text("x")
    save(noise(4, 4), tmp_path / "mixed" / "train" / "a" / "x.png")
    save(noise(4, 4), tmp_path / "mixed" / "b" / "y.png")
    with pytest.raises(UserError, match=message) as info:
        data.open(spec if spec.startswith("tfds:") else tmp_path / spec)
    assert "\n" not in str(info.value)


def test_decoding_processes_give_the_threads_batches_and_skips(messy, monkeypatch, caplog):
    """Big folders decode in spawned processes: same order, same bytes, same batches, the same skips warned here."""
    from research.data import loader

    source = data.open(messy)
    order = loader.ordering(len(source), 7, True)

    def run():
        skips = SkipLog()
        with caplog.at_level(logging.WARNING):
            got = list(data.batches(source, order, 4, 16, "direct", workers=2, skips=skips))
        return got, skips

    threads, thread_skips = run()
    monkeypatch.setattr(loader, "PROCESS_MIN", 0)
    monkeypatch.setattr(loader, "CHUNK", 2)  # several tasks in flight, finishing out of order
    calls, original = [], loader._in_processes
    monkeypatch.setattr(loader, "_in_processes", lambda *a: calls.append(1) or original(*a))
    caplog.clear()
    processes, process_skips = run()
    assert calls  # the process path ran
    assert [len(b["index"]) for b in processes] == [len(b["index"]) for b in threads] == [4, 4, 4, 4, 1]
    for p, t in zip(processes, threads):
        for key in ("images", "labels", "index"):
            assert p[key].dtype == t[key].dtype
            np.testing.assert_array_equal(p[key], t[key])
    assert process_skips.items() == thread_skips.items() and len(process_skips) == 3
    assert all(name in caplog.text for name in BAD)
