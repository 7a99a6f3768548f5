"""Read PyTorch `.pth` state_dicts into numpy, without torch and without trusting pickle.

Why not `torch.load`: torch is a multi-gigabyte dependency needed only for this one file format, and
pickle will call anything a file names. Here the unpickler resolves an allow-list of globals only, each
mapped to a small local stand-in, so a checkpoint can describe dicts and tensors but cannot run code.
Each pickle's opcodes are walked once before unpickling, because CPython's C unpickler trusts forged
lengths and memo indices far enough to allocate gigabytes.

Two layouts are read:

- zip (the default since torch 1.6): `<prefix>/data.pkl` holds the object; each storage it references by
  persistent id `('storage', storage_type, key, location, numel)` is the raw record `<prefix>/data/<key>`,
  in the byte order named by `<prefix>/byteorder` (little when absent).
- legacy (`_use_new_zipfile_serialization=False`): consecutive pickles -- magic number, protocol version,
  sys-info dict, the object (persistent ids gain a sixth field, an optional storage view), the list of
  storage keys -- then, per key, an int64 little-endian element count and the little-endian raw bytes.

The pre-1.0 tar layout and TorchScript archives are refused.

Dtypes come back as stored (float16 stays float16; callers upcast), except bfloat16: numpy has no such
type, so it is widened to float32 by shifting its 16 bits into the top half of a 32-bit word. That is
exact, because bfloat16 is float32 with the low 16 mantissa bits dropped.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import pickletools
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from research.errors import UserError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# Zero strides let a few stored bytes claim an enormous tensor; no real weight tensor comes near this.
_MAX_TENSOR_BYTES = 1 << 38
# What a file may make us allocate: its tensors' bytes (and, for zip files, the decompressed size of the records
# read) may be at most this many times the file's size (torch stores records uncompressed; tensors sharing a
# storage count once each), never below _MIN_BUDGET, and never more than half the memory available.
_SIZE_FACTOR = 8
_MIN_BUDGET = 64 << 20
_MAX_PICKLE_BYTES = 64 << 20  # a state_dict's pickle is kilobytes; data.pkl is read no further than this


class _DType(NamedTuple):
    """A torch dtype, reduced to how its bytes are viewed in numpy."""

    name: str
    code: str  # numpy type code without byte order; bfloat16 is viewed as raw "u2"

    @property
    def itemsize(self) -> int:
        return np.dtype(self.code).itemsize

    def numpy(self, byteorder: str) -> np.dtype:
        return np.dtype(self.code).newbyteorder(byteorder)


_DTYPES = {
    d.name: d
    for d in (
        _DType("float64", "f8"),
        _DType("float32", "f4"),
        _DType("float16", "f2"),
        _DType("bfloat16", "u2"),
        _DType("int64", "i8"),
        _DType("int32", "i4"),
        _DType("int16", "i2"),
        _DType("int8", "i1"),
        _DType("uint8", "u1"),
        _DType("bool", "?"),
        _DType("uint16", "u2"),
        _DType("uint32", "u4"),
        _DType("uint64", "u8"),
    )
}

# The legacy typed-storage classes torch still names in pickles, and the dtype each one implies.
_STORAGE_CLASSES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


class _StorageType(NamedTuple):
    """Stand-in for `torch.FloatStorage` and friends: only ever a tag inside a persistent id."""

    dtype: _DType


class _StorageRef(NamedTuple):
    """Which stored blob a tensor reads, and from which element on (non-zero only for legacy views)."""

    key: str
    dtype: _DType
    numel: int
    offset: int = 0


class _TensorRef(NamedTuple):
    """A tensor as the pickle describes it; its bytes are read only if the tensor is returned.

    Tuples, so a crafted pickle cannot mutate one after construction.
    """

    storage: _StorageRef
    dtype: _DType
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


class _Malformed(Exception):
    """Raised while unpickling; turned into a UserError naming the file."""


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor_ref(storage: Any, dtype: Any, offset: Any, size: Any, stride: Any) -> _TensorRef:
    """Check what the pickle passed before trusting it for pointer arithmetic later."""
    if not isinstance(storage, _StorageRef) or not isinstance(dtype, _DType):
        raise _Malformed("tensor is not backed by a storage record")
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
        raise _Malformed("tensor shape or stride is not a sequence")
    if len(size) != len(stride) or not all(_is_count(v) for v in (offset, *size, *stride)):
        raise _Malformed("tensor shape, stride or offset is invalid")
    return _TensorRef(storage, dtype, offset, tuple(size), tuple(stride))


def _refuse_metadata(metadata: Any) -> None:
    """Conjugate/negative view bits would need applying; real-valued weights never carry them."""
    if metadata and any(metadata.values() if isinstance(metadata, dict) else [True]):
        raise _Malformed(f"tensor metadata {metadata!r} is not supported")


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _tensor_ref(storage, getattr(storage, "dtype", None), storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    _refuse_metadata(metadata)
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(
    storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None
):
    """Newer dtypes (uint16...) pair an untyped byte storage with an explicit dtype."""
    _refuse_metadata(metadata)
    return _tensor_ref(storage, dtype, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch", "UntypedStorage"): _StorageType(_DTYPES["uint8"]),
    ("torch.storage", "UntypedStorage"): _StorageType(_DTYPES["uint8"]),
    **{("torch", cls): _StorageType(_DTYPES[dt]) for cls, dt in _STORAGE_CLASSES.items()},
    **{("torch", name): dtype for name, dtype in _DTYPES.items()},
}


class _SafeUnpickler(pickle.Unpickler):
    """Resolves only the allow-listed globals; storages arrive through `resolve_storage`."""

    def __init__(self, file: BinaryIO, name: str, resolve_storage: Callable[[Any], _StorageRef] | None):
        super().__init__(file, encoding="utf-8")
        self._name = name
        self._resolve_storage = resolve_storage

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise UserError(
                f"{self._name}: refusing to unpickle '{module}.{name}' (only tensors and dicts are allowed)"
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        if self._resolve_storage is None:
            raise _Malformed("unexpected storage reference in a header pickle")
        return self._resolve_storage(pid)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())[:200]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class _Bounded:
    """A file view that never reads past `end`, so a forged length cannot demand a huge read."""

    def __init__(self, file: BinaryIO, end: int):
        self._file = file
        self._end = end

    def _left(self, n: int | None) -> int:
        left = max(self._end - self._file.tell(), 0)
        return left if n is None or n < 0 else min(n, left)

    def read(self, n: int | None = -1) -> bytes:
        return self._file.read(self._left(n))

    def readline(self, n: int | None = -1) -> bytes:
        return self._file.readline(self._left(n))

    def tell(self) -> int:
        return self._file.tell()


# Buffer opcodes have no use in a state_dict, and a forged bytearray8 length trips CPython's C unpickler.
_REFUSED_OPCODES = {"BYTEARRAY8", "NEXT_BUFFER", "READONLY_BUFFER"}


def _take_pickle(file: BinaryIO, end: int, name: str) -> bytes:
    """Cut the next pickle out of `file` after walking its opcodes without executing any.

    CPython's C unpickler trusts lengths and memo indices: a forged one makes it allocate and touch
    gigabytes. Checking them here first turns such files into one-line errors.
    """
    start = file.tell()
    try:
        for count, (op, arg, _pos) in enumerate(pickletools.genops(_Bounded(file, end)), start=1):
            if op.name in _REFUSED_OPCODES:
                raise _Malformed(f"refusing pickle opcode {op.name} (only tensors and dicts are allowed)")
            if op.name in ("PUT", "LONG_BINPUT") and arg > count:
                raise _Malformed(f"implausible pickle memo index {arg}")
    except _Malformed as err:
        raise UserError(f"{name}: {err}") from None
    except Exception as err:  # genops reports truncation and garbage as ValueError and friends
        raise UserError(f"{name}: corrupt or truncated pickle data ({_one_line(err)})") from None
    stop = file.tell()
    file.seek(start)
    return file.read(stop - start)


def _unpickle(data: bytes, name: str, resolve_storage: Callable[[Any], _StorageRef] | None = None) -> Any:
    """Untrusted bytes can make pickle fail in any way it likes; all of them mean a bad file."""
    try:
        return _SafeUnpickler(io.BytesIO(data), name, resolve_storage).load()
    except UserError:
        raise
    except _Malformed as err:
        raise UserError(f"{name}: {err}") from None
    except Exception as err:
        raise UserError(f"{name}: corrupt or truncated pickle data ({_one_line(err)})") from None


def _text(value: Any) -> Any:
    """Python 2 era pickles may carry ids and keys as bytes."""
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


def _storage_from_pid(pid: Any, legacy: bool) -> _StorageRef:
    if not isinstance(pid, tuple) or not pid or _text(pid[0]) != "storage":
        kind = _text(pid[0]) if isinstance(pid, tuple) and pid else type(pid).__name__
        raise _Malformed(f"unsupported persistent id {kind!r} (only storages are allowed)")
    fields = pid[1:]
    if len(fields) != (5 if legacy else 4):
        raise _Malformed("malformed storage reference")
    storage_type, key, _location, numel = fields[:4]
    key = _text(key)
    if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not _is_count(numel):
        raise _Malformed("malformed storage reference")
    view = fields[4] if legacy else None
    if view is None:
        return _StorageRef(key, storage_type.dtype, numel)
    # Pre-1.x legacy files could save a slice of a storage: bytes live under the root key.
    if not isinstance(view, tuple) or len(view) != 3 or not all(_is_count(v) for v in view[1:]):
        raise _Malformed("malformed storage view")
    return _StorageRef(key, storage_type.dtype, view[2], view[1])


def _select_state_dict(obj: Any, name: str) -> dict[str, _TensorRef]:
    """Training checkpoints nest the weights one level down; optimiser state and such stay unread."""
    if not isinstance(obj, dict):
        kind = "tensor" if isinstance(obj, _TensorRef) else type(obj).__name__
        raise UserError(f"{name}: top-level object is a {kind}, not a state_dict")
    for wrapper in ("state_dict", "model"):
        inner = obj.get(wrapper)
        if isinstance(inner, dict) and any(isinstance(v, _TensorRef) for v in inner.values()):
            obj = inner
            break
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, _TensorRef)}
    if not tensors:
        raise UserError(f"{name}: no tensors found at the top level of the checkpoint")
    return tensors


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    wide = bits.astype(np.uint32)
    wide <<= 16  # in place, so 0-d arrays stay arrays rather than becoming numpy scalars
    return wide.view(np.float32)


def _materialize(t: _TensorRef, raw: bytes, byteorder: str, name: str, key: str) -> np.ndarray:
    """Apply offset, shape and strides to the storage bytes, then copy into a contiguous native array."""
    dtype = t.dtype.numpy(byteorder)
    out_dtype = np.float32 if t.dtype.name == "bfloat16" else dtype.newbyteorder("=")
    if 0 in t.shape:
        return np.empty(t.shape, dtype=out_dtype)
    if math.prod(t.shape) * dtype.itemsize > _MAX_TENSOR_BYTES:
        raise UserError(f"{name}: tensor '{key}' claims an implausible shape {t.shape}")
    start = t.storage.offset * t.storage.dtype.itemsize
    stop = min(len(raw), start + t.storage.numel * t.storage.dtype.itemsize)
    available = max(stop - start, 0) // dtype.itemsize
    last = t.offset + sum((n - 1) * s for n, s in zip(t.shape, t.stride))
    if last >= available:
        raise UserError(f"{name}: tensor '{key}' reaches past the end of its storage (truncated file?)")
    flat = np.frombuffer(raw, dtype=dtype, count=available, offset=start)
    view = as_strided(flat[t.offset :], shape=t.shape, strides=[s * dtype.itemsize for s in t.stride])
    out = np.array(view, dtype=dtype.newbyteorder("="), order="C", copy=True)
    return _bf16_to_f32(out) if t.dtype.name == "bfloat16" else out


def _budget(path: Path) -> int:
    """The most bytes a file of this size may make us allocate (see _SIZE_FACTOR)."""
    from research.io import available_memory

    return min(max(_SIZE_FACTOR * os.path.getsize(path), _MIN_BUDGET), available_memory() // 2)


def _check_layout(t: _TensorRef, name: str, key: str) -> None:
    """Refuses a tensor whose elements alias each other (a zero stride, or strides that overlap): a few stored
    bytes could otherwise claim gigabytes. Taken in order of stride, each stride must step past everything the
    smaller ones reach, as every dense, transposed or sliced tensor does."""
    reach = 0
    for stride, size in sorted((s, n) for n, s in zip(t.shape, t.stride) if n > 1):
        if stride <= reach:
            raise UserError(f"{name}: tensor '{key}' has overlapping strides {t.stride} for shape {t.shape} "
                            f"(zero-stride and self-overlapping views are refused)")
        reach += (size - 1) * stride


def _check_sizes(tensors: dict[str, _TensorRef], budget: int, name: str) -> None:
    """Before any storage is read: layouts sane, and what the tensors and their storages claim within budget."""
    for key, t in tensors.items():
        _check_layout(t, name, key)
    storages = {t.storage.key: t.storage.numel * t.storage.dtype.itemsize for t in tensors.values()}
    claimed = max(sum(storages.values()), sum(math.prod(t.shape) * t.dtype.itemsize for t in tensors.values()))
    if claimed > budget:
        raise UserError(f"{name}: its tensors claim {claimed:,} bytes, more than a file of its size can hold or "
                        f"this machine can spare ({budget:,}); refused")


def _zip_prefix(zf: zipfile.ZipFile, name: str) -> str:
    """torch names the archive's top folder after the file (older) or 'archive' (newer)."""
    for entry in zf.namelist():
        folder, _, base = entry.rpartition("/")
        if base == "data.pkl" and "/" not in folder:
            return f"{folder}/" if folder else ""
    raise UserError(f"{name}: zip archive has no data.pkl, so it is not a PyTorch checkpoint")


def _zip_byteorder(zf: zipfile.ZipFile, prefix: str, name: str) -> str:
    mark = _zip_record(zf, prefix + "byteorder", name, required=False)
    if mark is None:
        return "<"
    if mark.strip() not in (b"little", b"big"):
        raise UserError(f"{name}: unknown byte order {mark[:20]!r}")
    return "<" if mark.strip() == b"little" else ">"


def _read_zip(path: Path, name: str) -> dict[str, np.ndarray]:
    try:
        zf = zipfile.ZipFile(path)
    except Exception as err:  # zipfile fails in many ways (BadZipFile, OSError, UnicodeDecodeError...)
        raise UserError(f"{name}: truncated or corrupt zip archive ({_one_line(err)})") from None
    with zf:
        prefix = _zip_prefix(zf, name)
        byteorder = _zip_byteorder(zf, prefix, name)
        pickled = _zip_record(zf, prefix + "data.pkl", name, limit=_MAX_PICKLE_BYTES)
        pickled = _take_pickle(io.BytesIO(pickled), len(pickled), name)
        obj = _unpickle(pickled, name, lambda pid: _storage_from_pid(pid, legacy=False))
        tensors = _select_state_dict(obj, name)
        _check_sizes(tensors, _budget(path), name)
        blobs: dict[str, bytes] = {}
        out = {}
        for key, t in tensors.items():
            if t.storage.key not in blobs:
                size = t.storage.numel * t.storage.dtype.itemsize
                blobs[t.storage.key] = _zip_record(zf, f"{prefix}data/{t.storage.key}", name, limit=size,
                                                   exact=True)
            out[key] = _materialize(t, blobs[t.storage.key], byteorder, name, key)
        return out


def _zip_record(zf: zipfile.ZipFile, record: str, name: str, required: bool = True, limit: int = 1 << 10,
                exact: bool = False) -> bytes | None:
    """A record's bytes, decompressed no further than `limit`: a storage is read to its declared size (`exact`),
    anything else refused beyond it, so a deflate bomb costs nothing."""
    try:
        declared = zf.getinfo(record).file_size
        if declared > limit and not exact:
            raise UserError(f"{name}: record '{record}' decompresses past {limit:,} bytes; refused")
        with zf.open(record) as member:
            data = member.read(limit if exact else limit + 1)
        if len(data) > limit:
            raise UserError(f"{name}: record '{record}' decompresses past {limit:,} bytes; refused")
        return data
    except UserError:
        raise
    except KeyError:
        if required:
            raise UserError(f"{name}: missing storage record '{record}'") from None
        return None
    except Exception as err:  # CRC mismatch, bad local header, truncation, bogus flags...
        raise UserError(f"{name}: corrupt zip record '{record}' ({_one_line(err)})") from None


def _read_legacy(path: Path, name: str) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size

        def next_pickle(resolve: Callable[[Any], _StorageRef] | None = None) -> Any:
            return _unpickle(_take_pickle(f, size, name), name, resolve)

        if next_pickle() != _LEGACY_MAGIC:
            raise UserError(f"{name}: not a PyTorch checkpoint (a pickle without torch's magic number)")
        version = next_pickle()
        if version != _LEGACY_PROTOCOL:
            raise UserError(f"{name}: unsupported legacy torch protocol version {version!r}")
        next_pickle()  # sys info: legacy storages are always written little-endian

        root_dtypes: dict[str, _DType] = {}

        def resolve(pid: Any) -> _StorageRef:
            ref = _storage_from_pid(pid, legacy=True)
            root_dtypes.setdefault(ref.key, ref.dtype)
            return ref

        tensors = _select_state_dict(next_pickle(resolve), name)
        _check_sizes(tensors, _budget(path), name)
        keys = next_pickle()
        if not isinstance(keys, list):
            raise UserError(f"{name}: corrupt storage key list")
        needed = {t.storage.key for t in tensors.values()}
        blobs = _read_legacy_blobs(f, size, keys, root_dtypes, needed, name)
    return {key: _materialize(t, blobs[t.storage.key], "<", name, key) for key, t in tensors.items()}


def _read_legacy_blobs(
    f: BinaryIO, size: int, keys: list[Any], root_dtypes: dict[str, _DType], needed: set[str], name: str
) -> dict[str, bytes]:
    """Storages follow the pickles back to back; skip the ones no returned tensor reads."""
    blobs = {}
    for key in map(_text, keys):
        if key not in root_dtypes:
            raise UserError(f"{name}: storage key {key!r} is listed but never referenced")
        header = f.read(8)
        if len(header) < 8:
            raise UserError(f"{name}: truncated before storage '{key}'")
        (count,) = struct.unpack("<q", header)
        if count < 0:
            raise UserError(f"{name}: negative size for storage '{key}'")
        nbytes = count * root_dtypes[key].itemsize
        if f.tell() + nbytes > size:
            raise UserError(f"{name}: truncated inside storage '{key}'")
        if key in needed:
            blobs[key] = f.read(nbytes)
        else:
            f.seek(nbytes, io.SEEK_CUR)
    missing = sorted(needed - blobs.keys())
    if missing:
        raise UserError(f"{name}: missing storage record '{missing[0]}'")
    return blobs


def _sniff(path: Path, name: str) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except FileNotFoundError:
        raise UserError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{name}: is a directory, not a .pth file") from None
    except OSError as err:
        raise UserError(f"{name}: cannot read ({err.strerror or _one_line(err)})") from None
    if not head:
        raise UserError(f"{name}: empty file, not a PyTorch checkpoint")
    return head


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Load a `.pth` state_dict as numpy arrays, keyed as in torch; see the module docstring for rules."""
    name = str(path)
    path = Path(path)
    head = _sniff(path, name)
    if head.startswith(_ZIP_MAGIC):
        return _read_zip(path, name)
    if head.startswith(b"\x80"):
        return _read_legacy(path, name)
    if head.startswith(_HDF5_MAGIC):
        raise UserError(f"{name}: this is an HDF5 file (Keras?), not a PyTorch checkpoint")
    if head[257:262] == b"ustar":
        raise UserError(f"{name}: pre-1.0 tar-format PyTorch checkpoints are not supported")
    raise UserError(f"{name}: not a PyTorch checkpoint (unrecognised header)")
