"""timm snapshots as the Hugging Face hub holds them: a folder with `model.safetensors` (or `pytorch_model.bin`)
and timm's `config.json` (`architecture`, `model_args`, `pretrained_cfg`).

`research.load` takes the folder, either weight file with its config.json beside it, or a hub cache entry
(`.../hub/models--timm--NAME`, whose `refs/main` names the snapshot; or one of its `snapshots/<rev>` folders).

- safetensors are read with the `safetensors` package's NumPy API (memory-mapped, no torch); bfloat16 and
  float16 tensors are upcast to float32 (ml_dtypes, which JAX brings, gives NumPy its bfloat16).
- `.bin` files go through the torch-free reader (research/weights/torch_reader.py).
- The architecture is the config's `architecture`, one of the archs with a `timm` layout; the tensors' shapes
  must fit it (mapping.assemble). Without a config.json the families' detectors guess it from the tensors, and
  the guess is logged.
- Preprocessing (mean, std) and the eval transform (input size, interpolation, crop_pct) come from
  `pretrained_cfg` and go into the metadata (`preprocessing`, `input`), where features and dumps take them from.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from research import preprocess
from research.errors import UserError
from research.models import ARCHS, ModelSpec, registry
from research.weights import mapping, torchvision
from research.weights.torch_reader import read_state_dict

SOURCE = "timm"
CONFIG = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # the hub's names, the first found is read
SAFETENSORS_SUFFIX = ".safetensors"
INPUT_KEYS = ("interpolation", "crop_pct", "crop_mode")  # pretrained_cfg's eval transform, beside input_size
log = logging.getLogger(__name__)


def snapshot_dir(path: Path) -> Path | None:
    """The snapshot folder a hub cache entry points at (`refs/main`, else its only snapshot), else None."""
    snapshots = path / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = path / "refs" / "main"
    if ref.is_file() and (snapshots / ref.read_text().strip()).is_dir():
        return snapshots / ref.read_text().strip()
    found = sorted(p for p in snapshots.iterdir() if p.is_dir())
    if len(found) != 1:
        raise UserError(f"{path}: a hub cache entry with {len(found)} snapshots and no refs/main; pass one of "
                        f"{path / 'snapshots'}/<rev>")
    return found[0]


def weight_file(path: Path) -> Path | None:
    """The snapshot's weight file, or None where `path` is no snapshot: a folder (or hub cache entry) holding one
    of WEIGHT_FILES, a `.safetensors` file, or a `.bin` file with timm's config.json beside it."""
    if path.is_dir():
        folder = snapshot_dir(path) or path
        return next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    if path.name.endswith(SAFETENSORS_SUFFIX) or (path.suffix == ".bin" and _is_timm_config(path.parent)):
        return path
    return None


def claims(path) -> bool:
    return weight_file(Path(path)) is not None


def _is_timm_config(folder: Path) -> bool:
    try:
        return "architecture" in json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError, TypeError):
        return False


def read_config(folder: Path) -> dict | None:
    path = folder / CONFIG
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e})") from None
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise UserError(f"{path}: not a timm config (no 'architecture')")
    return config


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    """{key: float32 array}, safetensors memory-mapped through the package's NumPy API."""
    if not path.name.endswith(SAFETENSORS_SUFFIX):
        return read_state_dict(path)
    import ml_dtypes  # noqa: F401 -- registers bfloat16 with NumPy, which safetensors' NumPy API needs
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            return {key: np.asarray(f.get_tensor(key), np.float32) for key in f.keys()}
    except (SafetensorError, OSError, TypeError, ValueError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None


def convert(path):
    """-> (spec, flat leaves, keys with no place, extra metadata: preprocessing and input)."""
    path = Path(path)
    file = weight_file(path)
    if file is None:
        raise UserError(f"{path}: no {' or '.join(WEIGHT_FILES)} in this folder")
    config = read_config(file.parent)
    state = read_tensors(file)
    spec, table = identify(state, config, file)
    flat, unplaced = torchvision.place(state, table, file)
    return spec, flat, unplaced, _meta(spec, config)


def identify(state: dict, config: dict | None, path) -> tuple[ModelSpec, dict]:
    """The spec: the config's architecture and options, or, without a config, what the tensors look like."""
    if config is None:
        found = mapping.identify(SOURCE, state, path, lambda head: _width(state, head))
        if found is None:
            raise UserError(f"{path}: no config.json beside it, and the tensors are not a "
                            f"{registry.describe(SOURCE)} (keys: {', '.join(sorted(state)[:5])}, ...)")
        log.warning("%s: no config.json; the tensors look like timm's %s, assumed with its default settings "
                    "and preprocessing", path, found[0].arch)
        return found
    arch = config["architecture"]
    if SOURCE not in ARCHS.get(arch, ("", ()))[1]:
        known = sorted(a for a, (_f, layouts) in ARCHS.items() if SOURCE in layouts)
        raise UserError(f"{path}: timm architecture {arch!r} is not supported; supported: {', '.join(known)}")
    reader = registry.of(arch)[0].sources[SOURCE]
    table = reader.names(arch)
    head = next(src for src, (dst, _kind) in table.items() if dst == f"{registry.HEAD}/fc")
    width = _width(state, head)
    options = reader.options(config.get("model_args") or {}, state) if reader.options else {}
    return ModelSpec(arch, SOURCE, width is not None, width or 0, options=options), table


def _width(state: dict, head: str) -> int | None:
    weight = state.get(f"{head}.weight")
    return None if weight is None else int(weight.shape[0])


def _meta(spec: ModelSpec, config: dict | None) -> dict:
    """`preprocessing` and `input` (the eval transform) from pretrained_cfg; the family's defaults without it."""
    cfg = (config or {}).get("pretrained_cfg") or {}
    if "mean" in cfg and "std" in cfg:
        pre = preprocess.mean_std(cfg["mean"], cfg["std"])
    else:
        pre = spec.record.sources[SOURCE].preprocessing
    size = cfg.get("input_size", [3, spec.input_size, spec.input_size])
    extra = {"preprocessing": pre, "input": {"size": int(size[-1]), **{k: cfg[k] for k in INPUT_KEYS if k in cfg}}}
    if cfg.get("tag"):
        extra["tag"] = f"{(config or {}).get('architecture')}.{cfg['tag']}"
    return extra
