"""Holding a `research` command mid-run from the outside, so tests can act while it is part-way through.

The command runs in a child Python whose image reader waits, before reading the file `held`, until the file
`release` exists; the code under test is unchanged. (A named pipe used to do this, but images are now read only
from regular files, so a pipe is skipped instead of blocking.)
"""
from __future__ import annotations

import subprocess
import sys
import time

import h5py
import pytest

from research.features import hdf5

SCRIPT = """
import importlib, os, sys, time
decode = importlib.import_module("research.data.decode")
held, release = sys.argv[1], sys.argv[2]
real = decode.read_file
def read_file(path, limit=None):
    if str(path).endswith(held):
        while not os.path.exists(release):
            time.sleep(0.02)
    return real(path, limit)
decode.read_file = read_file
from research.cli import main
sys.exit(main(sys.argv[3:]))
"""


def held(held_path: str, release, args: list) -> subprocess.Popen:
    """`research ARGS` in a child that stops before reading any path ending in `held_path` until `release`
    exists."""
    return subprocess.Popen([sys.executable, "-c", SCRIPT, held_path, str(release), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def progress(partial) -> int:
    """A partial's progress mark, read while another process writes it (0 until readable)."""
    try:
        with h5py.File(partial, "r", locking=False) as f:
            return int(f.attrs.get(hdf5.PROGRESS, 0))
    except (OSError, KeyError):
        return 0


def wait_for_flush(proc, partial, timeout: float = 90.0) -> int:
    """The first progress mark above zero, or a test failure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (status {proc.returncode}) before it was held: {proc.stderr.read()}")
        rows = progress(partial)
        if rows > 0:
            return rows
        time.sleep(0.05)
    pytest.fail("no flush within the timeout")
