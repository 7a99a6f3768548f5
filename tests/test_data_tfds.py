"""`tfds:` specs through tfds.testing.mock_data (nothing downloads), and the promise that folders never import TF.

mock_data's own random generator needs TensorFlow to encode images once decoding is skipped, so the mocks here
serve PNG bytes we make (`as_data_source_fn`), and split names come from metadata written to tmp_path, as TFDS
documents for mocks that need real split names.
"""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest

import research.data as data
from research.data.decode import SkipLog
from research.data.resize import ResizePolicy
from research.errors import UserError
from tests.test_data_fixtures import noise


SIZES = {  # dataset -> records per TFDS split (the real split names, fewer records)
    "oxford_flowers102": {"train": 4, "validation": 3, "test": 5},
    "caltech101": {"train": 5, "test": 3},
    "cats_vs_dogs": {"train": 6},
    "dtd": {"train": 3, "validation": 2, "test": 2},
}
BAD_ROW = ("test", 1)  # one undecodable image in each dataset that has a test split


def picture(seed: int):
    return noise(7 + seed % 3, 5 + seed % 4, seed)


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    picture(seed).save(buffer, "PNG")
    return buffer.getvalue()


def fake_split(name: str, split: str, n: int, num_classes: int) -> list[dict]:
    """Examples as a real ArrayRecord source gives them with image decoding skipped."""
    base = sum(map(ord, split)) * 10
    rows = [{"image": png(base + i), "label": np.int64((base + i) % num_classes)} for i in range(n)]
    if (split, 1) == BAD_ROW and n > 1:
        rows[1]["image"] = b"not an image"
    return rows


@pytest.fixture()
def mocked(tmp_path):
    """A context maker: mock TFDS for one dataset with the split sizes in SIZES."""
    tfds = pytest.importorskip("tensorflow_datasets", reason="install research[tfds] for the TFDS tests")

    def make(name: str):
        builder = tfds.builder(name, data_dir=tmp_path, file_format="array_record")
        splits = [tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0) for s, n in SIZES[name].items()]
        builder.info.set_splits(tfds.core.SplitDict(splits))
        folder = tmp_path / name / str(builder.info.version)
        folder.mkdir(parents=True, exist_ok=True)
        builder.info.write_to_directory(folder)
        classes = builder.info.features["label"].num_classes

        def as_data_source(self, split=None, **kwargs):
            return fake_split(name, split, SIZES[name][split], classes)

        return tfds.testing.mock_data(num_examples=1, data_dir=str(tmp_path), as_data_source_fn=as_data_source,
                                      policy=tfds.testing.MockPolicy.USE_FILES)
    return make


def test_given_splits_map_onto_ours(mocked):
    with mocked("oxford_flowers102"):
        source = data.open("tfds:oxford_flowers102")
    assert source.kind == "tfds" and len(source) == 12 and source.num_classes == 102
    assert source.class_names[0] == "pink primrose"
    assert {k: len(v) for k, v in source.split_indices().items()} == {"train": 4, "validation": 3, "test": 5}
    assert source.records[4] == (("validation", 0), int(source.labels[4]))
    assert source.paths[4] == "validation/000000"
    expected = [int(r["label"]) for s in ("train", "validation", "test") for r in fake_split("x", s, 5, 102)
                [:SIZES["oxford_flowers102"][s]]]
    assert source.labels.tolist() == expected


def test_images_go_through_our_decode_and_resize(mocked):
    with mocked("caltech101"):
        source = data.open("tfds:caltech101")
        skips = SkipLog()
        got = list(data.batches(source, None, 3, 8, "direct", workers=2, skips=skips))
    assert source.split_names().count("test") == 3 and source.class_names[:2] == ("accordion", "airplanes")
    index = np.concatenate([b["index"] for b in got])
    assert skips.names == ["test/000001"] and len(index) == 7  # the bad record is skipped, the rest kept
    first = got[0]["images"][0]
    want = ResizePolicy().apply(np.asarray(picture(sum(map(ord, "train")) * 10)), 8)
    np.testing.assert_array_equal(first, want)


def test_train_only_dataset_has_no_given_split(mocked, tmp_path):
    with mocked("cats_vs_dogs"):
        source = data.open("tfds:cats_vs_dogs")
        assert source.class_names == ("cat", "dog") and len(source) == 6 and source.split is None
        split = data.stratified(source.labels, source.paths, source.class_names, test=0.5, seed=0)
        assert np.bincount(source.labels[split.test]).tolist() == [2, 2]  # 1.5 of 3 per class rounds up
        from research.data import pack
        result = pack.write("tfds:cats_vs_dogs", tmp_path / "c.h5", 8, split_test=0.5, seed=0, workers=2,
                            progress=False)
    assert result.count == 6 and data.open(tmp_path / "c.h5").split_indices()["test"].size == 4


def test_one_named_split(mocked):
    with mocked("dtd"):
        source = data.open("tfds:dtd:validation")
    assert len(source) == 2 and source.split is None and source.paths == ("validation/000000", "validation/000001")


@pytest.mark.parametrize("spec,message", [
    ("tfds:oxford_flowers102:valid", "no split 'valid'; did you mean validation"),
    ("tfds:oxford_flowers10", "unknown TFDS dataset 'oxford_flowers10'; did you mean oxford_flowers102"),
    ("tfds:", "expected tfds:NAME"),
    ("tfds:a:b:c", "expected tfds:NAME"),
])
def test_bad_tfds_specs_are_one_line_user_errors(mocked, spec, message):
    with mocked("oxford_flowers102"), pytest.raises(UserError, match=message) as info:
        data.open(spec)
    assert "\n" not in str(info.value)


def test_folders_do_not_import_tensorflow(tmp_path):
    from tests.test_data_fixtures import make_class_tree

    root = make_class_tree(tmp_path, {"a": 1, "b": 1})
    code = ("import sys, research.data as d; s = d.open(sys.argv[1]); next(iter(d.batches(s, None, 2, 8)));"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets')))")
    out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
