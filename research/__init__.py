"""Transfer learning with ImageNet CNNs in JAX: `research.load(path)` is the one way in for weights."""
from __future__ import annotations

__version__ = "0.1.0"

from pathlib import Path  # noqa: E402

from research.errors import UserError  # noqa: E402


def __getattr__(name: str):
    """`Bundle` on first use: importing it imports JAX (seconds), which the loader's decoding processes, which
    import `research.data`, do not need."""
    if name == "Bundle":
        from research.bundle import Bundle
        return Bundle
    raise AttributeError(f"module 'research' has no attribute {name!r}")


def load(path, arch: str | None = None, num_classes: int | None = None, seed: int = 0) -> Bundle:
    """A converted checkpoint directory, a raw weight file (`.h5`, `.weights.h5`, `.keras`, `.pth`) or a timm
    snapshot (folder, hub cache entry, `model.safetensors`); `~` is expanded.

    Raw files are converted on the fly. `arch`, if given, must agree with the file. `num_classes` swaps in a
    fresh head of that size (0 removes the head), initialised from `seed`.
    """
    from research import weights
    from research.bundle import Bundle
    from research.models import ModelSpec

    path = Path(path).expanduser()
    if weights.sniff(path) == "checkpoint":
        variables, meta = weights.store.load(path)
        spec = ModelSpec(**meta["model"])
        if arch and arch != spec.arch:
            raise UserError(f"{path} holds {spec.arch}, not {arch}")
    else:
        spec, variables, meta = weights.convert(path, arch)
    bundle = Bundle(spec, variables, meta)
    if num_classes is not None and num_classes != spec.num_classes:
        bundle = bundle.with_head(num_classes, seed)
    return bundle


__all__ = ["Bundle", "UserError", "load", "__version__"]
