"""Multi-process dumping: two processes each dump a contiguous shard, and `stitch` joins the shard files into
one whose `features` is an HDF5 virtual dataset over them."""
from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest

from research.cli import main
from research.errors import UserError
from research.features import dump, read
from research.features.hdf5 import stitch
from tests.test_features_dump import make_folder, write_vgg

def shard_command(weights, data, out, index):
    return [sys.executable, "-m", "research.cli", "features", "--weights", str(weights), "--data", str(data),
            "--tap", "block2_pool", "--tap", "block4_pool", "--image-size", "32", "--batch-size", "4",
            "--out", str(out), "--shard", f"{index}/2"]


def test_two_processes_stitch_into_one_file(tmp_path, monkeypatch):
    weights, data = write_vgg(tmp_path / "vgg.h5"), make_folder(tmp_path / "animals")
    shards = [tmp_path / f"f.shard{i}.h5" for i in range(2)]
    procs = [subprocess.Popen(shard_command(weights, data, s, i), stderr=subprocess.PIPE, text=True)
             for i, s in enumerate(shards)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    out = tmp_path / "f.h5"
    assert main(["stitch", str(out), *map(str, shards)]) == 0
    whole = dump(weights, data, ["block2_pool", "block4_pool"], tmp_path / "whole.h5", image_size=32, batch_size=4)
    monkeypatch.chdir(tmp_path.parent)  # the virtual dataset finds its shards beside the file, not the cwd
    joined, reference = read(out), read(whole.out)
    assert joined["paths"] == reference["paths"] and len(joined["paths"]) == 30
    np.testing.assert_array_equal(joined["labels"], reference["labels"])
    for tap in ("block2_pool", "block4_pool"):
        np.testing.assert_allclose(joined["features"][tap], reference["features"][tap], rtol=1e-6, atol=1e-6)
    with h5py.File(out, "r") as f:
        assert f["block2_pool/features"].is_virtual and f["block2_pool"].attrs["pooling"] == "avg"
    attrs = joined["attrs"]
    assert attrs["shards"] == ["f.shard0.h5", "f.shard1.h5"] and attrs["skipped_count"] == 1
    with pytest.raises(UserError, match="expected shards 0..1"):
        stitch(tmp_path / "g.h5", shards[::-1])
    assert main(["features", "--weights", str(weights), "--data", str(data), "--tap", "block2_pool",
                 "--out", str(tmp_path / "h.h5"), "--shard", "2/2"]) == 2
