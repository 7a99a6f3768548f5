"""The PyTorch CPU peer: the same network in PyTorch (the CPU wheel CI installs), same batch, input size and fresh
head, timed in the same race as ours. EfficientNet-Lite0 from its own PyTorch source (`efficientnet_lite_pytorch`);
MobileNetV2, EfficientNetB0 and ConvNeXt-T from torchvision where it is importable (torch's CPU wheel does not
bring it). Forward under
`torch.inference_mode()`; train steps with Adam, the frozen part `requires_grad=False` and its BatchNorm in eval
mode, as ours. float32 only, NCHW input in channels-last memory (PyTorch's faster CPU layout for these nets)."""
from __future__ import annotations

from . import timing

# arch -> (module to import, what builds the headless-classifier model, trainable modules per preset, classifier)
SOURCES = {
    "efficientnet_lite0": ("efficientnet_lite_pytorch", "lite0",
                           {"head": ("_fc",), "top_block": ("_blocks.15", "_conv_head", "_bn1", "_fc")}, "_fc"),
    "mobilenet_v2": ("torchvision", "mobilenet_v2",
                     {"head": ("classifier",), "top_block": tuple(f"features.{i}" for i in range(14, 19))
                      + ("classifier",)}, "classifier.1"),
    # ours: stage7 (the last MBConv stage) and the 1x1 conv to 1280 after it
    "efficientnet_b0": ("torchvision", "efficientnet_b0",
                        {"head": ("classifier",), "top_block": ("features.7", "features.8", "classifier")},
                        "classifier.1"),
    # ours: stage4 with its downsampling, the final norm and the head
    "convnext_tiny": ("torchvision", "convnext_tiny",
                      {"head": ("classifier.2",), "top_block": ("features.6", "features.7", "classifier")},
                      "classifier.2"),
}


def absent_reason(spec, dtype: str) -> str | None:
    """Why there is no PyTorch peer for `spec`, or None."""
    if spec.arch not in SOURCES:
        return f"no PyTorch peer wired for {spec.arch}"
    if dtype != "float32":
        return "the PyTorch CPU peer runs float32 only"
    for module in ("torch", SOURCES[spec.arch][0]):
        try:
            __import__(module)
        except Exception as e:  # not installed (torchvision is not in torch's CPU wheel), or broken
            return f"{module} not importable: {type(e).__name__}: {e}"
    return None


def build(arch: str, classes: int):
    import torch

    module, kind, _, classifier = SOURCES[arch]
    if kind == "lite0":
        from efficientnet_lite_pytorch import EfficientNet
        model = EfficientNet.from_name("efficientnet-lite0")
    else:
        import torchvision
        model = getattr(torchvision.models, kind)(weights=None)
    parent, _, name = classifier.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    setattr(owner, name, torch.nn.Linear(getattr(owner, name).in_features, classes))
    return model.to(memory_format=torch.channels_last)


class Peer:
    """The PyTorch twin of a `models.Setup`: random weights, its preprocessing (the same on both sides) done once."""

    def __init__(self, s, classes: int):
        import numpy as np
        import torch

        from research import preprocess

        self.torch, self.arch = torch, s.spec.arch
        self.model = build(s.spec.arch, classes)
        x = np.asarray(preprocess.apply(s.preprocessing, np.asarray(s.images, np.float32)), np.float32)
        self.x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).contiguous(memory_format=torch.channels_last)
        self.labels = torch.from_numpy(np.asarray(s.labels, np.int64))
        self.threads = torch.get_num_threads()

    def forward(self) -> timing.Runner:
        model, torch = self.model, self.torch
        model.eval()
        for p in model.parameters():
            p.requires_grad_(True)

        def call():
            with torch.inference_mode():
                model(self.x)

        return timing.Runner(call, first_s=timing.first_call(call), extra={"threads": self.threads})

    def train(self, preset: str) -> timing.Runner:
        """One Adam step (lr 1e-3) with only `preset`'s modules trainable; the frozen modules in eval mode."""
        torch, model = self.torch, self.model
        trainable = SOURCES[self.arch][2].get(preset, ("",))  # "all": every name starts with ""
        model.train()
        params = []
        for name, p in model.named_parameters():
            p.requires_grad_(any(name == t or name.startswith(t + ".") or not t for t in trainable))
            if p.requires_grad:
                params.append(p)
        for name, module in model.named_modules():
            if name and not any(not t or name == t or name.startswith(t + ".") or t.startswith(name + ".")
                                for t in trainable):
                module.eval()
        optimizer = torch.optim.Adam(params, 1e-3)
        loss_fn = torch.nn.CrossEntropyLoss()

        def call():
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(self.x), self.labels)
            loss.backward()
            optimizer.step()

        return timing.Runner(call, first_s=timing.first_call(call),
                             extra={"threads": self.threads, "trainable_params": sum(p.numel() for p in params)})

    def runners(self, case: str, preset: str | None) -> dict:
        return {"torch:forward": self.forward()} if case == "a" else {"torch:train_step": self.train(preset)}
