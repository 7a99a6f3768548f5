"""Parity with real torchvision outputs on real photographs (../shared/golden/torchvision)."""
from __future__ import annotations

import numpy as np
import pytest

import research
from research import parity
from research.cli import main

# golden output name -> our tap
TAPS = {"stem": "stem", "layer2": "stage2", "layer4": "stage4", "pooled": "pre_logits", "logits": "logits",
        "block3_pool": "block3_pool", "block5_pool": "block5_pool"}
CASES = [("resnet18", "resnet18"), ("resnet50", "resnet50"), ("vgg16_notop", "vgg16")]


def _check_all_taps(bundle, golden, name):
    ref = np.load(golden / f"{name}_outputs.npz")
    taps = [TAPS[k] for k in ref.files]
    out = bundle.features(np.load(golden / "images_uint8.npy"), taps=taps)
    for key in ref.files:
        err = parity.relative_error(out[TAPS[key]], parity.nchw_to_nhwc(ref[key]))
        assert err <= parity.FLOAT32, f"{name} {key}: relative error {err:.2e}"
    return out


@pytest.mark.parametrize("name,arch", CASES)
def test_every_stored_tap_matches_torchvision(golden, name, arch):
    bundle = research.load(golden / f"{name}_fp16.pth")
    assert bundle.spec.arch == arch and bundle.spec.layout == "torchvision"
    assert bundle.preprocessing == "torch"
    _check_all_taps(bundle, golden, name)


def test_converted_checkpoint_gives_the_same_outputs(golden, tmp_path, capsys):
    assert main(["convert", str(golden / "resnet18_fp16.pth"), str(tmp_path / "r18")]) == 0
    line = capsys.readouterr().out.strip()
    assert "resnet18 (torchvision layout" in line and "11,689,512 params" in line and "preprocessing torch" in line
    bundle = research.load(tmp_path / "r18")
    assert bundle.meta["source"]["file"] == "resnet18_fp16.pth"
    assert len(bundle.meta["source"]["sha256"]) == 64
    _check_all_taps(bundle, golden, "resnet18")


def test_float32_and_headless_files(golden, tmp_path):
    """The same weights saved in float32 by torch, and without the classifier, convert to the same model."""
    torch = pytest.importorskip("torch")
    state = torch.load(golden / "resnet18_fp16.pth", weights_only=True)
    fp32 = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    torch.save(fp32, tmp_path / "r18.pth")
    torch.save({k: v for k, v in fp32.items() if not k.startswith("fc.")}, tmp_path / "r18_notop.pth")
    full = research.load(tmp_path / "r18.pth")
    _check_all_taps(full, golden, "resnet18")
    notop = research.load(tmp_path / "r18_notop.pth")
    assert notop.spec.num_classes == 0 and "logits" not in notop.spec.taps
    images = np.load(golden / "images_uint8.npy")
    np.testing.assert_array_equal(notop.features(images, "pre_logits")["pre_logits"],
                                  full.features(images, "pre_logits")["pre_logits"])


def _torch_vgg_classifier(x_nhwc, state):
    """fc1 and fc2 as torchvision computes them: an NCHW flatten into classifier.0."""
    x = np.asarray(x_nhwc, np.float64).transpose(0, 3, 1, 2).reshape(len(x_nhwc), -1)
    fc1 = np.maximum(x @ state["classifier.0.weight"].T + state["classifier.0.bias"], 0)
    return fc1, np.maximum(fc1 @ state["classifier.3.weight"].T + state["classifier.3.bias"], 0)


def test_vgg_fc6_takes_torch_flatten_order(golden, tmp_path):
    """torchvision flattens NCHW into fc6; we flatten NHWC, so the converter must reorder fc6's rows."""
    torch = pytest.importorskip("torch")
    state = {k: v.float() for k, v in torch.load(golden / "vgg16_notop_fp16.pth", weights_only=True).items()}
    gen = torch.Generator().manual_seed(0)
    for name, shape in {"classifier.0": (4096, 25088), "classifier.3": (4096, 4096),
                        "classifier.6": (1000, 4096)}.items():
        state[f"{name}.weight"] = torch.randn(shape, generator=gen) / shape[1] ** 0.5
        state[f"{name}.bias"] = torch.randn(shape[0], generator=gen) * 0.1
    torch.save(state, tmp_path / "vgg16.pth")
    bundle = research.load(tmp_path / "vgg16.pth")
    assert bundle.spec.include_top and bundle.spec.num_classes == 1000
    out = bundle.features(np.load(golden / "images_uint8.npy"), ["block5_pool", "fc1", "fc2", "logits"])
    ref = np.load(golden / "vgg16_notop_outputs.npz")["block5_pool"]
    numpy_state = {k: v.double().numpy() for k, v in state.items() if k.startswith("classifier")}
    fc1, fc2 = _torch_vgg_classifier(ref.transpose(0, 2, 3, 1), numpy_state)
    assert parity.relative_error(out["fc1"], fc1) <= parity.FLOAT32
    assert parity.relative_error(out["fc2"], fc2) <= parity.FLOAT32


def test_bfloat16_forward_stays_close_to_float32(golden):
    bundle = research.load(golden / "resnet50_fp16.pth")
    images = np.load(golden / "images_uint8.npy")
    taps = ["stage2", "stage4", "logits"]
    f32 = bundle.features(images, taps)
    bf16 = bundle.features(images, taps, dtype="bfloat16")
    for tap in taps:
        assert bf16[tap].dtype == np.float32
        err = parity.relative_error(bf16[tap], f32[tap])
        assert 0 < err <= parity.BFLOAT16, f"{tap}: bf16 relative error {err:.2e}"
