"""The torch-free .pth reader must match torch.load exactly and must never run code from a file."""

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from research.errors import UserError
from research.weights.torch_reader import read_state_dict

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden" / "torchvision"


def _golden(name):
    path = GOLDEN / name
    if not path.exists():
        pytest.skip(f"golden file {path} not present")
    return path


# ---- real torchvision checkpoints (no torch needed) -------------------------------------------------


def test_resnet18_golden():
    sd = read_state_dict(_golden("resnet18_fp16.pth"))
    assert len(sd) == 122  # 62 params + 60 batch-norm buffers
    assert sd["conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["conv1.weight"].dtype == np.float16
    assert sd["fc.weight"].shape == (1000, 512)
    assert sd["bn1.running_var"].shape == (64,)
    assert (sd["bn1.running_var"] > 0).all()
    tracked = sd["layer1.0.bn1.num_batches_tracked"]
    assert tracked.shape == () and tracked.dtype == np.int64
    assert all(v.flags.c_contiguous and v.flags.writeable for v in sd.values())


@pytest.mark.parametrize("name, count, key, shape", [
    ("resnet50_fp16.pth", 320, "layer4.2.conv3.weight", (2048, 512, 1, 1)),
    ("vgg16_notop_fp16.pth", 26, "features.28.weight", (512, 512, 3, 3)),
])
def test_other_goldens(name, count, key, shape):
    sd = read_state_dict(_golden(name))
    assert len(sd) == count
    assert sd[key].shape == shape and sd[key].dtype == np.float16


# ---- round trips against torch -----------------------------------------------------------------------


def _save(torch, obj, path, fmt):
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


def _assert_same(ours, theirs, torch):
    assert list(ours) == list(theirs)
    for key, t in theirs.items():
        t = t.detach()
        want = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
        got = ours[key]
        assert isinstance(got, np.ndarray), key
        assert got.dtype == want.dtype, key
        assert got.shape == want.shape, key
        np.testing.assert_array_equal(got, want, err_msg=key)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_round_trip_matches_torch(tmp_path, fmt, dtype):
    torch = pytest.importorskip("torch")
    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=gen).to(dt)
    sd = {
        "base": base,
        "transposed": base.t(),  # non-contiguous view of the same storage
        "slice": base[2:, 1:4],  # shares storage, non-zero offset, non-contiguous
        "scalar": torch.tensor(3.5, dtype=dt),
        "empty": torch.zeros(0, 4, dtype=dt),
        "param": torch.nn.Parameter(torch.randn(3, 2, generator=gen).to(dt)),
        "steps": torch.tensor(7, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "bytes": torch.arange(5, dtype=torch.uint8),
        "ints": torch.arange(-4, 4, dtype=torch.int32).reshape(2, 4)[:, ::2],
    }
    path = _save(torch, sd, tmp_path / "w.pth", fmt)
    ours = read_state_dict(path)
    _assert_same(ours, torch.load(path, weights_only=True), torch)
    assert ours["base"].dtype == (np.float32 if dtype == "bfloat16" else np.dtype(dtype))
    assert all(v.flags.c_contiguous for v in ours.values())


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_module_state_dict_drops_metadata(tmp_path, fmt):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    path = _save(torch, model.state_dict(), tmp_path / "m.pth", fmt)
    ours = read_state_dict(path)
    assert "_metadata" not in ours and "1.num_batches_tracked" in ours
    _assert_same(ours, torch.load(path, weights_only=True), torch)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_unwraps_training_checkpoint(tmp_path, fmt, wrapper):
    torch = pytest.importorskip("torch")
    sd = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.float16)}
    ckpt = {wrapper: sd, "epoch": 3, "optimizer": {"state": {0: {"m": torch.zeros(9)}}}}
    ours = read_state_dict(_save(torch, ckpt, tmp_path / "c.pth", fmt))
    _assert_same(ours, sd, torch)


def test_new_dtype_via_untyped_storage(tmp_path):
    torch = pytest.importorskip("torch")
    sd = {"u": torch.tensor([1, 60000, 3, 4], dtype=torch.int32).to(torch.uint16)[1:]}
    path = _save(torch, sd, tmp_path / "u.pth", "zip")
    ours = read_state_dict(path)
    assert ours["u"].dtype == np.uint16
    assert ours["u"].tolist() == [60000, 3, 4]


def test_big_endian_zip(tmp_path):
    torch = pytest.importorskip("torch")
    sd = {
        "f": torch.randn(3, 4).t(),
        "h": torch.randn(5).half(),
        "n": torch.tensor(-7),
        "b": torch.randn(2).bfloat16(),
    }
    path = _save(torch, sd, tmp_path / "le.pth", "zip")
    swapped = tmp_path / "be.pth"
    sizes = {"0": 4, "1": 2, "2": 8, "3": 2}  # storages are numbered in pickling order
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(swapped, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            folder, _, leaf = info.filename.rpartition("/")
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif folder.endswith("/data"):
                data = np.frombuffer(data, f"<u{sizes[leaf]}").byteswap().tobytes()
            dst.writestr(info, data)
    ours = read_state_dict(swapped)
    _assert_same(ours, sd, torch)
    assert all(v.dtype.isnative for v in ours.values())


def test_truncated_legacy_file(tmp_path):
    torch = pytest.importorskip("torch")
    path = _save(torch, {"w": torch.ones(100)}, tmp_path / "l.pth", "legacy")
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(UserError, match="truncated"):
        read_state_dict(path)


# ---- refusing code execution ---------------------------------------------------------------------------


class _Evil:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _evil_pickle(tmp_path):
    marker = tmp_path / "pwned"
    return pickle.dumps({"w": _Evil(f"echo pwned > {marker}")}, protocol=2), marker


def _assert_refused(path, marker):
    with pytest.raises(UserError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert "refusing to unpickle" in message and "system" in message and str(path) in message
    assert "\n" not in message
    assert not marker.exists()


def test_refuses_os_system_in_plain_pickle(tmp_path):
    data, marker = _evil_pickle(tmp_path)
    path = tmp_path / "evil.pth"
    path.write_bytes(data)
    _assert_refused(path, marker)


def test_refuses_os_system_in_zip(tmp_path):
    data, marker = _evil_pickle(tmp_path)
    path = tmp_path / "evil_zip.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data)
        zf.writestr("archive/byteorder", "little")
    _assert_refused(path, marker)


def test_refuses_os_system_after_legacy_header(tmp_path):
    data, marker = _evil_pickle(tmp_path)
    path = tmp_path / "evil_legacy.pth"
    header = [0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}]
    path.write_bytes(b"".join(pickle.dumps(x, protocol=2) for x in header) + data)
    _assert_refused(path, marker)


# ---- bad files -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content, match", [
    (b"", "empty file"),
    (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not a PyTorch checkpoint"),
    (b"\x89HDF\r\n\x1a\n" + bytes(100), "HDF5"),
    (b"\x80\x02" + bytes(50), "corrupt or truncated"),
    (pickle.dumps([1, 2, 3], protocol=2), "not a PyTorch checkpoint"),
])
def test_bad_bytes(tmp_path, content, match):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(UserError, match=match):
        read_state_dict(path)


@pytest.mark.parametrize("body, match", [
    (b"\x96" + (10**6).to_bytes(8, "little") + b"abc", "(?i)bytearray8"),  # forged buffer length
    (b"}r" + (10**6).to_bytes(4, "little") + b".", "memo index"),  # forged memo slot
])
def test_forged_pickle_fields(tmp_path, body, match):
    path = tmp_path / "forged.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02" + body)
    with pytest.raises(UserError, match=match):
        read_state_dict(path)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_state_dict(tmp_path / "nope.pth")


def test_truncated_zip(tmp_path):
    data = _golden("resnet18_fp16.pth").read_bytes()
    for cut in (100, len(data) // 2, len(data) - 10):
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(data[:cut])
        with pytest.raises(UserError, match="zip"):
            read_state_dict(path)


def test_missing_storage_record(tmp_path):
    path = tmp_path / "holey.pth"
    with zipfile.ZipFile(_golden("resnet18_fp16.pth")) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith("/data/3"):
                dst.writestr(info, src.read(info))
    with pytest.raises(UserError, match=r"missing storage record '.*data/3'"):
        read_state_dict(path)


def test_zip_without_pickle(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(UserError, match="no data.pkl"):
        read_state_dict(path)


def test_top_level_must_be_a_dict(tmp_path):
    torch = pytest.importorskip("torch")
    path = _save(torch, [torch.ones(2)], tmp_path / "list.pth", "zip")
    with pytest.raises(UserError, match="not a state_dict"):
        read_state_dict(path)
