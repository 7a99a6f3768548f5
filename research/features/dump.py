"""`research features`: one forward pass over a dataset, features at chosen taps into one resumable HDF5 file.

Why it is built this way:
- **Resumable.** Rows go to `OUT.partial`; after each flushed buffer a `progress` attribute is updated and the
  file flushed, so a killed run (SIGKILL included) resumes from the last flush. Flushes fall on batch
  boundaries, so a resumed run feeds the model exactly the batches an uninterrupted one would, and the
  `features` matrix comes out byte-identical. The partial holds a hash of everything that defines its content
  (weights, taps, pooling, size, resize, listing, split, dtype, batch size, device count); a resume with other
  arguments is refused. The file is renamed to OUT only once `complete` is set.
- **On device.** Pooling and the storage dtype cast happen inside the jitted forward; the batch is sharded over
  the local devices on a 1-D mesh (the last batch padded to a multiple of the device count, padding dropped).
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import logging
import os
import queue
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from research import io, xla
from research.data import loader
from research.data.decode import SkipLog
from research.data.resize import ResizePolicy, check_size
from research.data.resize import policy as make_policy
from research.data.splits import given as given_split
from research.errors import UserError
from research.features import hdf5

log = logging.getLogger(__name__)

POOLS = ("avg", "max", "flatten", "cls", "cls+avg")
TOKEN_POOLS = ("cls", "cls+avg")  # token taps (N, T, C) only; `avg`, `max` there pool the patch tokens
STORE_DTYPES = {"float32": jnp.float32, "float16": jnp.float16}
COMPUTE_DTYPES = ("float32", "bfloat16")  # the forward's; bfloat16 for accelerators, off the reference by its rounding
DEFAULT_RESIZE = {"torch": "shorter_center_crop", "caffe": "direct"}  # torchvision eval crop; Keras target_size
DEFAULT_IMAGE_SIZE = 224

PARTIAL_SUFFIX = ".partial"
SPACE_MARGIN = 1 << 20  # bytes kept free beyond a flush's estimate, for HDF5's metadata


@dataclasses.dataclass
class DumpResult:
    out: Path
    count: int
    dims: dict
    skipped: int
    resumed_from: int
    seconds: float

    def summary(self) -> str:
        """The line `research features` prints."""
        dims = ", ".join(f"{t} {d}" for t, d in self.dims.items())
        resumed = f"; resumed at row {self.resumed_from}" if self.resumed_from else ""
        rate = (self.count - self.resumed_from) / self.seconds if self.seconds > 0 else 0.0
        return (f"wrote {self.count} rows ({dims}); {self.skipped} skipped{resumed}; {rate:.0f} img/s "
                f"-> {self.out}")


@dataclasses.dataclass
class Plan:
    """What to compute: the records in load order and how their pixels are made."""

    order: np.ndarray
    image_size: int
    policy: ResizePolicy
    policy_arg: object  # what the loader is asked for (None: a pack's stored policy)
    split: str
    split_record: dict | None
    shard: list | None = None  # [i, n] for one process's block


def dump(weights, data, taps, out, pool: str | None = None, image_size: int | None = None, resize: str | None = None,
         batch_size: int = 64, buffer_size: int = 1000, split: str | None = None, dtype: str = "float32",
         overwrite: bool = False, workers: int | None = None, progress: bool | None = None,
         shard: tuple[int, int] | None = None, interpolation: str | None = None, decode: str = "default",
         compute: str = "float32") -> DumpResult:
    """Features of `data` (a `research.data.open` spec) at `taps` of `weights` (anything `research.load` takes,
    or a Bundle) into the HDF5 file `out`; see the module docstring. `progress` None: a bar on a terminal.
    `pool` None: `avg` for spatial taps; for token taps `cls` where the model has a class token, else `avg`
    (`tap_pooling`).

    `shard=(i, n)` (one process of n) dumps only the i-th contiguous block of the records; `hdf5.stitch` joins
    the n shard files into one whose `features` is a virtual dataset over them. `interpolation` is the resize
    filter for image files (Keras' `load_img` and `flow_from_directory` use nearest; torchvision bilinear);
    `decode="fast"` decodes JPEGs at a reduced DCT scale (research.data.resize). `compute="bfloat16"` runs the
    forward in bfloat16 (recorded; the stored rows are cast to `dtype` as ever).

    The output's lock (`OUT.lock`) is held from before the partial is opened to after the rename, so a second
    run on the same `out` is refused at once and changes nothing."""
    out = _check_out(Path(out), overwrite)
    _check_numbers(pool, dtype, batch_size, buffer_size, compute)
    with io.lock(out):
        return _dump(weights, data, taps, _check_out(out, overwrite), pool, image_size, resize, batch_size,
                     buffer_size, split, dtype, overwrite, workers, progress, shard, interpolation, decode, compute)


def _dump(weights, data, taps, out, pool, image_size, resize, batch_size, buffer_size, split, dtype, overwrite,
          workers, progress, shard, interpolation, decode, compute) -> DumpResult:
    """`dump` once it holds the output's lock."""
    import research
    from research import data as datasets

    bundle = weights if isinstance(weights, research.Bundle) else research.load(weights)
    taps = bundle.spec.check_taps([taps] if isinstance(taps, str) else taps)
    source = datasets.open(data)
    plan = _shard(_plan(bundle, source, image_size, resize, split, interpolation, decode), shard)
    loader.check(source, plan.image_size, plan.policy_arg)  # e.g. --decode gpu without a GPU: before any output
    bundle.check_images(np.zeros((1, plan.image_size, plan.image_size, 3), np.uint8))
    devices = Devices()
    run = Runner(bundle, taps, pool, dtype, devices, compute)
    pooling = {t: tap_pooling(pool, len(s), run.prefix) for t, s in run.shapes(plan.image_size, pooled=False).items()}
    attrs = _provenance(bundle, source, taps, pooling, pool, plan, dtype, batch_size, devices.count, compute)
    partial = partial_path(out)
    start = time.perf_counter()
    with io.writing(partial), _open_partial(partial, attrs, overwrite) as f:
        state = _prepare(f, run, plan, source, taps, attrs, pooling, dtype)
        _fill(f, state, run, source, plan, batch_size, buffer_size, workers, progress)
        _finish(f, state, source.spec)
    with io.writing(out):
        os.replace(partial, out)
    dims = {t: int(s[1]) for t, s in run.shapes(plan.image_size).items()}
    return DumpResult(out, state.rows, dims, len(state.skips), state.resumed_from, time.perf_counter() - start)


def partial_path(out) -> Path:
    """Where `out` is written until it is complete."""
    out = Path(out)
    return out.with_name(out.name + PARTIAL_SUFFIX)


def _check_out(out: Path, overwrite: bool) -> Path:
    return io.check_out(out, overwrite, ours=hdf5.is_features_file, what="a features file")


def _check_numbers(pool: str, dtype: str, batch_size: int, buffer_size: int, compute: str = "float32") -> None:
    if pool is not None and pool not in POOLS:
        raise UserError(f"unknown pooling {pool!r}; known: {', '.join(POOLS)}")
    if dtype not in STORE_DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; known: {', '.join(STORE_DTYPES)}")
    if compute not in COMPUTE_DTYPES:
        raise UserError(f"unknown compute dtype {compute!r}; known: {', '.join(COMPUTE_DTYPES)}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {batch_size}")
    if buffer_size < batch_size:
        raise UserError(f"--buffer-size ({buffer_size}) must be at least --batch-size ({batch_size}), since "
                        f"rows are flushed a whole batch at a time")


def _plan(bundle, source, image_size, resize, split, interpolation: str | None = None,
          decode: str = "default") -> Plan:
    """The records and pixels: a pack keeps its stored size and policy; folders default by preprocessing."""
    order, split_name, record = _select(source, split)
    if source.kind == "pack":
        stored = make_policy(source.attrs["resize"], source.attrs["interpolation"], source.attrs.get("decode", "default"),
                             source.attrs.get("crop_pct"))
        return Plan(order, int(image_size or source.attrs["image_size"]), stored, resize, split_name, record)
    own = bundle.meta.get("input")  # the weights' own eval transform (a timm snapshot's pretrained_cfg)
    if own:
        size = check_size(own["size"] if image_size is None else int(image_size))
        chosen = make_policy(resize or _eval_resize(own), interpolation or own.get("interpolation", "bilinear"),
                             decode, own.get("crop_pct"))
        return Plan(order, size, chosen, chosen, split_name, record)
    size = check_size(DEFAULT_IMAGE_SIZE if image_size is None else int(image_size))
    chosen = make_policy(resize or DEFAULT_RESIZE.get(bundle.preprocessing, "direct"), interpolation or "bilinear",
                         decode)
    return Plan(order, size, chosen, chosen, split_name, record)


def _eval_resize(own: dict) -> str:
    """timm's crop mode as our resize: `center` is ours; the others are only approximated, and said so."""
    mode = own.get("crop_mode", "center")
    if mode != "center":
        log.warning("the weights' eval transform crops in timm's %r mode, which is approximated by a centre crop "
                    "of the shorter side; pass --resize to choose", mode)
    return "shorter_center_crop"


def _shard(plan: Plan, shard) -> Plan:
    """The i-th of n contiguous blocks of the plan's records; contiguous so that shard files stack in order."""
    if shard is None:
        return plan
    i, n = (int(x) for x in shard)
    if not 0 <= i < n:
        raise UserError(f"shard {i} is not in [0, {n})")
    return dataclasses.replace(plan, order=np.array_split(plan.order, n)[i], shard=[i, n])


def _select(source, split):
    """(record indices, split name, split record); every record when no split is asked for."""
    if split is None:
        return np.arange(len(source), dtype=np.int64), "all", None
    if source.split is None:
        raise UserError(f"{source.spec} has no train/validation/test splits; use split folders, or a pack made "
                        f"with --split-test/--split-val, or drop --split")
    chosen = given_split(source.split, source.paths)
    order = chosen.indices(split)
    if not len(order):
        raise UserError(f"{source.spec} has no {split} records")
    return order, split, {split: chosen.record[split], "seed": chosen.record["seed"]}


class Devices:
    """The local devices as a 1-D data mesh: batches split along it, weights replicated."""

    def __init__(self):
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        devices = jax.local_devices()
        mesh = Mesh(np.array(devices), ("data",))
        self.count = len(devices)
        self.batch = NamedSharding(mesh, PartitionSpec("data"))
        self.replicated = NamedSharding(mesh, PartitionSpec())

    def put(self, images):
        """Pads to a multiple of the device count and shards; returns (array, real rows). `images` may be a
        jax.Array already on a device (--decode gpu), padded there."""
        n = len(images)
        pad = -n % self.count
        if pad:
            xp = jnp if isinstance(images, jax.Array) else np
            images = xp.concatenate([images, xp.zeros((pad, *images.shape[1:]), images.dtype)])
        return jax.device_put(images, self.batch), n


def tap_pooling(pool: str | None, ndim: int, prefix: tuple = ()) -> str:
    """How a tap of `ndim` dims is pooled under `pool` (None: the default); `prefix` names the model's tokens
    before the patch tokens (registry.Family.prefix_tokens), e.g. ("cls", "reg1", ...)."""
    if ndim == 2:
        return "none"
    if ndim == 4:
        if pool in TOKEN_POOLS:
            raise UserError(f"pooling {pool!r} is for token taps (a Vision Transformer's); use avg, max or flatten")
        return pool or "avg"
    has_cls = tuple(prefix[:1]) == ("cls",)
    chosen = pool or ("cls" if has_cls else "avg")
    if chosen in TOKEN_POOLS and not has_cls:
        raise UserError(f"pooling {chosen!r} needs a class token, and this model has none; use avg")
    return chosen


def pool_tap(value, pool: str | None, prefix: tuple = ()):
    """Spatial (NHWC) taps pooled over H, W or flattened in NHWC order (as Keras' Flatten); token taps (N, T, C)
    as the class token, the mean (or max) of the patch tokens (the prefix tokens left out), both concatenated
    (DINOv2's linear probe), or flattened whole; vectors as they are."""
    how = tap_pooling(pool, value.ndim, prefix)
    if how == "none":
        return value
    if how == "flatten":
        return value.reshape(value.shape[0], -1)
    if value.ndim == 4:
        return value.mean(axis=(1, 2)) if how == "avg" else value.max(axis=(1, 2))
    patches = value[:, len(prefix):]
    pooled = {"cls": lambda: value[:, 0], "avg": lambda: patches.mean(axis=1), "max": lambda: patches.max(axis=1),
              "cls+avg": lambda: jnp.concatenate([value[:, 0], patches.mean(axis=1)], axis=-1)}
    return pooled[how]()


def prefix_tokens(spec) -> tuple:
    """The tokens before the patch tokens in the spec's token taps; () for families without any."""
    hook = spec.record.prefix_tokens
    return tuple(hook(spec)) if hook else ()


@functools.lru_cache(maxsize=32)
def _pooled_forward(spec, taps, preprocessing, pool, dtype, compute="float32"):
    """The bundle's forward with pooling and the storage cast fused in; one per (spec, taps, pool, dtype,
    compute)."""
    from research.bundle import forward_body, forward_fn

    forward = forward_body(spec, taps, compute, preprocessing)
    prefix = prefix_tokens(spec)

    @xla.jit
    def run(variables, images):
        return {t: pool_tap(v, pool, prefix).astype(STORE_DTYPES[dtype])
                for t, v in forward(variables, images).items()}

    return forward_fn(spec, taps, compute, preprocessing), run


class Runner:
    """uint8 batches -> {tap: numpy (B, D)}, sharded over `devices`."""

    def __init__(self, bundle, taps, pool, dtype, devices: Devices, compute: str = "float32"):
        self.raw, self.fn = _pooled_forward(bundle.spec, taps, bundle.preprocessing, pool, dtype, compute)
        self.prefix = prefix_tokens(bundle.spec)
        self.devices = devices
        self.variables = bundle.placed(devices.replicated)
        self._shapes = {}

    def __call__(self, images) -> dict:
        return self.collect(self.submit(images))

    def submit(self, images):
        """Dispatches the transfer, the forward and the copy back, without waiting for any of them."""
        array, n = self.devices.put(images)
        outputs = self.fn(self.variables, array)
        for value in outputs.values():
            value.copy_to_host_async()
        return outputs, n

    @staticmethod
    def collect(submitted) -> dict:
        """{tap: numpy rows} of a `submit`, once the device has them."""
        outputs, n = submitted
        return {t: np.asarray(v)[:n] for t, v in outputs.items()}

    def shapes(self, size: int, pooled: bool = True) -> dict:
        """{tap: output shape} for a batch of one, pooled or as the model gives it; traced once, not computed."""
        if (size, pooled) not in self._shapes:
            probe = jax.ShapeDtypeStruct((1, size, size, 3), jnp.uint8)
            fn = self.fn if pooled else self.raw
            self._shapes[size, pooled] = {t: s.shape for t, s in jax.eval_shape(fn, self.variables, probe).items()}
        return self._shapes[size, pooled]


def _provenance(bundle, source, taps, pooling: dict, pool, plan, dtype, batch_size, device_count,
                compute: str = "float32") -> dict:
    """The root attributes; `args_hash` covers exactly what decides the bytes of the features (a float32 forward
    adds nothing to it, so partials started before `compute` existed still resume)."""
    from research import __version__

    weights = bundle.meta.get("source", {})
    listing = hashlib.sha256(json.dumps([source.class_names, [source.paths[i] for i in plan.order],
                                         source.labels[plan.order].tolist()]).encode()).hexdigest()
    content = {"model": bundle.spec.to_dict(), "weights_sha256": weights.get("sha256"), "taps": list(taps),
               "pooling": pooling, "preprocessing": bundle.preprocessing,
               "resize_policy": plan.policy.record(plan.image_size), "listing_sha256": listing,
               "split": plan.split, "shard": plan.shard, "dtype": dtype, "batch_size": batch_size,
               "device_count": device_count, "format_version": hdf5.FORMAT_VERSION,
               **({"compute_dtype": compute} if compute != "float32" else {})}
    args_hash = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return {"format": hdf5.FORMAT, "format_version": hdf5.FORMAT_VERSION, "arch": bundle.spec.arch,
            "layout": bundle.spec.layout, "model": bundle.spec.to_dict(), "weights_sha256": weights.get("sha256"),
            "weights_file": weights.get("file"), "taps": list(taps),
            **({"tap": taps[0], "pooling": pooling[taps[0]]} if len(taps) == 1
               else {"pooling": pool or _summary(pooling)}),
            "preprocessing": bundle.preprocessing, "image_size": plan.image_size, "resize": plan.policy.method,
            "interpolation": plan.policy.interpolation, "resize_policy": plan.policy.record(plan.image_size),
            "dataset_spec": source.spec, "listing_sha256": listing, "split": plan.split,
            "split_record": plan.split_record, "shard": plan.shard, "research_version": __version__,
            "dtype": dtype, "compute_dtype": compute, "batch_size": batch_size, "device_count": device_count,
            hdf5.ARGS_HASH: args_hash}


def _summary(pooling: dict) -> str:
    """The root `pooling` of a several-tap file without an explicit --pool: the poolings the taps got."""
    return ",".join(sorted(set(pooling.values()) - {"none"})) or "none"


@dataclasses.dataclass
class State:
    """Where the writing stands: rows flushed, the next position in the plan's order, files skipped."""

    rows: int
    position: int
    resumed_from: int
    skips: dict  # relative path -> reason
    names: dict  # tap -> dataset name


@contextlib.contextmanager
def _open_partial(partial: Path, attrs: dict, overwrite: bool):
    """The partial file: continued when it was started with the same arguments, else written afresh."""
    mode = "w"
    if partial.exists() and not overwrite:
        found = _started_hash(partial)
        if found is not None and found != attrs[hdf5.ARGS_HASH]:
            raise UserError(f"{partial} was started with other arguments; delete it, or pass --overwrite to "
                            f"start again")
        if found is None:
            log.warning("%s holds nothing to resume from; starting again", partial)
        mode = "w" if found is None else "r+"
    with io.hdf5_file(partial, mode, keep=True, **({"track_order": True} if mode == "w" else {})) as f:
        yield f


def _started_hash(partial: Path) -> str | None:
    """The arguments hash of a partial that got as far as its first progress mark and is whole, else None.

    Whole: every allocated chunk lies inside the file and the last flushed row reads back. A write that failed
    (a full disk) can leave HDF5 metadata pointing past the end of the file; such a partial is started again."""
    import h5py

    try:
        with h5py.File(partial, "r") as f:
            if hdf5.PROGRESS not in f.attrs:
                return None
            rows, size = int(f.attrs[hdf5.PROGRESS]), os.path.getsize(partial)
            datasets = [f[name] for name in _dataset_names(f)]
            for d in datasets:
                _check_chunks(d, size)
                if rows and d.name != f"/{hdf5.LABEL_NAMES}":
                    d[rows - 1]
            return hdf5.attributes(f).get(hdf5.ARGS_HASH)
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        log.warning("%s is damaged (%s)", partial, str(e).splitlines()[0] if str(e) else type(e).__name__)
        return None


def _dataset_names(f) -> list[str]:
    names = []
    f.visititems(lambda name, node: names.append(name) if hasattr(node, "shape") else None)
    return names


def _check_chunks(dataset, file_size: int) -> None:
    """OSError unless every chunk the dataset has allocated lies inside the file."""
    if dataset.chunks is None:
        return
    for i in range(dataset.id.get_num_chunks()):
        info = dataset.id.get_chunk_info(i)
        if info.byte_offset + info.size > file_size:
            raise OSError(f"chunk {i} of {dataset.name} lies past the end of the file")


def _prepare(f, run: Runner, plan: Plan, source, taps, attrs: dict, pooling: dict, dtype: str) -> State:
    """A resumed partial's state, or a fresh file's datasets and attributes."""
    names = {t: hdf5.features_name(t, taps) for t in taps}
    if hdf5.PROGRESS in f.attrs:
        rows = int(f.attrs[hdf5.PROGRESS])
        position = int(np.flatnonzero(plan.order == f[hdf5.INDEX][rows - 1])[0]) + 1 if rows else 0
        skips = {s["path"]: s["reason"] for s in hdf5.attributes(f)["skipped"]}
        return State(rows, position, rows, skips, names)
    _create(f, run, plan, source, taps, pooling, dtype)
    hdf5.write_attrs(f, {**attrs, "skipped_count": 0, "skipped": [], hdf5.PROGRESS: 0})
    f.flush()
    return State(0, 0, 0, {}, names)


def _create(f, run: Runner, plan: Plan, source, taps, pooling: dict, dtype: str) -> None:
    """Chunked datasets sized for every record; shrunk to the rows kept when complete."""
    import h5py

    n = len(plan.order)
    itemsize = np.dtype(dtype).itemsize
    for tap, shape in run.shapes(plan.image_size).items():
        width = int(shape[1])
        f.create_dataset(hdf5.features_name(tap, taps), shape=(n, width), maxshape=(None, width), dtype=dtype,
                         chunks=(min(n, hdf5.chunk_rows(width, itemsize)), width))
        if len(taps) > 1:
            hdf5.write_attrs(f[tap], {"tap": tap, "pooling": pooling[tap]})
    text = h5py.string_dtype("utf-8")
    for name, kind in ((hdf5.LABELS, np.int32), (hdf5.INDEX, np.int64), (hdf5.PATHS, text)):
        f.create_dataset(name, shape=(n,), maxshape=(None,), dtype=kind, chunks=(min(n, 4096),))
    f.create_dataset(hdf5.LABEL_NAMES, data=np.array(source.class_names, dtype=object), dtype=text)


def _fill(f, state: State, run: Runner, source, plan: Plan, batch_size: int, buffer_size: int, workers,
          progress) -> None:
    """Forward every remaining record; a `_Sink` reads the rows back and flushes whenever another batch would
    overfill the buffer, at the same boundaries a serial run flushes at.

    Every stage overlaps the others: the loader decodes ahead in its workers, this thread dispatches each batch's
    transfer and forward without waiting for them, and the sink's thread waits for the device and writes."""
    from tqdm import tqdm

    skips = SkipLog()
    stream = loader.batches(source, plan.order[state.position:], batch_size, plan.image_size, plan.policy_arg,
                            workers=workers, skips=skips)
    with tqdm(total=len(plan.order), initial=state.position, unit="img", desc="features", dynamic_ncols=True,
              disable=None if progress is None else not progress) as bar:
        with _Sink(f, state, run, source, skips, batch_size, buffer_size) as sink:
            for batch in stream:
                sink.put(batch, run.submit(batch["images"]))
                bar.update(len(batch["index"]))
        bar.update(len(plan.order) - bar.n)


class _Sink:
    """The rows' way out, on one thread: it takes the dispatched batches in order, waits for each one's rows and
    flushes a full buffer, while the caller loads and dispatches the next. At most `depth` batches wait for it,
    which bounds how far the device runs ahead of the disk; and a loader stalled on a slow file never holds back
    rows already computed.

    A flush's error (a full disk) is raised in the caller at its next `put` or on leaving. Leaving on the
    caller's error lets a flush in progress finish, so the partial is never closed under a write, and drops the
    rows not yet flushed, as a killed run would."""

    POLL = 0.1  # seconds between looks at the other side

    def __init__(self, f, state: State, run: Runner, source, skips: SkipLog, batch_size: int, buffer_size: int,
                 depth: int = 2):
        self.f, self.state, self.run, self.source, self.skips = f, state, run, source, skips
        self.batch_size, self.buffer_size = batch_size, buffer_size
        self.queue = queue.Queue(depth)
        self.error, self.stop, self.done = None, threading.Event(), object()
        self.thread = threading.Thread(target=self._drain, name="features-sink", daemon=True)
        self.thread.start()

    def put(self, batch, submitted) -> None:
        self._offer((batch, submitted))
        self._raise()

    def _offer(self, item) -> None:
        """Queues `item` once there is room, unless the thread has ended (on an error)."""
        while self.thread.is_alive():
            try:
                return self.queue.put(item, timeout=self.POLL)
            except queue.Full:
                continue

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _drain(self) -> None:
        pending = []
        try:
            while not self.stop.is_set():
                try:
                    item = self.queue.get(timeout=self.POLL)
                except queue.Empty:
                    continue
                if item is self.done:
                    return self._flush(pending)
                batch, submitted = item
                pending.append((batch, self.run.collect(submitted)))
                if sum(len(b["index"]) for b, _ in pending) + self.batch_size > self.buffer_size:
                    self._flush(pending)
                    pending = []
        except BaseException as e:  # handed to the caller's thread
            self.error = e

    def _flush(self, pending: list) -> None:
        _flush(self.f, self.state, pending, self.source, dict(self.skips.items()))

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        if kind is None:
            self._offer(self.done)
        else:
            self.stop.set()
        self.thread.join()
        if kind is None:
            self._raise()
        return False


def _flush(f, state: State, pending: list, source, skips: dict) -> None:
    """Rows first, then the progress mark, each followed by a flush, so progress never runs ahead of rows."""
    if not pending:
        return
    index = np.concatenate([b["index"] for b, _ in pending])
    _check_space(f, state, len(index))
    lo, hi = state.rows, state.rows + len(index)
    for tap, name in state.names.items():
        f[name][lo:hi] = np.concatenate([out[tap] for _, out in pending])
    f[hdf5.LABELS][lo:hi] = np.concatenate([b["labels"] for b, _ in pending])
    f[hdf5.INDEX][lo:hi] = index
    f[hdf5.PATHS][lo:hi] = np.array([source.paths[i] for i in index], dtype=object)
    f.flush()
    state.skips.update(skips)
    state.rows = hi
    hdf5.write_attrs(f, {**_skip_attrs(state), hdf5.PROGRESS: hi})
    f.flush()


def _check_space(f, state: State, rows: int) -> None:
    """Stops with the partial whole when the disk cannot take the next flush: HDF5 leaves a file it could not
    finish writing damaged, so the space is asked of the disk first. A flush may allocate a new chunk per
    dataset and rewrite the attributes, hence the margin."""
    widths = [_row_bytes(f[name]) for name in state.names.values()]
    chunks = sum(f[name].chunks[0] * w for name, w in zip(state.names.values(), widths))
    need = rows * (sum(widths) + 64) + chunks + len(str(state.skips)) * 2 + SPACE_MARGIN
    path = Path(f.filename)
    if io.free_bytes(path.parent) < need:
        raise UserError(f"cannot write {path}: {io.ADVICE[errno.ENOSPC]}, which resumes at row {state.rows} "
                        f"(the next {rows} rows need about {need / 2**20:.1f} MiB; "
                        f"{io.free_bytes(path.parent) / 2**20:.1f} MiB are free)")


def _row_bytes(dataset) -> int:
    return int(np.prod(dataset.shape[1:], dtype=np.int64)) * dataset.dtype.itemsize


def _skip_attrs(state: State) -> dict:
    return {"skipped_count": len(state.skips),
            "skipped": [{"path": p, "reason": r} for p, r in sorted(state.skips.items())]}


def _finish(f, state: State, skips_source: str) -> None:
    """Shrinks the datasets to the rows kept, then marks the file complete: the last thing written."""
    if not state.rows:
        raise UserError(f"{skips_source}: none of its images could be read")
    for name in (*state.names.values(), hdf5.LABELS, hdf5.INDEX, hdf5.PATHS):
        f[name].resize(state.rows, axis=0)
    hdf5.write_attrs(f, _skip_attrs(state))
    f.flush()
    f.attrs[hdf5.COMPLETE] = True
    f.flush()
