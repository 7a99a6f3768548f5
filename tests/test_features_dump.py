"""`research features`: the seed-compatible layout, provenance, pooling, dtypes, several taps, refusals."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
from PIL import Image

import research
from research.cli import main
from research.data import open as open_data
from research.errors import UserError
from research.features import dump, hdf5, read
from research.features.dump import partial_path
from tests.test_weights import write_keras2_vgg16

CLASSES = ("cat", "dog", "fox")
PER_CLASS = 10


def make_folder(root, per_class: int = PER_CLASS, bad: bool = True, splits=None):
    """Class folders of small random PNGs (40x48, so resizing matters), and one unreadable file."""
    rng = np.random.default_rng(0)
    for parent in ([root / s for s in splits] if splits else [root]):
        for name in CLASSES:
            (parent / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(parent / name / f"{i:02d}.png")
    if bad:
        (root / (splits[0] if splits else "") / "dog" / "broken.png").write_bytes(b"not a png")
    return root


def write_vgg(path):
    """The Keras-2-style VGG16 of test_weights with He-scaled random kernels, so activations stay O(1) and
    features differ between images."""
    write_keras2_vgg16(path)
    rng = np.random.default_rng(0)
    with h5py.File(path, "r+") as f:
        def scale(name, node):
            if isinstance(node, h5py.Dataset) and "kernel" in name:
                fan_in = int(np.prod(node.shape[:-1]))
                node[...] = rng.normal(0, np.sqrt(2 / fan_in), node.shape).astype(np.float32)
        f.visititems(scale)
    return path


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    return write_vgg(tmp_path_factory.mktemp("weights") / "vgg16_notop.h5")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data") / "animals")


@pytest.fixture(scope="module")
def resnet18(golden):
    return research.load(golden / "resnet18_fp16.pth")


def test_seed_script_reads_it(vgg, folder, tmp_path):
    out = tmp_path / "f.h5"
    dump(vgg, folder, ["block5_pool"], out, pool="flatten", image_size=32, batch_size=8)
    from sklearn.linear_model import LogisticRegression

    db = h5py.File(out, "r")  # the classic Keras-era probe, verbatim
    i = int(db["labels"].shape[0] * 0.75)
    model = LogisticRegression().fit(db["features"][:i], db["labels"][:i])
    names = [s.decode() for s in db["label_names"][()]]
    assert names == list(CLASSES)
    assert model.predict(db["features"][i:]).shape == (db["labels"].shape[0] - i,)
    assert db["features"].shape == (3 * PER_CLASS, 512) and db["features"].dtype == np.float32
    db.close()


def test_rows_follow_the_source_and_provenance_is_recorded(vgg, folder, tmp_path):
    out = tmp_path / "f.h5"
    result = dump(vgg, folder, "block4_pool", out, image_size=32, batch_size=8)
    got, source = read(out), open_data(folder)
    kept = [i for i, p in enumerate(source.paths) if p != "dog/broken.png"]
    assert got["paths"] == [source.paths[i] for i in kept]
    np.testing.assert_array_equal(got["labels"], source.labels[kept])
    np.testing.assert_array_equal(got["index"], kept)
    assert got["label_names"] == list(CLASSES) and result.count == len(kept) == 30
    attrs = got["attrs"]
    assert attrs["arch"] == "vgg16" and attrs["layout"] == "keras" and attrs["tap"] == "block4_pool"
    assert attrs["weights_sha256"] and attrs["weights_file"] == "vgg16_notop.h5"
    assert attrs["pooling"] == "avg" and attrs["preprocessing"] == "caffe" and attrs["image_size"] == 32
    assert (attrs["resize"], attrs["interpolation"]) == ("direct", "bilinear")  # caffe weights: Keras' resize
    assert attrs["skipped_count"] == 1 and attrs["skipped"][0]["path"] == "dog/broken.png"
    assert attrs["research_version"] == research.__version__ and attrs["dtype"] == "float32"
    assert attrs["dataset_spec"] == str(folder) and attrs["split"] == "all" and attrs["complete"] is True
    assert list(attrs)[-1] == "complete"  # written last


def test_split_selects_its_records(vgg, tmp_path):
    data = make_folder(tmp_path / "tree", per_class=3, bad=False, splits=("train", "test"))
    got = read(dump(vgg, data, ["block3_pool"], tmp_path / "f.h5", image_size=32, split="test").out)
    assert all(p.startswith("test/") for p in got["paths"]) and len(got["paths"]) == 9
    assert got["attrs"]["split_record"]["test"] == got["paths"]
    with pytest.raises(UserError, match="no train/validation/test splits"):
        dump(vgg, make_folder(tmp_path / "flat", per_class=2), ["block3_pool"], tmp_path / "g.h5", split="test")


def test_existing_output_is_refused_unchanged(vgg, folder, tmp_path, capsys):
    out = tmp_path / "f.h5"
    out.write_bytes(b"precious")
    code = main(["features", "--weights", str(vgg), "--data", str(folder), "--tap", "block1_pool",
                 "--image-size", "32", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "--overwrite" in err
    assert out.read_bytes() == b"precious"


def test_partial_with_other_arguments_is_refused(vgg, folder, tmp_path):
    out = tmp_path / "f.h5"
    dump(vgg, folder, ["block2_pool"], out, image_size=32, batch_size=8)
    out.rename(partial_path(out))  # a partial started with pool=avg
    with pytest.raises(UserError, match="other arguments.*--overwrite"):
        dump(vgg, folder, ["block2_pool"], out, pool="max", image_size=32, batch_size=8)
    dump(vgg, folder, ["block2_pool"], out, pool="max", image_size=32, batch_size=8, overwrite=True)
    assert read(out)["attrs"]["pooling"] == "max" and not partial_path(out).exists()


def test_incomplete_file_is_never_read_as_complete(vgg, folder, tmp_path):
    out = tmp_path / "f.h5"
    dump(vgg, folder, ["block2_pool"], out, image_size=32, batch_size=8)
    with h5py.File(out, "r+") as f:
        del f.attrs[hdf5.COMPLETE]
    assert not hdf5.is_complete(out)
    with pytest.raises(UserError, match="incomplete"):
        read(out)


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])  # nearest: Keras' load_img default
def test_pooling_is_taken_over_the_nhwc_tap(resnet18, folder, tmp_path, interpolation):
    source = open_data(folder)
    pil = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST}[interpolation]
    images = np.stack([np.asarray(Image.open(folder / p).convert("RGB").resize((32, 32), pil))
                       for p in source.paths[:4]])
    ref = np.asarray(resnet18.features(images, ["stage3"])["stage3"])  # (4, 2, 2, 256), NHWC
    expected = {"flatten": ref.reshape(4, -1), "avg": ref.mean(axis=(1, 2)), "max": ref.max(axis=(1, 2))}
    for pool, want in expected.items():
        got = read(dump(resnet18, folder, ["stage3"], tmp_path / f"{pool}.h5", pool=pool, image_size=32,
                        resize="direct", batch_size=4, interpolation=interpolation).out)
        assert got["attrs"]["interpolation"] == interpolation
        np.testing.assert_allclose(got["features"]["stage3"][:4], want, rtol=1e-5, atol=1e-5)


def test_several_taps_one_pass_and_float16(resnet18, folder, tmp_path):
    taps = ["stage4", "stage2", "pre_logits"]
    multi = read(dump(resnet18, folder, taps, tmp_path / "multi.h5", image_size=32, batch_size=8,
                      dtype="float16").out)
    with h5py.File(tmp_path / "multi.h5", "r") as f:
        assert {"stage2", "stage4", "pre_logits", "labels", "label_names", "paths"} <= set(f)
        assert "features" not in f and f["stage2/features"].dtype == np.float16
        assert f["stage2"].attrs["pooling"] == "avg" and f["pre_logits"].attrs["pooling"] == "none"
    single = read(dump(resnet18, folder, ["pre_logits"], tmp_path / "one.h5", image_size=32, batch_size=8).out)
    assert single["attrs"]["resize"] == "shorter_center_crop"  # torch weights: torchvision's eval crop
    assert multi["features"]["stage4"].shape == (30, 512) and multi["features"]["stage2"].shape == (30, 128)
    np.testing.assert_allclose(multi["features"]["pre_logits"], single["features"]["pre_logits"], rtol=1e-3,
                               atol=1e-3)
    np.testing.assert_array_equal(multi["features"]["pre_logits"],
                                  single["features"]["pre_logits"].astype(np.float16))


def test_bfloat16_forward_is_recorded_and_close(resnet18, folder, tmp_path):
    """`--compute-dtype bfloat16`: recorded (and hashed, so a float32 partial is not resumed with it), stored as
    float32 rows within bfloat16's rounding of the float32 forward's."""
    ref = read(dump(resnet18, folder, ["pre_logits"], tmp_path / "f32.h5", image_size=32, batch_size=8).out)
    got = read(dump(resnet18, folder, ["pre_logits"], tmp_path / "bf16.h5", image_size=32, batch_size=8,
                    compute="bfloat16").out)
    assert ref["attrs"]["compute_dtype"] == "float32" and got["attrs"]["compute_dtype"] == "bfloat16"
    assert got["attrs"][hdf5.ARGS_HASH] != ref["attrs"][hdf5.ARGS_HASH]
    a, b = got["features"]["pre_logits"], ref["features"]["pre_logits"]
    assert a.dtype == np.float32 and not np.array_equal(a, b)
    assert np.median(np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)) < 0.05


def test_bad_arguments_are_user_errors(vgg, folder, tmp_path):
    for kwargs, message in (({"pool": "sum"}, "unknown pooling"), ({"dtype": "int8"}, "unknown dtype"),
                            ({"compute": "float16"}, "unknown compute dtype"),
                            ({"batch_size": 16, "buffer_size": 8}, "at least --batch-size"),
                            ({"taps": ["fc9"]}, "has no tap fc9")):
        args = {"taps": ["block1_pool"], **kwargs}
        with pytest.raises(UserError, match=message):
            dump(vgg, folder, out=tmp_path / "f.h5", image_size=32, **args)


def test_a_pack_keeps_its_own_size_policy_and_split(vgg, folder, tmp_path):
    from research.data import pack

    packed = pack.write(folder, tmp_path / "pack.h5", 32, resize="shorter_center_crop", split_test=0.2,
                        progress=False).out
    got = read(dump(vgg, packed, ["block2_pool"], tmp_path / "f.h5", split="test").out)
    attrs = got["attrs"]
    assert (attrs["image_size"], attrs["resize"], attrs["split"]) == (32, "shorter_center_crop", "test")
    assert len(got["paths"]) == 6 and got["attrs"]["split_record"]["test"] == sorted(got["paths"])
    with pytest.raises(UserError, match="holds 32px images"):
        dump(vgg, packed, ["block2_pool"], tmp_path / "g.h5", image_size=64)
