"""The timm snapshot reader's own parts: where the weights are, how they are read, what the config says. The
families' parity through it is in tests/test_timm_*.py."""
from __future__ import annotations

import json
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from research import preprocess, weights
from research.data import resize
from research.errors import UserError
from research.weights import timm


def _snapshot(folder: Path, architecture: str = "not_a_model", **cfg) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": architecture, "pretrained_cfg": cfg}))
    return folder


def test_safetensors_are_upcast_from_bfloat16_and_float16(tmp_path):
    values = np.array([[1.5, -2.25, 3.0e-3]], np.float32)
    save_file({"bf16": values.astype(ml_dtypes.bfloat16), "f16": values.astype(np.float16), "f32": values},
              str(tmp_path / "m.safetensors"))
    got = timm.read_tensors(tmp_path / "m.safetensors")
    assert all(v.dtype == np.float32 for v in got.values())
    np.testing.assert_array_equal(got["f32"], values)
    np.testing.assert_array_equal(got["bf16"], values.astype(ml_dtypes.bfloat16).astype(np.float32))
    np.testing.assert_array_equal(got["f16"], values.astype(np.float16).astype(np.float32))


def test_a_damaged_safetensors_file_is_one_line(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        timm.read_tensors(path)


def test_snapshot_folder_file_and_hub_cache_are_found(tmp_path):
    folder = _snapshot(tmp_path / "plain")
    assert timm.weight_file(folder) == folder / "model.safetensors"
    assert weights.sniff(folder) == weights.sniff(folder / "model.safetensors") == "timm"

    # The hub cache: refs/main names the snapshot; the files are links into blobs/.
    entry = tmp_path / "hub" / "models--timm--tiny"
    (entry / "blobs").mkdir(parents=True)
    for name in ("model.safetensors", "config.json"):
        os.replace(folder / name, entry / "blobs" / name)
    for rev in ("0123abc", "fedcba9"):
        (entry / "snapshots" / rev).mkdir(parents=True)
        for name in ("model.safetensors", "config.json"):
            (entry / "snapshots" / rev / name).symlink_to(Path("../../blobs") / name)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("fedcba9\n")
    assert timm.weight_file(entry) == entry / "snapshots" / "fedcba9" / "model.safetensors"
    assert weights.sniff(entry) == "timm"
    (entry / "refs" / "main").unlink()
    with pytest.raises(UserError, match="2 snapshots and no refs/main"):
        timm.weight_file(entry)


def test_a_bin_file_is_timm_only_with_timm_config_beside_it(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02")
    assert not timm.claims(tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "resnet50"}))
    assert timm.claims(tmp_path / "pytorch_model.bin")


def test_unknown_architecture_names_the_supported_ones(tmp_path):
    with pytest.raises(UserError, match="timm architecture 'not_a_model' is not supported; supported:"):
        weights.convert(_snapshot(tmp_path / "s"))


def test_a_folder_without_weights_is_one_line(tmp_path):
    with pytest.raises(UserError, match="nor a timm snapshot"):
        weights.sniff(tmp_path)


def test_config_without_architecture_is_one_line(tmp_path):
    folder = _snapshot(tmp_path / "s")
    (folder / "config.json").write_text(json.dumps({"num_classes": 3}))
    with pytest.raises(UserError, match="not a timm config"):
        timm.read_config(folder)


def test_mean_std_names_are_self_describing_and_exact():
    clip = preprocess.mean_std((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    assert preprocess.mean_std(preprocess.TORCH_MEAN, preprocess.TORCH_STD) == "torch"
    images = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    want = (images / 255.0 - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array(
        [0.26862954, 0.26130258, 0.27577711])
    np.testing.assert_allclose(np.asarray(preprocess.apply(clip, images)), want, rtol=1e-6, atol=1e-6)
    assert "0.26862954" in preprocess.describe(clip)
    with pytest.raises(UserError, match="std positive"):
        preprocess.mean_std((0.5, 0.5, 0.5), (0.5, 0.0, 0.5))
    with pytest.raises(UserError, match="unreadable preprocessing"):
        preprocess.apply("mean_std:a,b/c", images)


@pytest.mark.parametrize("size, crop_pct, side", [(224, 0.875, 256), (224, 0.9, 248), (224, 0.95, 235),
                                                  (288, 1.0, 288)])
def test_timm_crop_pct_floors_the_shorter_side(size, crop_pct, side):
    """timm's eval transform: Resize(floor(size / crop_pct)) then CenterCrop(size)."""
    policy = resize.policy("shorter_center_crop", "bicubic", crop_pct=crop_pct)
    assert policy.record(size)["shorter_side"] == side
    assert policy.record(size)["crop_pct"] == crop_pct
    image = np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    assert policy.apply(image, size).shape == (size, size, 3)


def test_torchvision_rounding_is_kept_without_crop_pct():
    assert resize.policy("shorter_center_crop").record(299)["shorter_side"] == 342  # round(341.7)
    assert "crop_pct" not in resize.policy("shorter_center_crop").record(299)
