"""Parity with torchvision itself, for every architecture, where torchvision is installed.

The golden files in ../shared cover resnet18, resnet50 and vgg16 in CI; this runs torchvision in-process on
random weights (BatchNorm statistics included) for all of ResNet-18..152 and VGG-11..19 with and without BN,
with the classifier, at 64 px (so VGG's adaptive pool to 7x7 is exercised too), where torchvision is installed
(CI installs it). CI runs one of each kind (basic and bottleneck ResNet, VGG with and without BN); every
architecture runs with `-m full`.
"""
from __future__ import annotations

import numpy as np
import pytest

import research
from research import parity
from research.preprocess import TORCH_MEAN, TORCH_STD
from tests.conftest import resize

torch = pytest.importorskip("torch")
models = pytest.importorskip("torchvision.models")

ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn",
         "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]


def randomized(arch: str):
    torch.manual_seed(len(arch))
    model = getattr(models, arch)(weights=None).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return model


def torch_taps(model, x) -> dict[str, np.ndarray]:
    """Our tap names -> torchvision's outputs at the same places, NHWC."""
    out = {}
    with torch.no_grad():
        if hasattr(model, "layer1"):
            x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
            out["stem"] = x
            for i in range(1, 5):
                x = getattr(model, f"layer{i}")(x)
                out[f"stage{i}"] = x
            x = torch.flatten(model.avgpool(x), 1)
            out["pre_logits"], out["logits"] = x, model.fc(x)
        else:
            block = 0
            for layer in model.features:
                x = layer(x)
                if isinstance(layer, torch.nn.MaxPool2d):
                    block += 1
                    out[f"block{block}_pool"] = x
            x = torch.flatten(model.avgpool(x), 1)
            for i, layer in enumerate(model.classifier):
                x = layer(x)
                out.update({1: {"fc1": x}, 4: {"fc2": x}, 6: {"logits": x}}.get(i, {}))
    return {k: parity.nchw_to_nhwc(v.numpy()) for k, v in out.items()}


CI = {"resnet18", "resnet50", "vgg11_bn", "vgg16"}


@pytest.mark.parametrize("arch", [a if a in CI else pytest.param(a, marks=pytest.mark.full) for a in ARCHS])
def test_matches_torchvision(arch, photos, tmp_path):
    model = randomized(arch)
    images = resize(photos[:2], 64)
    x = (images / 255.0 - np.array(TORCH_MEAN)) / np.array(TORCH_STD)
    reference = torch_taps(model, torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32)))
    legacy = arch in ("resnet34", "vgg13_bn")  # some files in torch's pre-1.6 (non-zip) format
    torch.save(model.state_dict(), tmp_path / f"{arch}.pth", _use_new_zipfile_serialization=not legacy)
    bundle = research.load(tmp_path / f"{arch}.pth")
    assert bundle.spec.arch == arch
    out = bundle.features(images, taps=list(reference))
    for tap, ref in reference.items():
        err = parity.relative_error(out[tap], ref)
        assert err <= parity.FLOAT32, f"{arch} {tap}: relative error {err:.2e}"
