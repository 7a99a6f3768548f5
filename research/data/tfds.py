"""`tfds:NAME[:SPLIT]`: a TensorFlow Datasets dataset as a Source, read by random access without TensorFlow.

TFDS is imported only here, and only when a `tfds:` spec is opened (`pip install 'research[tfds]'`), so that
folders and packs never pay for it. Reading goes through `builder.as_data_source` (ArrayRecord files, random
access, NumPy parsing, no TF graph), with image decoding skipped so that the encoded bytes go through our own
decode and resize path, exactly as files from a folder do, and listing the labels does not decode any image.

Records reference (TFDS split, index); `paths` spell them `SPLIT/000123` for provenance. Class names come from
`features["label"].names`. TFDS splits named train, validation or test become given splits; a dataset with only
`train` (cats_vs_dogs, tf_flowers) has none, so the seeded stratified splitter applies. `tfds:NAME:SPLIT` reads
that one split, again with no given splits.
"""
from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np
from PIL import Image

from research.data.decode import decode_image, to_rgb
from research.data.splits import SPLITS
from research.errors import UserError

IMAGE_KEY = "image"
LABEL_KEY = "label"
LIST_CHUNK = 1024  # records parsed per call while listing labels


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'tfds:NAME[:SPLIT]' -> (NAME, SPLIT or None)."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[1] or (len(parts) == 3 and not parts[2]):
        raise UserError(f"{spec}: expected tfds:NAME or tfds:NAME:SPLIT, e.g. tfds:caltech101:train")
    return parts[1], parts[2] if len(parts) == 3 else None


def open_tfds(spec: str):
    """A Source over one TFDS dataset (every split, or the one named)."""
    from research.data.sources import Source

    name, wanted = parse_spec(spec)
    tfds = _import_tfds()
    builder = _builder(tfds, name)
    available = _prepared_splits(builder, spec)
    chosen = [_check_split(wanted, available, spec)] if wanted else _standard_splits(available, spec)
    readers = {s: _data_source(tfds, builder, s, spec) for s in chosen}
    refs, labels = _list(readers)
    class_names = _class_names(builder, spec)
    split = None if wanted else _given_split(refs)
    paths = tuple(f"{s}/{i:06d}" for s, i in refs)
    return Source(spec, "tfds", Path(str(builder.data_dir)), class_names, paths, labels, split,
                  attrs={"tfds_name": name, "tfds_splits": chosen}, refs=tuple(refs),
                  reader=_Reader(readers, refs))


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise UserError("tfds: specs need tensorflow-datasets; pip install 'research[tfds]'") from e
    return tfds


def _builder(tfds, name: str):
    from tensorflow_datasets.core.registered import DatasetNotFoundError

    try:
        return tfds.builder(name)
    except DatasetNotFoundError:
        known = tfds.list_builders(with_community_datasets=False)
        raise UserError(f"unknown TFDS dataset {name!r}{_suggest(name, known)}") from None


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=5, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _prepared_splits(builder, spec: str) -> list[str]:
    """The dataset's split names, preparing it first (a download) when it is not on disk yet."""
    if not builder.is_prepared():
        try:
            builder.download_and_prepare(file_format="array_record")
        except Exception as e:  # network, disk, manual-download datasets: all end as one line
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise UserError(f"{spec}: cannot prepare it in {builder.data_dir}: {first}") from e
    names = list(builder.info.splits.keys())
    if not names:
        raise UserError(f"{spec}: the dataset lists no splits in {builder.data_dir}")
    return names


def _data_source(tfds, builder, split: str, spec: str):
    """Random access to one split, images left encoded; TFDS reads only ArrayRecord files this way."""
    try:
        return builder.as_data_source(split=split, decoders={IMAGE_KEY: tfds.decode.SkipDecoding()})
    except NotImplementedError as e:
        raise UserError(f"{spec}: stored as {builder.info.file_format}, not array_record; rebuild it with "
                        f"`tfds build {builder.name} --file_format=array_record`") from e


def _check_split(wanted: str, available: list[str], spec: str) -> str:
    if wanted not in available:
        raise UserError(f"{spec}: no split {wanted!r}{_suggest(wanted, available)} (splits: {', '.join(available)})")
    return wanted


def _standard_splits(available: list[str], spec: str) -> list[str]:
    """The splits that mean train, validation or test; others are read only when named."""
    chosen = [s for s in SPLITS if s in available]
    if not chosen:
        raise UserError(f"{spec}: no train, validation or test split; name one of {', '.join(available)}")
    return chosen


def _class_names(builder, spec: str) -> tuple[str, ...]:
    features = builder.info.features
    if IMAGE_KEY not in features or LABEL_KEY not in features or not hasattr(features[LABEL_KEY], "names"):
        raise UserError(f"{spec}: not an image classification dataset (needs 'image' and a class 'label')")
    return tuple(features[LABEL_KEY].names)


def _list(readers: dict) -> tuple[list[tuple[str, int]], np.ndarray]:
    """(split, index) per record and its label, reading the labels only (images stay encoded)."""
    refs, labels = [], []
    for split, reader in readers.items():
        n = len(reader)
        for start in range(0, n, LIST_CHUNK):
            keys = list(range(start, min(n, start + LIST_CHUNK)))
            labels += [int(example[LABEL_KEY]) for example in _rows(reader, keys)]
        refs += [(split, i) for i in range(n)]
    return refs, np.asarray(labels, np.int32)


def _rows(reader, keys: list[int]) -> list:
    """Several records in one call where the source batches reads (ArrayRecord does), else one by one."""
    many = getattr(reader, "__getitems__", None)
    return many(keys) if many is not None else [reader[k] for k in keys]


def _given_split(refs) -> np.ndarray | None:
    """Our split id per record when there is more than a train split; else None (split it seeded)."""
    if {s for s, _ in refs} <= {"train"}:
        return None
    ids = {name: i for i, name in enumerate(SPLITS)}
    return np.asarray([ids[s] for s, _ in refs], np.int8)


class _Reader:
    """record index -> RGB PIL image, from the encoded bytes (or an array, should a source give one)."""

    def __init__(self, readers: dict, refs):
        self._readers = readers
        self._refs = refs

    def __call__(self, index: int) -> Image.Image:
        split, row = self._refs[index]
        value = self._readers[split][row][IMAGE_KEY]
        if isinstance(value, (bytes, bytearray, np.bytes_)):
            return decode_image(bytes(value))
        array = np.asarray(value)
        if array.dtype == object:  # a 0-d array holding the bytes
            return decode_image(bytes(array.item()))
        return to_rgb(Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array))
