"""Data-parallel dumping: four fake CPU devices give the features one device gives.

The batch size (6) is not a multiple of the device count and the row count (30) not a multiple of the batch,
so both the per-batch padding and the short last batch are exercised. The comparison is the project's
measure (research.parity: max|a - b| / max|b| over the tap), at 1e-6: XLA's CPU convolutions on per-device
batches of 2 may round differently from batches of 6, by ~1e-7 of the tap's scale, which an element-wise rtol
would flag on features near zero.
"""
from __future__ import annotations

import os
import subprocess
import sys

from research.features import dump, read
from research.parity import relative_error
from tests.test_features_dump import make_folder, write_vgg

SCRIPT = """
import sys, jax
from research.features import dump
assert jax.local_device_count() == 4, jax.local_devices()
dump(sys.argv[1], sys.argv[2], ["block3_pool", "block5_pool"], sys.argv[3], image_size=32, batch_size=6)
"""


def test_four_devices_match_one(tmp_path):
    weights = tmp_path / "vgg.h5"
    write_vgg(weights)
    data = make_folder(tmp_path / "animals", bad=False)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(weights), str(data), str(tmp_path / "four.h5")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    one = dump(weights, data, ["block3_pool", "block5_pool"], tmp_path / "one.h5", image_size=32, batch_size=6)
    four, single = read(tmp_path / "four.h5"), read(one.out)
    assert four["attrs"]["device_count"] == 4 and single["attrs"]["device_count"] == 1
    assert four["paths"] == single["paths"] and len(four["paths"]) == 30
    for tap in ("block3_pool", "block5_pool"):  # per-device batches of 2 vs 6 may sum in another order
        assert relative_error(four["features"][tap], single["features"][tap]) <= 1e-6, tap
