"""`tfds:NAME[:SPLIT]`: a TensorFlow Datasets dataset as a Source, read by random access without TensorFlow.

TFDS is imported only here, and only when a `tfds:` spec is opened (`pip install 'research[tfds]'`), so that
folders and packs never pay for it. Reading goes through `builder.as_data_source` (ArrayRecord files, random
access, NumPy parsing, no TF graph), with image decoding skipped so that the encoded bytes go through our own
decode and resize path, exactly as files from a folder do, and listing the labels does not decode any image.

Records reference (TFDS split, index); `paths` spell them `SPLIT/000123` for provenance. Class names come from
`features["label"].names`. Multi-label datasets (voc: a `labels` sequence and `objects` with `is_difficult`)
list one proxy label per record (its lowest present class, which the stratified splitter and the feature file's
`labels` column need) and keep the (N, C) target matrix (`multilabel_targets`): 1 where the class has an
object not marked difficult, -1 where all its objects are difficult (VOC 2007's ignored entries), else 0. TFDS
splits named train, validation or test become given splits; a dataset with only
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
LABELS_KEY = "labels"  # multi-label datasets: a Sequence of ClassLabel
OBJECTS_KEY = "objects"
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
    class_names = _class_names(builder, spec)
    classes = len(class_names) if _multilabel(builder.info.features) else 0
    refs, labels, targets = _list(readers, classes)
    split = None if wanted else _given_split(refs)
    paths = tuple(f"{s}/{i:06d}" for s, i in refs)
    return Source(spec, "tfds", Path(str(builder.data_dir)), class_names, paths, labels, split,
                  attrs={"tfds_name": name, "tfds_splits": chosen}, refs=tuple(refs),
                  reader=_Reader(readers, refs, targets))


def multilabel_targets(source) -> np.ndarray | None:
    """The (N, C) int8 targets of a multi-label TFDS source (1 present, 0 absent, -1 difficult), else None."""
    return getattr(source.reader, "targets", None)


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
    if IMAGE_KEY in features and _multilabel(features):
        return tuple(features[LABELS_KEY].feature.names)
    if IMAGE_KEY not in features or LABEL_KEY not in features or not hasattr(features[LABEL_KEY], "names"):
        raise UserError(f"{spec}: not an image classification dataset (needs 'image' and a class 'label', or "
                        f"'labels' and 'objects')")
    return tuple(features[LABEL_KEY].names)


def _multilabel(features) -> bool:
    return (LABEL_KEY not in features and LABELS_KEY in features and OBJECTS_KEY in features
            and hasattr(getattr(features[LABELS_KEY], "feature", None), "names"))


def object_targets(objects, classes: int) -> np.ndarray:
    """One image's (C,) targets from its objects: 1 for a class with a non-difficult object, -1 for a class
    whose objects are all difficult, 0 otherwise."""
    labels = np.asarray(objects["label"], np.int64).reshape(-1)
    difficult = np.asarray(objects["is_difficult"], bool).reshape(-1)
    row = np.zeros(classes, np.int8)
    row[labels[difficult]] = -1
    row[labels[~difficult]] = 1
    return row


def _proxy_label(row: np.ndarray) -> int:
    """The lowest present class, else the lowest difficult one, else 0."""
    for value in (1, -1):
        hits = np.flatnonzero(row == value)
        if len(hits):
            return int(hits[0])
    return 0


def _list(readers: dict, classes: int = 0):
    """(split, index) per record, its label and, for a multi-label dataset of `classes` classes, its (N, C)
    targets (else None), reading the labels only (images stay encoded)."""
    refs, labels, targets = [], [], []
    for split, reader in readers.items():
        n = len(reader)
        for start in range(0, n, LIST_CHUNK):
            keys = list(range(start, min(n, start + LIST_CHUNK)))
            for example in _rows(reader, keys):
                if classes:
                    targets.append(object_targets(example[OBJECTS_KEY], classes))
                    labels.append(_proxy_label(targets[-1]))
                else:
                    labels.append(int(example[LABEL_KEY]))
        refs += [(split, i) for i in range(n)]
    matrix = np.stack(targets).astype(np.int8) if classes and targets else None
    return refs, np.asarray(labels, np.int32), matrix


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

    def __init__(self, readers: dict, refs, targets=None):
        self._readers = readers
        self._refs = refs
        self.targets = targets

    def __call__(self, index: int) -> Image.Image:
        split, row = self._refs[index]
        value = self._readers[split][row][IMAGE_KEY]
        if isinstance(value, (bytes, bytearray, np.bytes_)):
            return decode_image(bytes(value))
        array = np.asarray(value)
        if array.dtype == object:  # a 0-d array holding the bytes
            return decode_image(bytes(array.item()))
        return to_rgb(Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array))
