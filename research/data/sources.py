"""Datasets named by one spec string, listed as records (a reference and a label) with class names and splits.

Specs:
- `root/` holding `root/{class}/...`: class folders (searched recursively, as Keras and torchvision do);
- `root/` holding only `train/`, `validation/`, `test/` (any subset), each with class folders: given splits;
- `pack.h5`: a pack written by `research pack` (pixels already decoded and resized);
- `tfds:NAME[:SPLIT]`: TensorFlow Datasets (see `research.data.tfds`; imported only for such specs);
- `sklearn:digits`: an image set scikit-learn ships, for offline runs (see `research.data.sklearn_sets`).

Image files are matched by extension, case-insensitively; hidden files and folders (a leading dot, and
`__MACOSX`) and other files are ignored. Links inside class folders are not followed into folders, and a
class folder that links back into the tree, or to a folder already listed, is skipped with a warning. Classes are sorted by name, so label ids do not depend on the order the
file system lists them in; records are ordered by split, class, then relative path.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from research.data.decode import decode_image
from research.data.splits import SPLITS
from research import h5
from research.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})
PACK_SUFFIXES = (".h5", ".hdf5")
PACK_FORMAT = "research.pack"


class Record(NamedTuple):
    ref: str | int | tuple  # a path relative to the root, a row of a pack, or a TFDS (split, index)
    label: int


@dataclasses.dataclass(frozen=True, eq=False)
class Source:
    """A listed dataset. `split` holds indices into SPLITS per record, or is None when none are given."""

    spec: str
    kind: str  # "folder", "pack", "tfds" or "sklearn"
    root: Path  # the folder, the pack file, or the TFDS data directory
    class_names: tuple[str, ...]
    paths: tuple[str, ...]  # relative POSIX paths, for provenance (a pack keeps the ones it was built from)
    labels: np.ndarray  # int32
    split: np.ndarray | None = None  # int8 into SPLITS
    skipped: tuple[str, ...] = ()  # files a pack left out as unreadable
    attrs: dict = dataclasses.field(default_factory=dict)  # a pack's attributes (image size, resize policy)
    refs: tuple | None = None  # record references when they are not the paths (TFDS: (split, index))
    reader: Callable | None = None  # index -> RGB PIL image, for sources that are not files

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def records(self) -> list[Record]:
        refs = self.refs or (self.paths if self.kind == "folder" else range(len(self)))
        return [Record(r, int(y)) for r, y in zip(refs, self.labels)]

    def file(self, index: int) -> Path:
        """The image file of a folder record."""
        return self.root / self.paths[index]

    def image(self, index: int):
        """The decoded RGB PIL image of a record (not for packs, whose pixels are read in slices)."""
        return self.reader(index) if self.reader is not None else decode_image(self.file(index))

    def split_names(self) -> list[str] | None:
        """The split of each record by name, or None when the source has no given splits."""
        if self.split is None:
            return None
        return [SPLITS[s] for s in self.split]

    def split_indices(self) -> dict[str, np.ndarray]:
        """{split name: record indices} for the given splits present ({} when there are none)."""
        if self.split is None:
            return {}
        return {name: np.flatnonzero(self.split == i) for i, name in enumerate(SPLITS) if (self.split == i).any()}


def open_source(spec) -> Source:
    """`research.data.open`: the one way in for data."""
    text = str(spec)
    if text.startswith("tfds:"):
        from research.data.tfds import open_tfds
        return open_tfds(text)
    if text.startswith("sklearn:"):
        from research.data.sklearn_sets import open_sklearn
        return open_sklearn(text)
    path = Path(text).expanduser()
    if not path.exists():
        raise UserError(f"no such dataset: {text}")
    if path.is_file():
        if path.suffix.lower() in PACK_SUFFIXES:
            return open_pack(path, text)
        raise UserError(f"{text} is not a folder of class folders, an .h5 pack, or tfds:NAME")
    return open_folder(path, text)


def open_folder(root: Path, spec: str) -> Source:
    subdirs = _visible_dirs(root)
    split_dirs = [d for d in subdirs if d.name in SPLITS]
    if split_dirs and len(split_dirs) == len(subdirs):
        return _read_split_tree(root, spec, split_dirs)
    if split_dirs:
        others = ", ".join(d.name for d in subdirs if d.name not in SPLITS)
        raise UserError(f"{root} mixes split folders ({', '.join(d.name for d in split_dirs)}) "
                        f"with class folders ({others}); use one layout")
    _warn_loose_images(root)
    classes = [d.name for d in subdirs]
    paths, labels = _list_classes(root, root, classes)
    _require_images(paths, root)
    return Source(spec, "folder", root, tuple(classes), tuple(paths), np.asarray(labels, np.int32))


def _read_split_tree(root: Path, spec: str, split_dirs: list[Path]) -> Source:
    """Given splits: one class list (the union, sorted) so that a label means the same class in each split."""
    by_split = {d.name: d for d in split_dirs}
    classes = sorted({c.name for d in split_dirs for c in _visible_dirs(d)})
    paths, labels, split = [], [], []
    for index, name in enumerate(SPLITS):
        if name not in by_split:
            continue
        present = {c.name for c in _visible_dirs(by_split[name])}
        for missing in sorted(set(classes) - present):
            log.warning("class %r has no folder in %s", missing, name)
        p, y = _list_classes(root, by_split[name], [c for c in classes if c in present], classes)
        paths += p
        labels += y
        split += [index] * len(p)
    _require_images(paths, root)
    return Source(spec, "folder", root, tuple(classes), tuple(paths), np.asarray(labels, np.int32),
                  np.asarray(split, np.int8))


def _list_classes(root: Path, parent: Path, classes: list[str], all_classes: list[str] | None = None):
    """Relative paths and labels for the class folders under `parent`; label = position in `all_classes`."""
    ids = {name: i for i, name in enumerate(all_classes or classes)}
    paths, labels = [], []
    for name in classes:
        found = _images_under(parent / name, root)
        if not found:
            log.warning("class folder %s has no images", parent / name)
        paths += found
        labels += [ids[name]] * len(found)
    return paths, labels


def _images_under(folder: Path, root: Path) -> list[str]:
    """Sorted relative POSIX paths of the image files below `folder`, skipping hidden entries."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not _hidden(d)]
        for f in filenames:
            if not _hidden(f) and Path(f).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath, f).relative_to(root).as_posix())
    return sorted(found)


def _visible_dirs(folder: Path) -> list[Path]:
    """The subfolders, each real folder once: a link back to `folder` or above it (a loop such as
    `toploop -> .`) or to a folder already listed is skipped with a warning, so no image counts twice."""
    here, seen = folder.resolve(), {}
    found = [p for p in folder.iterdir() if p.is_dir() and not _hidden(p.name)]
    for p in sorted(found, key=lambda p: (p.is_symlink(), p.name)):  # real folders claim their images first
        real = p.resolve()
        if real == here or real in here.parents:
            log.warning("skipping %s: a link back to %s, which is already being listed", p, real)
        elif real in seen:
            log.warning("skipping %s: the same folder as %s", p, seen[real])
        else:
            seen[real] = p
    return sorted(seen.values(), key=lambda p: p.name)


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _warn_loose_images(root: Path) -> None:
    loose = [p.name for p in root.iterdir() if p.is_file() and not _hidden(p.name)
             and p.suffix.lower() in IMAGE_EXTENSIONS]
    if loose:
        log.warning("ignoring %d images directly in %s: images belong in class folders", len(loose), root)


def _require_images(paths: list[str], root: Path) -> None:
    if not paths:
        raise UserError(f"{root} holds no images (expected {root}/CLASS/*.jpg, or train/ validation/ test/ "
                        f"folders of class folders; extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")


def open_pack(path: Path, spec: str) -> Source:
    """Lists a pack; the pixels stay on disk and the loader reads them in slices."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != PACK_FORMAT:
                raise UserError(f"{path} is an HDF5 file but not a pack written by `research pack`")
            if not f.attrs.get("complete", False):
                raise UserError(f"{path} is an incomplete pack (its writing was interrupted); write it again")
            attrs = {k: h5.plain(v) for k, v in f.attrs.items()}
            names, paths = tuple(h5.strings(f["label_names"])), tuple(h5.strings(f["paths"]))
            labels = f["labels"][()].astype(np.int32)
            split = f["split"][()].astype(np.int8) if "split" in f else None
    except OSError as e:
        raise UserError(f"cannot read {path} as HDF5: {str(e).splitlines()[0]}") from e
    skipped = tuple(item["path"] for item in json.loads(attrs.get("skipped", "[]")))
    return Source(spec, "pack", path, names, paths, labels, split, skipped, attrs)
