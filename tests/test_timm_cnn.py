"""timm's CNNs from snapshots (ConvNeXt, ResNet, EfficientNet): parity with timm itself at every tap.

timm models with random weights (BatchNorm statistics, LayerNorms and layer scales too; tests/timm_files.py) are
written with timm's own `save_for_hf`, as model.safetensors or pytorch_model.bin, and read back through
`research.load(folder)` only. The real convnext_atto.d2_in1k snapshot is checked against timm's recorded outputs
(../shared/golden/timm), and `research features` against timm's own eval transform on image files.
CI: convnext_atto at 224 and 72 px, resnet18 and efficientnet_b0 at 64 px; `python -m pytest -m full -s
tests/test_timm_cnn.py` runs every member at its default size.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

import research
from research import cli, parity, preprocess
from research.errors import UserError
from research.features import hdf5
from tests import timm_files
from tests.conftest import SHARED, resize

timm_files.timm_or_skip()


def convnext_taps(_model) -> dict:
    return {"stem": "stem", **{f"stage{i}": f"stages.{i - 1}" for i in range(1, 5)}}


def resnet_taps(_model) -> dict:
    return {"stem": "maxpool", **{f"stage{i}": f"layer{i}" for i in range(1, 5)}}


def efficientnet_taps(_model) -> dict:
    return {"stem": "bn1", **{f"stage{i}": f"blocks.{i - 1}" for i in range(1, 8)}, "top": "bn2"}


# timm module (or function of the model and forward_features' output) of each of our taps, per family
TAPS = {"convnext": convnext_taps, "resnet": resnet_taps, "efficientnet": efficientnet_taps}
HEAD_TAPS = {"pre_logits": timm_files.PRE_LOGITS, "logits": timm_files.LOGITS}

# (timm name, our arch, family, input size, weight file: safetensors or .bin, bfloat16 checked too, classes: 0 is
# a snapshot without a classifier, as timm's DINOv3 ConvNeXts)
CASES = [
    ("convnext_atto.d2_in1k", "convnext_atto", "convnext", 224, True, False, 1000),
    ("convnext_atto", "convnext_atto", "convnext", 72, False, False, 0),  # bfloat16 under -m full
    ("resnet18.a1_in1k", "resnet18", "resnet", 64, False, True, 1000),
    ("efficientnet_b0", "efficientnet_b0", "efficientnet", 64, True, False, 1000),  # bfloat16 under -m full
]
# (timm name, family, bfloat16 checked too), smallest first
FULL = [("convnext_atto", "convnext", True), ("convnext_femto", "convnext", False),
        ("convnext_pico", "convnext", False), ("convnext_nano", "convnext", False), ("resnet18", "resnet", False),
        ("resnet34", "resnet", False), ("efficientnet_b0", "efficientnet", True),
        ("resnet50.a1_in1k", "resnet", False), ("convnext_tiny", "convnext", False), ("resnet101", "resnet", False),
        ("resnet152", "resnet", False), ("convnext_small", "convnext", False), ("convnext_base", "convnext", False),
        ("convnext_large", "convnext", False), ("convnext_xlarge", "convnext", False),
        ("efficientnet_b1", "efficientnet", False), ("efficientnet_b2", "efficientnet", False),
        ("efficientnet_b3", "efficientnet", False), ("efficientnet_b4", "efficientnet", False),
        ("efficientnet_b5", "efficientnet", False)]


def damp_residuals(model, factor: float = 0.3) -> None:
    """Scales each EfficientNet block's last BatchNorm (scale and shift, still random per channel) by `factor`.
    Fully random B3-B5 are chaotic at their default sizes: activations grow ~1000x per stage and float32 rounding
    is amplified with them, so that timm's own float32 and float64 forwards differ by 7e-2 at B5's stage7 (448
    px), and no float32 implementation could match within 1e-4. Damped, they differ by 5e-7."""
    import torch
    with torch.no_grad():
        for path, module in model.named_modules():
            if path.startswith("blocks.") and path.endswith(".bn3"):
                module.weight.mul_(factor)
                module.bias.mul_(factor)


def snapshot_and_reference(name, family, photos, size, folder, safetensors=True, seed=0, prepare=None, **kwargs):
    """(timm model, the photos at `size` (None: the model's default), timm's outputs at every tap); `prepare`
    changes the random model before it is saved."""
    model = timm_files.create(name, seed=seed, **kwargs)
    if prepare:
        prepare(model)
    timm_files.snapshot(model, folder, safetensors)
    images = resize(photos, size or model.pretrained_cfg["input_size"][-1])
    head = {t: f for t, f in HEAD_TAPS.items() if model.num_classes or t != "logits"}
    return model, images, timm_files.reference(model, images, {**TAPS[family](model), **head})


def parity_check(name, arch, family, photos, size, tmp_path, safetensors=True, bfloat16=False, classes=1000,
                 prepare=None):
    """Loads the snapshot, checks its spec and metadata, and every tap against timm; the errors per tap."""
    model, images, ref = snapshot_and_reference(name, family, photos, size, tmp_path / "snap", safetensors,
                                                prepare=prepare, num_classes=classes)
    assert (tmp_path / "snap" / ("model.safetensors" if safetensors else "pytorch_model.bin")).is_file()
    bundle = research.load(tmp_path / "snap")
    assert (bundle.spec.arch, bundle.spec.layout, bundle.spec.num_classes) == (arch, "timm", classes)
    assert bundle.spec.include_top == bool(classes)
    assert bundle.spec.taps == tuple(ref)
    cfg = model.pretrained_cfg
    assert bundle.preprocessing == preprocess.mean_std(cfg["mean"], cfg["std"])
    assert bundle.meta["input"] == {"size": cfg["input_size"][-1], "interpolation": cfg["interpolation"],
                                    "crop_pct": cfg["crop_pct"], "crop_mode": cfg["crop_mode"]}
    ours = bundle.features(images, list(ref))
    errors = timm_files.check(ours, ref)
    if bfloat16:
        half = bundle.features(images, list(ref), dtype="bfloat16")
        timm_files.check(half, ours, parity.BFLOAT16)
    return images.shape[1], errors


@pytest.mark.parametrize("name,arch,family,size,safetensors,bfloat16,classes", CASES,
                         ids=[f"{c[0]}-{c[3]}px-{'safetensors' if c[4] else 'bin'}" for c in CASES])
def test_matches_timm_at_every_tap(name, arch, family, size, safetensors, bfloat16, classes, photos, tmp_path):
    parity_check(name, arch, family, photos, size, tmp_path, safetensors, bfloat16, classes)


@pytest.mark.full
@pytest.mark.parametrize("name,family,bfloat16", FULL, ids=[f[0] for f in FULL])
def test_every_member_at_its_default_size(name, family, bfloat16, photos, tmp_path):
    start = time.perf_counter()
    size, errors = parity_check(name, name.partition(".")[0], family, photos[:2], None, tmp_path,
                                bfloat16=bfloat16, prepare=damp_residuals if family == "efficientnet" else None)
    print(f"\nPARITY {name} {size}px: {time.perf_counter() - start:.0f} s, worst relative error "
          f"{max(errors.values()):.1e}")


def test_without_config_the_tensors_decide(photos, tmp_path, caplog):
    """A snapshot folder without config.json: the arch from the tensors, said in the log; a fresh head's width too
    (the forward stops at stage2, which keeps the test short)."""
    _model, images, ref = snapshot_and_reference("efficientnet_b0", "efficientnet", photos[:2], 64,
                                                 tmp_path / "snap", seed=3, num_classes=7)
    (tmp_path / "snap" / "config.json").unlink()
    bundle = research.load(tmp_path / "snap")
    assert (bundle.spec.arch, bundle.spec.num_classes, bundle.preprocessing) == ("efficientnet_b0", 7, "torch")
    assert "no config.json" in caplog.text and "efficientnet_b0" in caplog.text
    timm_files.check(bundle.features(images, ["stage2"]), {"stage2": ref["stage2"]})


@pytest.mark.parametrize("name,args,message", [
    ("convnext_atto", dict(global_pool="max"), "global_pool='max'"),
    ("resnet18", dict(act_layer="silu"), "act_layer='silu'"),
    ("convnext_atto", dict(head_hidden_size=64), "head_hidden_size=64"),
])
def test_unsupported_model_args_are_refused(name, args, message, tmp_path):
    """An arg the family does not build is refused by name, whether it changes no shape (the pooling, the
    activation: these would otherwise load and compute something else) or some (an MLP head)."""
    timm_files.snapshot(timm_files.create(name, **args), tmp_path / "snap")
    with pytest.raises(UserError, match=message):
        research.load(tmp_path / "snap")


GOLDEN = SHARED / "golden" / "timm"
GOLDEN_NAME = "convnext_atto.d2_in1k"


def test_real_convnext_atto_snapshot_matches_timms_recorded_outputs():
    """timm's ImageNet convnext_atto on real photos: pre_logits and logits as timm recorded them."""
    if not (GOLDEN / GOLDEN_NAME / "model.safetensors").is_file():
        pytest.skip(f"{GOLDEN} is absent")
    images = np.load(GOLDEN / f"{GOLDEN_NAME}_images.npy")
    expected = dict(np.load(GOLDEN / f"{GOLDEN_NAME}_outputs.npz"))
    index = json.loads((GOLDEN / "index.json").read_text())["models"][GOLDEN_NAME]
    bundle = research.load(GOLDEN / GOLDEN_NAME)
    assert bundle.spec.arch == "convnext_atto" and images.shape[1] == index["size"] == bundle.meta["input"]["size"]
    assert bundle.preprocessing == preprocess.mean_std(index["mean"], index["std"])
    ours = bundle.features(images, bundle.spec.taps)  # every tap: the forward the 224 px parity case compiled
    assert set(timm_files.check(ours, expected)) == {"pre_logits", "logits"}
    assert (ours["logits"].argmax(-1) == expected["logits"].argmax(-1)).all()


def test_features_use_the_snapshots_eval_transform(tmp_path):
    """`research features` on image files with a resnet18.a1_in1k snapshot resizes as timm's eval transform does
    (shorter side to floor(N / 0.95), bicubic, centre crop) unless told otherwise: the file records it, and its
    features are timm's on timm's own transform of the same files."""
    timm = timm_files.timm_or_skip()
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for c in range(2):
        (tmp_path / "data" / f"class{c}").mkdir(parents=True)
        for i in range(3):
            smooth = np.kron(rng.integers(0, 256, (7, 9, 3)), np.ones((10, 10, 1))).astype(np.uint8)  # 70x90
            paths.append(tmp_path / "data" / f"class{c}" / f"{i}.png")
            Image.fromarray(smooth).save(paths[-1])
    model = timm_files.create("resnet18.a1_in1k", seed=1)
    timm_files.snapshot(model, tmp_path / "snap")
    out = tmp_path / "f.h5"
    assert cli.main(["features", "--weights", str(tmp_path / "snap"), "--data", str(tmp_path / "data"),
                     "--tap", "pre_logits", "--out", str(out), "--image-size", "64"]) == 0
    written = hdf5.read(out)
    assert written["attrs"]["resize_policy"] == {"resize": "shorter_center_crop", "interpolation": "bicubic",
                                                 "image_size": 64, "shorter_side": 67, "crop_pct": 0.95}
    config = timm.data.resolve_data_config({"input_size": (3, 64, 64)}, model=model)
    transform = timm.data.create_transform(**config)
    import torch
    with torch.no_grad():
        x = torch.stack([transform(Image.open(tmp_path / "data" / p).convert("RGB")) for p in written["paths"]])
        expected = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
    assert parity.relative_error(written["features"]["pre_logits"], expected) <= parity.FLOAT32


def test_finetune_runs_on_a_timm_convnext_snapshot(tmp_path):
    """`research finetune` on a timm snapshot as on a ResNet: a fresh 3-class head trained, everything else
    (LayerNorms and layer scales included) bit for bit as loaded; the workdir loads back with the snapshot's
    preprocessing and eval transform."""
    from flax import traverse_util

    from research.train import checkpoint, finetune
    from tests.train_fixtures import make_dataset, tiny_config

    timm_files.snapshot(timm_files.create("convnext_atto", seed=2), tmp_path / "snap")
    before = research.load(tmp_path / "snap")
    config = tiny_config(tmp_path / "snap", make_dataset(tmp_path / "data"), freeze="head", epochs=1)
    summary = finetune(config, tmp_path / "run", echo=lambda *_: None)
    assert summary["history"][-1]["step"] == 2 and np.isfinite(summary["test"]["loss"])
    trained = traverse_util.flatten_dict(checkpoint.restore_variables(tmp_path / "run")["params"], sep="/")
    loaded = traverse_util.flatten_dict(before.variables["params"], sep="/")
    assert trained["head/fc/kernel"].shape == (320, 3) and trained.keys() == loaded.keys()
    for path, value in loaded.items():
        if not path.startswith("head/"):
            assert np.array_equal(np.asarray(trained[path]), value), path
    after = research.load(tmp_path / "run")
    assert (after.spec.arch, after.spec.layout, after.spec.num_classes) == ("convnext_atto", "timm", 3)
    assert after.preprocessing == before.preprocessing and after.meta["input"] == before.meta["input"]
