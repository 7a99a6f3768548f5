"""A `research features` run killed with SIGKILL after its first flush resumes to the same bytes.

The run is held mid-dataset from the outside (`tests.holding`: its image reader waits before one file) after
the earlier rows have been flushed. The test polls the partial file's progress mark, kills the process, and
runs the same command again.
"""
from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np

from research.features import dump, hdf5, read
from research.features.dump import partial_path
from research.io import lock_path
from tests.holding import held, progress, wait_for_flush
from tests.test_features_dump import make_folder, write_vgg

HELD = "fox/05.png"  # record 25 of 30; rows 0..23 are flushed before the loader reaches it


def command(weights, data, out):
    return [sys.executable, "-m", "research.cli", "features", "--weights", str(weights), "--data", str(data),
            "--tap", "block3_pool", "--pool", "max", "--image-size", "32", "--batch-size", "4",
            "--buffer-size", "8", "--out", str(out)]


def test_sigkill_then_resume_gives_identical_features(tmp_path):
    weights = tmp_path / "vgg.h5"
    write_vgg(weights)
    data = make_folder(tmp_path / "animals", bad=False)
    out = tmp_path / "resumed.h5"
    proc = held(HELD, tmp_path / "never", command(weights, data, out)[3:])
    try:
        wait_for_flush(proc, partial_path(out))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    rows = progress(partial_path(out))  # read again: a later flush may have landed before the kill
    assert 0 < rows < 30 and rows % 4 == 0 and not out.exists() and not hdf5.is_complete(partial_path(out))
    assert lock_path(out).exists()  # left by the killed run: stale, since its holder is gone

    again = subprocess.run(command(weights, data, out), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"resumed at row {rows}" in again.stdout and not partial_path(out).exists()
    assert not lock_path(out).exists()

    clean = dump(weights, data, ["block3_pool"], tmp_path / "clean.h5", pool="max", image_size=32, batch_size=4,
                 buffer_size=8)
    resumed, reference = read(out), read(clean.out)
    assert resumed["features"]["block3_pool"].tobytes() == reference["features"]["block3_pool"].tobytes()
    assert resumed["paths"] == reference["paths"] and len(resumed["paths"]) == 30
    np.testing.assert_array_equal(resumed["labels"], reference["labels"])
    assert resumed["attrs"]["args_hash"] == reference["attrs"]["args_hash"]
