"""Seeded uint8 batches from a Source: decode, resize, batch, prefetch.

Built on Grain (`grain.MapDataset`), the JAX-native loader: it installs cleanly from PyPI (pinned in
pyproject) and keeps the output order deterministic while decoding on a thread pool. Folders of PROCESS_MIN
images or more decode in worker processes instead (`_in_processes`), which scale with cores where threads stall.

- Folders and TFDS: one element per record (decode + resize); unreadable files are dropped with a warning and named
  in `skips`, and the survivors are batched, so batches stay full.
- Packs: one element per batch, read as one slice (or one sorted point selection when shuffled) from the
  HDF5 file; no decoding. A pack holds one size and policy: asking for another is a UserError.

The order is `indices` as given, or a permutation of them by `seed` when `shuffle` is set; pass a different
seed per epoch (e.g. seed + epoch) for a new order each epoch.
"""
from __future__ import annotations

import collections
import functools
import os
from typing import Iterator

import numpy as np

from research.data.decode import BadImage, SkipLog, decode_image
from research.data.resize import policy as make_policy
from research.data.sources import Source
from research.errors import UserError

PREFETCH_BATCHES = 4
# Folders of fewer images decode on threads: starting a process pool (~0.5 s a worker) would cost more than it saves.
PROCESS_MIN = 256
CHUNK = 8  # records per task sent to a decoding process


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def batches(source: Source, indices=None, batch_size: int = 32, image_size: int | None = None, policy=None,
            seed: int | None = None, shuffle: bool = False, drop_remainder: bool = False,
            workers: int | None = None, prefetch: int = PREFETCH_BATCHES,
            skips: SkipLog | None = None) -> Iterator[dict]:
    """Yields {"images": uint8 (B,N,N,3), "labels": int32 (B,), "index": int64 (B,)}.

    `indices` defaults to every record; `policy` is a ResizePolicy or a method name (default direct, bilinear;
    for a pack, None means as stored). Unreadable files are recorded in `skips` when given. A policy with
    decode="gpu" decodes and resizes on the device (research.data.gpu_decode): `images` is then a jax.Array.
    """
    if batch_size < 1:
        raise UserError(f"batch size must be positive, got {batch_size}")
    order = ordering(len(source) if indices is None else indices, seed, shuffle)
    if workers is not None and workers < 0:
        raise UserError(f"--workers must be positive, got {workers}")
    workers = workers or default_workers()
    if len(order) == 0:
        return iter(())
    chosen = check(source, image_size, policy)
    if source.kind == "pack":
        return _pack_batches(source, order, batch_size, drop_remainder, workers, prefetch)
    skips = skips if skips is not None else SkipLog()
    if chosen.decode == "gpu":
        from research.data import gpu_decode

        return gpu_decode.batches(source, order, batch_size, image_size, chosen, drop_remainder, workers, prefetch,
                                  skips)
    return _file_batches(source, order, batch_size, image_size, chosen, drop_remainder, workers, prefetch, skips)


def check(source: Source, image_size: int | None = None, policy=None):
    """The UserErrors `batches` gives for a request, raised before any record is read, so that a caller can check
    before it opens an output; returns the policy (None for a pack)."""
    if source.kind == "pack":
        _check_pack_request(source, image_size, policy)
        return None
    if image_size is None:
        raise UserError("an image size is needed to load images from a folder")
    chosen = make_policy(policy or "direct")
    if chosen.decode != "default" and (source.kind != "folder" or source.reader is not None):
        raise UserError(f"--decode {chosen.decode} reads image files; {source.spec} is a {source.kind} source")
    if chosen.decode == "gpu":
        from research.data import gpu_decode

        gpu_decode.check()
    return chosen


def ordering(indices, seed: int | None = None, shuffle: bool = False) -> np.ndarray:
    """int64 record indices in load order: as given, or permuted by `seed`. An int n means range(n)."""
    order = np.arange(indices, dtype=np.int64) if np.isscalar(indices) else np.asarray(indices, np.int64)
    if not shuffle:
        return order
    if seed is None:
        raise ValueError("shuffle needs an explicit seed")
    return order[np.random.default_rng(int(seed)).permutation(len(order))]


def shard(indices, process_index: int, process_count: int, even: bool = True) -> np.ndarray:
    """This host's share of `indices`, strided; `even` drops the tail so every host gets as many (for training;
    pass even=False to evaluate every record)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process index {process_index} is not in [0, {process_count})")
    indices = np.asarray(indices, np.int64)
    if even:
        indices = indices[: len(indices) // process_count * process_count]
    return indices[process_index::process_count]


def _file_batches(source, order, batch_size, image_size, policy, drop_remainder, workers, prefetch, skips):
    """Folders of at least PROCESS_MIN images decode in `workers` processes (`_in_processes`); smaller jobs, and
    sources read through an in-process reader (TFDS), on a grain thread pool. Either way the order is the one asked
    for, and unreadable files are dropped here, where the skip log lives, and the survivors batched."""
    load = functools.partial(_load, source, policy, image_size)
    if source.kind == "folder" and source.reader is None and workers > 1 and len(order) >= PROCESS_MIN:
        return batched(_in_processes(source, policy, image_size, order, workers, prefetch * batch_size), skips,
                        batch_size, drop_remainder)
    import grain

    options = grain.ReadOptions(num_threads=workers, prefetch_buffer_size=max(1, prefetch * batch_size))
    dataset = grain.MapDataset.source(order).map(load).filter(functools.partial(_readable, skips))
    return iter(dataset.to_iter_dataset(options).batch(batch_size, drop_remainder=drop_remainder))


def _load(source, policy, image_size, index) -> dict:
    """One record, decoded and resized; what went wrong comes back as data, since this may run in another process."""
    index = int(index)
    draft = policy.draft(image_size)
    try:
        image = policy.apply(decode_image(source.file(index), draft) if draft else source.image(index), image_size)
    except BadImage as e:
        return {"skip": (source.paths[index], e.reason)}
    return {"images": image, "labels": np.int32(source.labels[index]), "index": np.int64(index)}


def _readable(skips: SkipLog, element: dict) -> bool:
    if "skip" in element:
        skips.add(*element["skip"])
        return False
    return True


def _in_processes(source, policy, image_size, order, workers: int, window: int) -> Iterator[dict]:
    """`_load` over `order` in a pool of `workers` spawned processes, CHUNK records a task, at most `window`
    records in flight, yielded in `order`'s order. PIL holds the GIL for part of each decode and resize, so threads
    stop scaling at 2-4 (1,268 img/s at 4 threads on a 16-core host, slower with more); processes do not share it.
    Workers are forked from multiprocessing's fork server, not from this process (which runs JAX's threads): the
    server starts once per process, importing the main module and this one, so later pools start in milliseconds,
    and each worker gets the source once. As with any loader that does not fork its caller, a script that calls
    this needs an `if __name__ == "__main__":` guard."""
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(workers, _context(), initializer=_worker_init, initargs=(source, policy, image_size))
    pending = collections.deque()
    try:
        for start in range(0, len(order), CHUNK):
            pending.append(pool.submit(_worker_load, order[start:start + CHUNK]))
            if len(pending) * CHUNK >= max(window, CHUNK * workers * 2):
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


_WORKER = {}


@functools.cache
def _context():
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", __name__])
    return context


def _worker_init(source, policy, image_size) -> None:
    _WORKER["load"] = functools.partial(_load, source, policy, image_size)


def _worker_load(indices) -> list:
    return [_WORKER["load"](i) for i in indices]


def batched(elements, skips: SkipLog, batch_size: int, drop_remainder: bool, stack=None) -> Iterator[dict]:
    """The readable elements, stacked `batch_size` at a time (by `stack`, default `_stack`): the same batches
    grain's `batch` makes."""
    stack = stack or _stack
    kept = []
    for element in elements:
        if _readable(skips, element):
            kept.append(element)
        if len(kept) == batch_size:
            yield stack(kept)
            kept = []
    if kept and not drop_remainder:
        yield stack(kept)


def _stack(elements: list) -> dict:
    return {key: np.stack([e[key] for e in elements]) for key in elements[0]}


def _pack_batches(source, order, batch_size, drop_remainder, workers, prefetch):
    import grain

    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if drop_remainder and len(chunks[-1]) < batch_size:
        chunks = chunks[:-1]
    path, labels = source.root, source.labels

    def read(rows):
        return {"images": read_rows(path, rows), "labels": labels[rows].astype(np.int32),
                "index": np.asarray(rows, np.int64)}

    # h5py serialises reads behind one lock, so a second thread only overlaps reading with the consumer.
    options = grain.ReadOptions(num_threads=min(workers, 2), prefetch_buffer_size=max(1, prefetch))
    return iter(grain.MapDataset.source(chunks).map(read).to_iter_dataset(options))


def read_rows(path, rows) -> np.ndarray:
    """Pack images at `rows` (any order, repeats allowed): one slice when contiguous, else sorted points."""
    import h5py

    rows = np.asarray(rows, np.int64)
    unique, inverse = np.unique(rows, return_inverse=True)
    with h5py.File(path, "r") as f:
        images = f["images"]
        if unique[-1] - unique[0] + 1 == len(unique):
            block = images[int(unique[0]):int(unique[-1]) + 1]
        else:
            block = images[unique]
    return block[inverse]


def _check_pack_request(source: Source, image_size, policy) -> None:
    """A pack cannot be re-resized without loss, so a request must match what it holds."""
    stored_size = int(source.attrs["image_size"])
    if image_size is not None and int(image_size) != stored_size:
        raise UserError(f"{source.spec} holds {stored_size}px images, not {image_size}px; pack it again at "
                        f"--image-size {image_size}")
    if policy is None:
        return
    asked = make_policy(policy)
    stored = (source.attrs["resize"], source.attrs["interpolation"], source.attrs.get("decode", "default"))
    if (asked.method, asked.interpolation, asked.decode) != stored:
        raise UserError(f"{source.spec} was packed with {'/'.join(stored)} decoding, not "
                        f"{asked.method}/{asked.interpolation}/{asked.decode}")
