"""Packs: round trip through research.data.open, attributes, atomic writes, overwrite refusal, the CLI."""
from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

import research
import research.data as data
from research import cli
from research.data import pack
from research.data.decode import decode
from research.data.resize import ResizePolicy, resize
from research.errors import UserError
from tests.test_data_fixtures import BAD, GOOD_ALPHA, GOOD_BETA, make_class_tree, make_messy_tree


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    return make_messy_tree(tmp_path_factory.mktemp("messy"))


@pytest.fixture(scope="module")
def packed(messy, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "messy.h5"
    result = pack.write(messy, out, 24, resize="shorter_center_crop", interpolation="bicubic", split_test=0.25,
                        seed=3, workers=2, progress=False)
    return out, result


def test_round_trip_pixels_labels_paths(messy, packed):
    out, result = packed
    folder, source = data.open(messy), data.open(out)
    assert source.kind == "pack" and source.class_names == folder.class_names
    assert sorted(source.paths) == sorted(GOOD_ALPHA + GOOD_BETA) and result.count == len(source)
    assert list(source.paths) == [p for p in folder.paths if p not in BAD]  # source order kept
    policy = ResizePolicy("shorter_center_crop", "bicubic")
    with h5py.File(out) as f:
        images = f["images"][()]
        assert f["images"].chunks[0] >= 1 and f["images"].chunks[1:] == (24, 24, 3)
    for row, path in enumerate(source.paths):
        np.testing.assert_array_equal(images[row], resize(decode(messy / path), 24, policy), err_msg=path)
        assert source.labels[row] == folder.labels[folder.paths.index(path)]


def test_attributes_record_policy_skips_and_completion(messy, packed):
    out, result = packed
    attrs = data.open(out).attrs
    assert attrs["complete"] is True and attrs["format"] == "research.pack"
    assert (attrs["resize"], attrs["interpolation"], attrs["image_size"]) == ("shorter_center_crop", "bicubic", 24)
    assert json.loads(attrs["resize_policy"])["shorter_side"] == 27
    assert attrs["source_spec"] == str(messy) and attrs["research_version"] == research.__version__
    assert attrs["skipped_count"] == 3
    assert [s["path"] for s in json.loads(attrs["skipped"])] == sorted(BAD)
    assert data.open(out).skipped == tuple(sorted(BAD))
    assert result.skips.names == sorted(BAD)
    with h5py.File(out) as f:
        assert list(f.attrs)[-1] == "complete"  # written last
        assert [n.decode() if isinstance(n, bytes) else n for n in f["split"].attrs["names"]] == list(data.SPLITS)


def test_split_is_stratified_over_packed_images(packed):
    out, result = packed
    source = data.open(out)
    parts = source.split_indices()
    assert set(parts) == {"train", "test"}
    # alpha keeps 11 readable images -> round(2.75) = 3 test; beta 6 -> round(1.5) = 2 test
    assert np.bincount(source.labels[parts["test"]], minlength=3).tolist() == [3, 2, 0]
    assert result.split_counts == {"train": 12, "validation": 0, "test": 5}


def test_loader_reads_pack_slices(packed):
    out, _ = packed
    source = data.open(out)
    with h5py.File(out) as f:
        images = f["images"][()]
    got = list(data.batches(source, None, 5))
    np.testing.assert_array_equal(np.concatenate([b["images"] for b in got]), images)
    shuffled = list(data.batches(source, source.split_indices()["train"], 4, 24, seed=1, shuffle=True))
    index = np.concatenate([b["index"] for b in shuffled])
    assert sorted(index) == sorted(source.split_indices()["train"]) and list(index) != sorted(index)
    np.testing.assert_array_equal(np.concatenate([b["images"] for b in shuffled]), images[index])
    np.testing.assert_array_equal(np.concatenate([b["labels"] for b in shuffled]), source.labels[index])
    assert shuffled[0]["labels"].dtype == np.int32 and shuffled[0]["index"].dtype == np.int64


def test_loader_refuses_another_size_or_policy_for_a_pack(packed):
    source = data.open(packed[0])
    with pytest.raises(UserError, match="holds 24px"):
        data.batches(source, None, 4, 32)
    with pytest.raises(UserError, match="packed with shorter_center_crop/bicubic"):
        data.batches(source, None, 4, 24, "direct")


def test_folder_loader_matches_pack(messy, packed):
    source = data.open(messy)
    policy = ResizePolicy("shorter_center_crop", "bicubic")
    from_folder = {int(i): im for b in data.batches(source, None, 8, 24, policy, workers=2)
                   for i, im in zip(b["index"], b["images"])}
    packed_source = data.open(packed[0])
    for b in data.batches(packed_source, None, 8):
        for row, image in zip(b["index"], b["images"]):
            np.testing.assert_array_equal(image, from_folder[source.paths.index(packed_source.paths[row])])


def test_overwrite_is_refused_and_file_untouched(tmp_path):
    tree = make_class_tree(tmp_path / "d", {"a": 2, "b": 2})
    out = tmp_path / "p.h5"
    pack.write(tree, out, 8, progress=False)
    before, mtime = out.read_bytes(), out.stat().st_mtime_ns
    with pytest.raises(UserError, match="--overwrite"):
        pack.write(tree, out, 16, progress=False)
    assert out.read_bytes() == before and out.stat().st_mtime_ns == mtime
    pack.write(tree, out, 16, overwrite=True, progress=False)
    assert data.open(out).attrs["image_size"] == 16
    assert sorted(os.listdir(tmp_path)) == ["d", "p.h5"]  # no temporary left behind


def test_same_command_same_bytes(tmp_path):
    tree = make_class_tree(tmp_path / "d", {"a": 3, "b": 4})
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    for out in (one, two):
        pack.write(tree, out, 8, split_test=0.3, seed=1, workers=2, progress=False)
    assert one.read_bytes() == two.read_bytes()


def test_unreadable_only_dataset_leaves_nothing(tmp_path):
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "a" / "x.jpg").write_bytes(b"")
    with pytest.raises(UserError, match="none of its 1 image files could be read"):
        pack.write(tmp_path / "d", tmp_path / "p.h5", 8, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["d"]


def test_incomplete_or_foreign_h5_is_refused(tmp_path):
    tree = make_class_tree(tmp_path / "d", {"a": 2})
    out = tmp_path / "p.h5"
    pack.write(tree, out, 8, progress=False)
    with h5py.File(out, "a") as f:
        f.attrs["complete"] = False
    with pytest.raises(UserError, match="incomplete"):
        data.open(out)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(UserError, match="not a pack"):
        data.open(tmp_path / "other.h5")
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(UserError, match="cannot read"):
        data.open(tmp_path / "junk.h5")


@pytest.mark.parametrize("kwargs,message", [
    ({"split_test": 0.6, "split_val": 0.5}, "leave nothing"),
    ({"resize": "crop"}, "unknown resize"),
    ({"image_size": 0}, "image-size"),
    ({"split_test": -0.1}, "split-test"),
])
def test_bad_options_are_user_errors(tmp_path, kwargs, message):
    tree = make_class_tree(tmp_path / "d", {"a": 2})
    kwargs = {"image_size": 8, **kwargs}
    with pytest.raises(UserError, match=message):
        pack.write(tree, tmp_path / "p.h5", progress=False, **kwargs)
    assert not (tmp_path / "p.h5").exists()


def test_cli_pack(tmp_path, capsys):
    tree = make_class_tree(tmp_path / "d", {"a": 5, "b": 5})
    out = tmp_path / "p.h5"
    argv = ["pack", str(tree), str(out), "--image-size", "12", "--split-test", "0.2", "--split-val", "0.2",
            "--seed", "4", "--resize", "shorter_center_crop", "--interpolation", "lanczos", "--workers", "2"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("packed 10 images, 2 classes, 12px shorter_center_crop/lanczos")
    assert "train 6, validation 2, test 2" in printed and "0 skipped" in printed and str(out) in printed
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--overwrite" in err and err.count("\n") == 1


def test_cli_bad_dataset(tmp_path, capsys):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    assert cli.main(["pack", str(tmp_path / "empty"), str(tmp_path / "p.h5"), "--image-size", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "holds no images" in err and err.count("\n") == 1
    assert not (tmp_path / "p.h5").exists()


def test_given_splits_are_packed(tmp_path):
    make_class_tree(tmp_path / "d" / "train", {"a": 3, "b": 2})
    make_class_tree(tmp_path / "d" / "test", {"b": 2})
    result = pack.write(tmp_path / "d", tmp_path / "p.h5", 8, progress=False)
    source = data.open(tmp_path / "p.h5")
    assert result.split_counts == {"train": 5, "validation": 0, "test": 2}
    assert source.split_names() == data.open(tmp_path / "d").split_names()
    assert source.attrs["split_origin"] == "given"


def test_cli_pre_split_tree_refuses_a_second_split(tmp_path, capsys):
    make_class_tree(tmp_path / "d" / "train", {"a": 2})
    argv = ["pack", str(tmp_path / "d"), str(tmp_path / "p.h5"), "--image-size", "8", "--split-test", "0.5"]
    assert cli.main(argv) == 2
    assert "already has train/validation/test folders" in capsys.readouterr().err
