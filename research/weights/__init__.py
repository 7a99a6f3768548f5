"""One way in for weights: a raw source file (Keras `.h5` / `.weights.h5` / `.keras`, torchvision `.pth`), a timm
snapshot (folder, hub cache entry, or its weight file) or a converted checkpoint directory. The format is sniffed
from the bytes (and a snapshot's config.json), the architecture from the contents.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from research.errors import UserError
from research.models import ModelSpec
from research.weights import efficientnet_lite, keras, mapping, store, timm, torchvision

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTOCOL_2_PLUS = b"\x80"

# source -> its converter; the preprocessing of each family's weights is the family's (research/models/registry.py)
SOURCES = {keras.SOURCE: keras, torchvision.SOURCE: torchvision, efficientnet_lite.SOURCE: efficientnet_lite,
           timm.SOURCE: timm}


def sniff(path) -> str:
    """'checkpoint', 'keras', 'torchvision', 'efficientnet_pytorch' or 'timm', from what the path holds rather than
    its name (torch files by their keys, timm's by the config.json beside them)."""
    path = Path(path)
    if path.is_dir():
        if store.is_checkpoint(path):
            return "checkpoint"
        if timm.claims(path):
            return timm.SOURCE
        raise UserError(f"{path}: a directory, but not a converted checkpoint (no {store.META_FILE}) nor a timm "
                        f"snapshot (no {' or '.join(timm.WEIGHT_FILES)})")
    if not path.is_file():
        raise UserError(f"{path}: no such weights file")
    with open(path, "rb") as f:
        head = f.read(8)
    if timm.claims(path):
        return timm.SOURCE
    if head.startswith(HDF5_MAGIC) or (head.startswith(ZIP_MAGIC) and keras.is_keras_zip(path)):
        return "keras"
    if head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_PROTOCOL_2_PLUS):
        return efficientnet_lite.SOURCE if efficientnet_lite.claims(path) else "torchvision"
    raise UserError(f"{path}: neither HDF5 (Keras) nor a torch file (.pth), nor a converted checkpoint")


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert(path, arch: str | None = None) -> tuple[ModelSpec, dict, dict]:
    """A raw source file -> (spec, variables, meta). `arch`, if given, must agree with the file."""
    path = Path(path)
    source = sniff(path)
    if source == "checkpoint":
        raise UserError(f"{path} is already converted")
    spec, flat, unplaced, *extra = SOURCES[source].convert(path)
    if arch and arch != spec.arch:
        raise UserError(f"{path.name} holds {spec.arch} ({spec.layout} layout), not {arch}")
    variables = mapping.assemble(flat, spec, path.name, unplaced)
    from research import __version__

    file = timm.weight_file(path) if source == timm.SOURCE else path
    meta = {
        "research_version": __version__,
        "model": spec.to_dict(),
        "preprocessing": spec.record.sources[source].preprocessing,
        "source": {"file": file.name, "sha256": sha256(file), "framework": source},
        **(extra[0] if extra else {}),  # a source's own: timm's preprocessing and eval transform from its config
    }
    return spec, variables, meta
