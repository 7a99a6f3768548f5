"""Features of a dataset at chosen taps, dumped once to HDF5 (`dump`) and read back by probes (`read`)."""
from __future__ import annotations

from research.features.dump import dump
from research.features.hdf5 import is_complete, read, stitch

__all__ = ["dump", "is_complete", "read", "stitch"]
