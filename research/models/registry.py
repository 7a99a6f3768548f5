"""The model families: one `Family` record each, declared in the family's own module (`FAMILY = Family(...)`)
and registered in research/models/__init__.py.

Everything the rest of the project knows about a family comes from its record: specs and taps
(research.models), freeze presets (research.train.freeze), conversion and detection (research.weights), heads.
So adding a family is one model module and one `register` line, and nothing outside them branches on a
family's name.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

from research.errors import UserError

HEAD = "head"  # the classifier's module in every family; its output is the `logits` tap


@dataclasses.dataclass(frozen=True)
class Arch:
    """One architecture of a family. `layouts`: the weight sources that publish it (each source is a layout of
    its own, since the sources differ in strides, biases and BatchNorm epsilon)."""
    config: Any  # what the family's `build` takes: stage sizes, block depths, ...
    layouts: tuple[str, ...]
    input_size: int = 224  # the size it was trained at: the default, and the only one where `fixed_input` holds
    bn: Mapping | None = None  # BatchNorm settings where they are the arch's own, not the layout's
    taps: tuple[str, ...] | None = None  # where the arch has only some of the family's taps (fewer stages)


@dataclasses.dataclass(frozen=True)
class Source:
    """A family's weight files from one source (`keras`, `torchvision`, ...): how to recognise and read them.

    The name table maps the source's classifier to `head/fc`: whether a file holds that layer is what makes
    its spec `include_top`, and its width the spec's `num_classes`. Kinds are the source module's
    (research/weights/mapping.py KINDS for Keras; torchvision.SUFFIXES for torch files)."""
    preprocessing: str  # what its ImageNet weights were trained on (research/preprocess.py)
    names: Callable[[str], dict]  # arch -> {source layer: (param path, kind)}, the kinds of the source's module
    detect: Callable[[dict], str | None]  # the file's {layer: tensors} -> arch, or None if not this family's;
    # a UserError (without the path) for a file of this family that is not supported
    describes: str  # the files `detect` knows, in the error that lists them: "ResNet50/101/152"
    # the file's {layer: tensors} -> {file layer: its name in `names`}, where the file's names vary from file to
    # file (Keras' automatic layer names, see `keras_auto_names`); None: the names are the file's own
    canonical_names: Callable[[dict], dict] | None = None
    # (the source's own model config, the file's {layer: tensors}) -> {option: value} for `ModelSpec.options`:
    # build arguments the weights carry (timm's `model_args`: the trained image size, the pooling, ...)
    options: Callable[[dict, dict], dict] | None = None


def keras_auto_names(layers, prefixes) -> dict[str, str]:
    """{file layer: canonical name}: Keras' automatic names (`conv2d`, `conv2d_57`, ...; layers built without a
    `name`) renumbered `{prefix}_1`, `{prefix}_2`, ... in the order they were created, every other name kept.

    Keras numbers these per session: the official Keras 2 files count from `conv2d_1`, a fresh Keras 3 session
    from `conv2d`, and a model built after another one from wherever that one stopped. The creation order is the
    order of the numbers, and the canonical names are those of the official Keras 2 files."""
    out = {name: name for name in layers}
    for prefix in prefixes:
        numbered = sorted((int(m.group(1) or 0), name) for name in layers
                          if (m := re.fullmatch(rf"{re.escape(prefix)}(?:_(\d+))?", name)))
        out.update({name: f"{prefix}_{i}" for i, (_, name) in enumerate(numbered, start=1)})
    return out


def _never(_spec) -> bool:
    return False


@dataclasses.dataclass(frozen=True, eq=False)
class Family:
    """Everything the project knows about a model family.

    `taps`: every tap, shallowest first, `logits` last; a tap ends the top-level module of its name unless
    `tap_modules` says otherwise (`logits` ends `head`). `modules`: the top-level modules that hold params,
    input to output (what freeze presets cut). `top_block`: where the `top_block` preset starts. `top_taps`:
    taps that exist only with the source's top (VGG's fc1, fc2). `feed_taps`: what a fresh head reads, the first
    of these the model has. `bn`: BatchNorm settings per layout (an `Arch` may have its own). `fixed_input`:
    whether a spec's input size is fixed at its arch's `input_size` (a flatten into a dense layer).
    `top_block` may be a function of the params' top-level module names (a ViT's last block depends on its
    depth). `spec_taps`: a spec's taps where they depend on more than its arch (a depth from the snapshot's
    config). `prefix_tokens`: the tokens before the patch tokens in a token tap (N, T, C), e.g. ("cls",), where
    the family has token taps (`research features` pools them)."""
    name: str
    archs: Mapping[str, Arch]
    build: Callable[..., Any]  # (spec, arch config, num_classes=, dtype=, frozen_bn=) -> the Flax module
    taps: tuple[str, ...]
    modules: tuple[str, ...]
    top_block: str | Callable[[Any], str]
    sources: Mapping[str, Source]
    bn: Mapping[str, Mapping] = dataclasses.field(default_factory=dict)
    tap_modules: Mapping[str, str] = dataclasses.field(default_factory=dict)
    top_taps: tuple[str, ...] = ()
    feed_taps: tuple[str, ...] = ("pre_logits",)
    fixed_input: Callable[[Any], bool] = _never
    spec_taps: Callable[[Any], tuple[str, ...]] | None = None
    prefix_tokens: Callable[[Any], tuple[str, ...]] | None = None

    def module_of(self, tap: str) -> str | None:
        """The top-level module whose output is `tap`; None where that module holds no params (a pool)."""
        module = {"logits": HEAD, **self.tap_modules}.get(tap, tap)
        return module if module in self.modules else None

    def bn_settings(self, arch: str, layout: str) -> Mapping:
        return self.archs[arch].bn or self.bn[layout]


FAMILIES: dict[str, Family] = {}
ARCHS: dict[str, tuple[str, tuple[str, ...]]] = {}  # arch -> (family name, layouts), filled by `register`


def register(family: Family) -> Family:
    """Adds `family`; detection asks the families in the order they were registered."""
    clash = sorted(set(family.archs) & set(ARCHS))
    if family.name in FAMILIES or clash:
        raise ValueError(f"family {family.name!r} is already registered, or its archs are: {clash}")
    FAMILIES[family.name] = family
    ARCHS.update({arch: (family.name, a.layouts) for arch, a in family.archs.items()})
    return family


def family(name: str) -> Family:
    return FAMILIES[name]


def of(arch: str) -> tuple[Family, Arch]:
    """The family and record of `arch` (already checked to exist by ModelSpec)."""
    found = FAMILIES[ARCHS[arch][0]]
    return found, found.archs[arch]


def detect(source: str, contents: dict, path) -> tuple[Family, str] | None:
    """(family, arch) of a `source` file whose {layer: tensors} are `contents`; None if no family claims it."""
    for found in FAMILIES.values():
        reader = found.sources.get(source)
        if reader is None:
            continue
        try:
            arch = reader.detect(contents)
        except UserError as e:
            raise UserError(f"{path}: {e}") from None
        if arch:
            return found, arch
    return None


def describe(source: str) -> str:
    """The `source` files the families know, for an error: "ResNet50/101/152 or VGG16/19"."""
    return " or ".join(f.sources[source].describes for f in FAMILIES.values() if source in f.sources)


def arch_by_counts(names, pattern: str, groups, archs: Mapping[str, tuple], what: str) -> str:
    """The arch whose blocks per group equal the file's: `pattern` is a regex over layer names with `{}` for the
    group number (Keras' `conv{}_block\\d+_1_conv`), counted for each of `groups`. A file of the family with counts
    no arch has is a UserError naming them."""
    counts = tuple(sum(bool(re.fullmatch(pattern.format(g), n)) for n in names) for g in groups)
    arch = next((a for a, c in archs.items() if tuple(c) == counts), None)
    if arch is None:
        raise UserError(f"a Keras {what} with {counts} blocks per stage; known: "
                        + ", ".join(f"{a} {tuple(c)}" for a, c in archs.items()))
    return arch


TIMM_SHAPE_ARGS = ("in_chans", "num_classes")  # timm `model_args` that the tensors' shapes show


def check_timm_args(model_args: Mapping, supported: Mapping[str, tuple | None], what: str) -> None:
    """Refuses a timm snapshot whose `model_args` build something the family does not: each arg must be in
    `supported` with one of its values (None: any value, an arg that changes no output) or be one the tensors'
    shapes show. An arg that changes the function without changing a shape (an activation, the pooling) would
    otherwise load and compute something else."""
    bad = [f"{k}={v!r}" for k, v in model_args.items()
           if k not in TIMM_SHAPE_ARGS and (k not in supported or (supported[k] is not None and v not in supported[k]))]
    if bad:
        allowed = ", ".join(f"{k} in {v}" if v is not None else k for k, v in supported.items())
        raise UserError(f"a timm {what} built with {', '.join(bad)}, which is not supported (supported: {allowed})")


class TapCollector:
    """Collects the requested taps and says when the forward can stop."""

    def __init__(self, taps):
        self.wanted = set(taps)
        self.out = {}

    def add(self, name, value) -> bool:
        """Records `value` if asked for; True once every requested tap is in."""
        if name in self.wanted:
            self.out[name] = value
        return self.wanted.issubset(self.out)
