"""timm models with random weights, saved as the hub's snapshots with timm's own `save_for_hf`, and timm's outputs
at named taps: the references for the timm-layout families.

timm (and the torch and torchvision it needs) is a test-only dependency: `timm_or_skip()` skips a test where it is
not installed (.ci/run installs it where a wheel of torch is on disk).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pytest

from research import parity


def timm_or_skip():
    return pytest.importorskip("timm", reason="timm (with torch and torchvision) is not installed")


def create(name: str, seed: int = 0, **kwargs):
    """`timm.create_model(name, pretrained=False, **kwargs)` in eval mode, with `randomize`d weights."""
    timm = timm_or_skip()
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    randomize(model, seed)
    return model


def randomize(model, seed: int = 0) -> None:
    """Every parameter and buffer drawn anew: norms' scales around 1 and shifts around 0, BatchNorm running
    statistics away from 0 and 1, layer scales (timm's `gamma`, init 1e-5) of order 0.1-1, the rest He-scaled.
    timm's initial values (ones, zeros, tiny layer scales) would hide swapped or missing tensors."""
    import torch
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if not tensor.is_floating_point():
                continue
            tensor.copy_(torch.from_numpy(_draw(rng, name, tuple(tensor.shape)).astype(np.float32)))


def _draw(rng, name: str, shape) -> np.ndarray:
    leaf = name.rpartition(".")[2]
    if leaf == "running_var":
        return rng.uniform(0.5, 2.0, shape)
    if leaf in ("running_mean", "bias") or leaf.endswith("_token") or leaf in ("pos_embed",):
        return rng.normal(0, 0.2 if leaf != "bias" else 0.1, shape)
    if leaf in ("gamma",) or len(shape) == 1:  # layer scales, norm scales
        return rng.uniform(0.5, 1.5, shape) if "norm" in name or leaf == "weight" else rng.uniform(0.1, 1.0, shape)
    fan_in = int(np.prod(shape[1:]))
    return rng.normal(0, (2 / max(fan_in, 1)) ** 0.5, shape)


def snapshot(model, folder: Path, safetensors: bool = True) -> Path:
    """The hub's layout, written by timm: config.json and model.safetensors (else pytorch_model.bin)."""
    from timm.models._hub import save_for_hf
    save_for_hf(model, str(folder), safe_serialization=safetensors)
    return Path(folder)


def inputs(model, images: np.ndarray):
    """uint8 NHWC images as timm's eval transform leaves them: /255, then the model's mean and std, NCHW."""
    import torch
    cfg = model.pretrained_cfg
    x = images.astype(np.float32) / 255.0
    x = (x - np.asarray(cfg["mean"], np.float32)) / np.asarray(cfg["std"], np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def reference(model, images: np.ndarray, taps: Mapping[str, str | Callable]) -> dict[str, np.ndarray]:
    """timm's float32 outputs, NHWC where spatial: a tap is a submodule's name (its output, by a forward hook)
    or a function of (model, output of forward_features) (`pre_logits`, `logits`)."""
    import torch
    out, hooks = {}, []
    for tap, where in taps.items():
        if isinstance(where, str):
            hooks.append(model.get_submodule(where).register_forward_hook(
                lambda _m, _i, y, tap=tap: out.__setitem__(tap, y.detach().numpy())))
    try:
        with torch.no_grad():
            features = model.forward_features(inputs(model, images))
            for tap, where in taps.items():
                if callable(where):
                    out[tap] = where(model, features).detach().numpy()
    finally:
        for hook in hooks:
            hook.remove()
    return {tap: parity.nchw_to_nhwc(value) for tap, value in out.items()}


PRE_LOGITS = lambda model, features: model.forward_head(features, pre_logits=True)  # noqa: E731
LOGITS = lambda model, features: model.forward_head(features)  # noqa: E731


def check(ours: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray], tolerance: float = parity.FLOAT32):
    """Every reference tap within `tolerance` (relative to the tap's scale); the errors, for reports."""
    errors = {tap: parity.relative_error(ours[tap], ref[tap]) for tap in ref}
    bad = {tap: e for tap, e in errors.items() if not e <= tolerance}
    assert not bad, f"taps beyond {tolerance}: {bad}"
    return errors
