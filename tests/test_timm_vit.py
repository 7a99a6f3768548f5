"""timm Vision Transformers (research/models/vit.py): parity with timm itself, and the snapshot forms.

timm models with random weights (norms, layer scales, tokens and position embeddings too) are written by timm's
own `save_for_hf` (safetensors and .bin) and loaded with `research.load(folder)` only; every tap and the logits
are compared with timm's at the trained size and at another one (position embeddings resampled; timm built with
`dynamic_img_size=True`). CI runs small members (2 blocks, narrow where the arch is wide) built by timm with
kwargs, which reach us through config.json's `model_args`; `python -m pytest -m full -s tests/test_timm_vit.py`
runs every listed arch at its default size and prints each one's time and worst error (README table).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import research
from research import parity
from research.cli import main
from research.errors import UserError
from research.features import dump, read
from research.features.dump import pool_tap, tap_pooling
from research.models import ModelSpec
from research.train import freeze
from tests import timm_files
from tests.conftest import SHARED, resize
from tests.test_features_dump import make_folder
from tests.test_train_freeze import params_of, trainable_modules

timm_files.timm_or_skip()

NARROW = dict(depth=2, embed_dim=64, num_heads=2)
# (id, timm architecture, timm.create_model kwargs, another input size)
CASES = [
    ("vit_tiny", "vit_tiny_patch16_224", dict(depth=2), 64),
    ("deit_distilled", "deit_tiny_distilled_patch16_224", NARROW, 96),
    ("deit3", "deit3_small_patch16_224", NARROW, 112),
    ("dinov2_giant_swiglu", "vit_giant_patch14_dinov2", dict(NARROW, embed_dim=96, img_size=98), 140),
    ("dinov2_reg4", "vit_small_patch14_reg4_dinov2", NARROW, 224),  # trained 518 px (37x37) -> 16x16
    ("clip_quickgelu_arg", "vit_base_patch16_clip_224", dict(NARROW, act_layer="quick_gelu", num_classes=32), 80),
    ("clip_b32_avg", "vit_base_patch32_clip_quickgelu_224", dict(NARROW, global_pool="avg"), 160),
    ("map_patch8_no_cls", "vit_tiny_patch16_224",
     dict(NARROW, patch_size=8, class_token=False, global_pool="map", img_size=64), 48),
    ("mae", "vit_base_patch16_224", dict(NARROW, num_classes=0), 96),
]
FULL = ["vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224", "vit_large_patch16_224",
        "deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224",
        "deit_tiny_distilled_patch16_224", "deit_small_distilled_patch16_224", "deit_base_distilled_patch16_224",
        "deit3_small_patch16_224", "deit3_base_patch16_224", "deit3_large_patch16_224",
        "vit_small_patch14_dinov2", "vit_base_patch14_dinov2", "vit_large_patch14_dinov2",
        "vit_small_patch14_reg4_dinov2", "vit_base_patch14_reg4_dinov2", "vit_large_patch14_reg4_dinov2",
        "vit_base_patch16_clip_224", "vit_base_patch16_clip_quickgelu_224", "vit_base_patch32_clip_224",
        "vit_base_patch32_clip_quickgelu_224", ("vit_base_patch16_224", dict(num_classes=0)),
        "vit_giant_patch14_dinov2", "vit_giant_patch14_reg4_dinov2"]
GIANT_MEMORY = 24 << 30  # timm's model (4.5 GB), the snapshot read back, our variables, both forwards
GOLDEN = SHARED / "golden" / "timm"
GOLDEN_TAG = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"


def available_memory() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith("MemAvailable"))


def timm_taps(model) -> dict:
    """Our tap -> where timm has it: `norm_pre` (an Identity without CLIP's pre-norm) is what enters block 1."""
    taps = {"patch_embed": "norm_pre", **{f"block{i + 1}": f"blocks.{i}" for i in range(len(model.blocks))},
            "norm": "norm", "pre_logits": timm_files.PRE_LOGITS}
    return {**taps, "logits": timm_files.LOGITS} if model.num_classes else taps


def compare(bundle, model, images, dtype="float32", tolerance=parity.FLOAT32) -> dict:
    taps = timm_taps(model)
    ref = timm_files.reference(model, images, taps)
    ours = {k: np.asarray(v, np.float32) for k, v in bundle.features(images, taps=list(taps), dtype=dtype).items()}
    return timm_files.check(ours, ref, tolerance)


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    """{case id: (timm model, safetensors folder, .bin folder)}, built on first use."""
    made = {}

    def get(case):
        if case[0] not in made:
            name, kwargs = case[1], case[2]
            model = timm_files.create(name, seed=len(case[0]), dynamic_img_size=True, **kwargs)
            root = tmp_path_factory.mktemp(case[0])
            made[case[0]] = (model, timm_files.snapshot(model, root / "safetensors"),
                             timm_files.snapshot(model, root / "bin", safetensors=False))
        return made[case[0]]
    return get


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_parity_with_timm(case, snapshots, photos):
    model, safe, bin_ = snapshots(case)
    bundle = research.load(safe)
    size = model.patch_embed.img_size[0]
    assert bundle.spec.input_size == size and bundle.spec.arch == case[1]
    compare(bundle, model, resize(photos[:2], size))
    compare(bundle, model, resize(photos[2:], case[3]))  # position embeddings resampled as timm does
    from_bin = research.load(bin_)
    assert from_bin.spec == bundle.spec
    jax.tree.map(np.testing.assert_array_equal, from_bin.variables, bundle.variables)


@pytest.mark.parametrize("old,new", [(37, (16, 16)), (14, (4, 4)), (7, (10, 10)), (14, (6, 9))])
def test_resample_pos_embed_is_torch_antialiased_bicubic(old, new):
    """timm's resample_abs_pos_embed calls F.interpolate(bicubic, antialias=True) (its default), which is not
    torch's plain bicubic (Keys a=-0.75, clamped borders) but a=-0.5 with renormalised borders, as JAX's."""
    import torch
    import torch.nn.functional as F
    from research.models.vit import resample_pos_embed
    grid = np.random.default_rng(old).normal(size=(1, old, old, 8)).astype(np.float32)
    ours = np.asarray(resample_pos_embed(grid.reshape(1, old * old, 8), new)).reshape(1, *new, 8)
    nchw = torch.from_numpy(grid).permute(0, 3, 1, 2)
    torch_aa, torch_plain = (F.interpolate(nchw, size=new, mode="bicubic", antialias=aa).permute(0, 2, 3, 1).numpy()
                             for aa in (True, False))
    assert parity.relative_error(ours, torch_aa) <= parity.FLOAT32
    assert parity.relative_error(ours, torch_plain) > 10 * parity.FLOAT32


def test_bfloat16_within_tolerance(snapshots, photos):
    model, safe, _ = snapshots(CASES[4])
    compare(research.load(safe), model, resize(photos[:2], 112), dtype="bfloat16", tolerance=parity.BFLOAT16)


def test_golden_real_snapshot():
    """Real AugReg weights on real photos against timm's recorded pre_logits and logits."""
    folder = GOLDEN / GOLDEN_TAG
    if not (folder / "model.safetensors").is_file():
        pytest.skip(f"{folder} is absent")
    bundle = research.load(folder)
    assert (bundle.spec.arch, bundle.spec.include_top, bundle.spec.num_classes) == ("vit_tiny_patch16_224", True, 1000)
    assert bundle.meta["input"] == {"size": 224, "interpolation": "bicubic", "crop_pct": 0.9, "crop_mode": "center"}
    assert bundle.preprocessing == "mean_std:0.5,0.5,0.5/0.5,0.5,0.5"
    images = np.load(GOLDEN / f"{GOLDEN_TAG}_images.npy")
    ref = dict(np.load(GOLDEN / f"{GOLDEN_TAG}_outputs.npz"))
    ours = bundle.features(images, taps=("pre_logits", "logits"))
    timm_files.check(ours, ref)
    assert (np.argmax(ours["logits"], -1) == np.argmax(ref["logits"], -1)).all()


def test_hub_cache_layout(snapshots, tmp_path):
    """models--timm--NAME with refs/main and snapshots/<rev>/ whose files are symlinks into blobs/."""
    _, safe, _ = snapshots(CASES[1])
    entry = tmp_path / "hub" / "models--timm--deit_tiny_distilled_patch16_224"
    rev = "0123456789abcdef0123456789abcdef01234567"
    (entry / "blobs").mkdir(parents=True)
    (entry / "snapshots" / rev).mkdir(parents=True)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(rev)
    for i, name in enumerate(("config.json", "model.safetensors")):
        shutil.copy(safe / name, entry / "blobs" / f"blob{i}")
        os.symlink(f"../../blobs/blob{i}", entry / "snapshots" / rev / name)
    direct = research.load(safe)
    for path in (entry, entry / "snapshots" / rev, entry / "snapshots" / rev / "model.safetensors"):
        loaded = research.load(path)
        assert loaded.spec == direct.spec and loaded.meta["preprocessing"] == direct.meta["preprocessing"]
        jax.tree.map(np.testing.assert_array_equal, loaded.variables, direct.variables)


@pytest.mark.parametrize("name", ["deit_tiny_distilled_patch16_224", "vit_small_patch14_reg4_dinov2",
                                  "deit3_small_patch16_224"])
def test_without_config_the_arch_is_detected_and_logged(name, tmp_path, caplog):
    model = timm_files.create(name, seed=3)
    timm_files.snapshot(model, tmp_path / "full")
    (tmp_path / "bare").mkdir()
    shutil.copy(tmp_path / "full" / "model.safetensors", tmp_path / "bare")
    with caplog.at_level(logging.WARNING):
        bare = research.load(tmp_path / "bare")
    assert bare.spec.arch == name and f"look like timm's {name}" in caplog.text
    jax.tree.map(np.testing.assert_array_equal, bare.variables, research.load(tmp_path / "full").variables)


def test_bad_snapshots_are_one_line(snapshots, tmp_path):
    _, safe, _ = snapshots(CASES[0])
    config = json.loads((safe / "config.json").read_text())

    def folder(name, **changes):
        out = tmp_path / name
        out.mkdir()
        shutil.copy(safe / "model.safetensors", out)
        (out / "config.json").write_text(json.dumps({**config, **changes}))
        return out
    for changes, message in (
            (dict(architecture="vit_small_patch16_224"), "does not fit vit_small_patch16_224"),
            (dict(model_args={**config["model_args"], "qk_norm": True}), "qk_norm=True"),
            (dict(model_args={**config["model_args"], "global_pool": "avgmax"}), "global_pool 'avgmax'"),
            (dict(architecture="vit_huge_patch14_224"), "'vit_huge_patch14_224' is not supported")):
        with pytest.raises(UserError, match=message) as e:
            research.load(folder(f"case{len(list(tmp_path.iterdir()))}", **changes))
        assert "\n" not in str(e.value)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(safe / "model.safetensors", bare)  # 2 blocks: no timm arch at its defaults
    with pytest.raises(UserError, match="config.json .* is needed"):
        research.load(bare)


def test_distilled_fresh_head_reads_pre_logits(snapshots, photos):
    model, safe, _ = snapshots(CASES[1])
    fresh = research.load(safe).with_head(5, image_size=96)
    assert set(fresh.variables["params"]["head"]) == {"fc"}
    out = fresh.features(resize(photos[:2], 96), taps=("pre_logits", "logits"))
    fc = fresh.variables["params"]["head"]["fc"]
    np.testing.assert_allclose(out["logits"], out["pre_logits"] @ fc["kernel"] + fc["bias"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec,name,expected", [
    (ModelSpec("vit_base_patch16_224", "timm", num_classes=10), "head", ["head"]),
    (ModelSpec("vit_base_patch16_224", "timm", num_classes=10), "top_block", ["block12", "head", "norm"]),
    (ModelSpec("vit_large_patch16_224", "timm", num_classes=10), "top_block", ["block24", "head", "norm"]),
    (ModelSpec("vit_base_patch16_224", "timm", num_classes=10, options={"depth": 3}), "top_block",
     ["block3", "head", "norm"]),
    (ModelSpec("vit_base_patch16_224", "timm", num_classes=10), "from:block11", ["block11", "block12", "head", "norm"]),
    (ModelSpec("vit_base_patch16_224", "timm", num_classes=10, options={"global_pool": "map"}), "from:pre_logits",
     ["attn_pool", "head"]),
    (ModelSpec("vit_base_patch16_224", "timm", num_classes=10, options={"global_pool": "avg"}), "from:norm",
     ["fc_norm", "head"]),
    (ModelSpec("vit_small_patch14_reg4_dinov2", "timm", num_classes=10), "from:patch_embed",
     ["patch_embed", *sorted(f"block{i}" for i in range(1, 13)), "head", "norm"]),
])
def test_freeze_presets(spec, name, expected):
    plan = freeze.plan(name, spec.family, params_of(spec))
    assert sorted(trainable_modules(plan)) == sorted(expected)


def test_token_pooling():
    tokens = np.random.default_rng(0).normal(size=(2, 1 + 4 + 9, 8)).astype(np.float32)
    prefix = ("cls", "reg1", "reg2", "reg3", "reg4")
    patches = tokens[:, 5:]
    expected = {"cls": tokens[:, 0], "avg": patches.mean(1), "max": patches.max(1),
                "cls+avg": np.concatenate([tokens[:, 0], patches.mean(1)], -1), "flatten": tokens.reshape(2, -1)}
    for pool, want in expected.items():
        np.testing.assert_allclose(pool_tap(tokens, pool, prefix), want, rtol=1e-6)
    np.testing.assert_allclose(pool_tap(tokens, None, prefix), tokens[:, 0])
    assert tap_pooling(None, 3, ("reg1",)) == "avg" and tap_pooling(None, 3, ()) == "avg"
    assert tap_pooling(None, 4, prefix) == "avg" and tap_pooling("cls", 2, prefix) == "none"
    with pytest.raises(UserError, match="needs a class token"):
        tap_pooling("cls+avg", 3, ())
    with pytest.raises(UserError, match="for token taps"):
        tap_pooling("cls", 4, ())


def test_features_pool_token_taps(tmp_path):
    """`research features` on a DINOv2-style snapshot: cls by default, avg of the patch tokens, cls+avg."""
    model = timm_files.create("vit_small_patch14_reg4_dinov2", seed=5, depth=1, embed_dim=32, num_heads=2,
                              img_size=56)
    weights = timm_files.snapshot(model, tmp_path / "snapshot")
    data = make_folder(tmp_path / "data", per_class=2, bad=False)
    files = {pool: dump(weights, data, ["block1", "pre_logits"], tmp_path / f"{pool}.h5", pool=pool, batch_size=4)
             for pool in (None, "avg")}
    assert main(["features", "--weights", str(weights), "--data", str(data), "--tap", "block1", "--tap",
                 "pre_logits", "--pool", "cls+avg", "--batch-size", "4", "--out", str(tmp_path / "both.h5")]) == 0
    got = {pool: read(result.out)["features"] for pool, result in files.items()}
    got["cls+avg"] = read(tmp_path / "both.h5")["features"]
    assert files[None].dims == {"block1": 32, "pre_logits": 32} and got["cls+avg"]["block1"].shape[1] == 64
    assert read(files[None].out)["attrs"]["pooling"] == "cls"  # block1's; pre_logits is a vector ("none")
    cls, avg, both = (got[p]["block1"] for p in (None, "avg", "cls+avg"))
    np.testing.assert_array_equal(both, np.concatenate([cls, avg], -1))
    assert not np.allclose(cls, avg, atol=1e-3)
    # one block: pre_logits is the final LayerNorm of block1's class token (the token the default picks)
    norm = research.load(weights).variables["params"]["norm"]
    mean, var = cls.mean(-1, keepdims=True), cls.var(-1, keepdims=True)
    np.testing.assert_allclose((cls - mean) / np.sqrt(var + 1e-6) * norm["scale"] + norm["bias"],
                               got[None]["pre_logits"], rtol=1e-4, atol=1e-4)


@pytest.mark.full
@pytest.mark.parametrize("entry", FULL, ids=[e if isinstance(e, str) else e[0] + "_headless" for e in FULL])
def test_full_arch_at_default_size(entry, tmp_path, photos):
    name, kwargs = (entry, {}) if isinstance(entry, str) else entry
    if "giant" in name and available_memory() < GIANT_MEMORY:
        pytest.skip(f"{name} needs about {GIANT_MEMORY >> 30} GiB of free memory")
    start = time.perf_counter()
    model = timm_files.create(name, seed=7, dynamic_img_size=True, **kwargs)
    bundle = research.load(timm_files.snapshot(model, tmp_path / name))
    size = bundle.spec.input_size
    images = resize(photos[:2 if size <= 224 else 1], size)
    errors = compare(bundle, model, images)
    bf16 = compare(bundle, model, images, dtype="bfloat16", tolerance=parity.BFLOAT16)
    print(f"\n| {name}{' (no head)' if kwargs else ''} | {size} px | {time.perf_counter() - start:.0f} s | "
          f"{max(errors.values()):.1e} | {max(bf16.values()):.1e} |")


def test_finetune_last_blocks_with_layer_decay(tmp_path):
    """`research finetune` on a DINOv2-style snapshot with `last:1` and layer-wise decay: the earlier block, the
    patch embedding and the tokens stay bit for bit as loaded (LayerNorms included); the last block trains at
    `layer_decay` times the head's rate; the workdir loads back as the same timm arch."""
    from flax import traverse_util

    from research.train import checkpoint, finetune, freeze
    from tests.train_fixtures import make_dataset, tiny_config

    model = timm_files.create("vit_small_patch14_reg4_dinov2", seed=8, depth=2, embed_dim=32, num_heads=2,
                              img_size=28)
    timm_files.snapshot(model, tmp_path / "snap")
    before = research.load(tmp_path / "snap")
    config = tiny_config(tmp_path / "snap", make_dataset(tmp_path / "data", size=28), freeze="last:1",
                         layer_decay=0.5, image_size=28, epochs=1)
    plan = freeze.plan("last:1", before.spec.family, before.variables["params"], layer_decay=0.5)
    assert before.spec.num_classes == 0 and plan.rules["norm/scale"] == "lr*1"  # DINOv2: no head of its own
    assert plan.rules["block2/attn/qkv/kernel"] == "lr*0.5"
    assert plan.rules["block1/attn/qkv/kernel"] == plan.rules["patch_embed/cls_token"] == freeze.FROZEN

    summary = finetune(config, tmp_path / "run", echo=lambda *_: None)
    assert np.isfinite(summary["test"]["loss"])
    trained = traverse_util.flatten_dict(checkpoint.restore_variables(tmp_path / "run")["params"], sep="/")
    loaded = traverse_util.flatten_dict(before.variables["params"], sep="/")
    for path, value in loaded.items():
        if path.startswith(("block1/", "patch_embed/")):  # the tokens and position embeddings live there
            assert np.array_equal(np.asarray(trained[path]), value), path
    assert not np.array_equal(np.asarray(trained["block2/attn/qkv/kernel"]), loaded["block2/attn/qkv/kernel"])
    after = research.load(tmp_path / "run")
    assert (after.spec.arch, after.spec.layout, after.spec.num_classes) == (before.spec.arch, "timm", 3)
