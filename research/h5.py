"""HDF5 values as plain Python, for the two file kinds we write (image packs and feature files): h5py hands
back bytes and numpy scalars, which neither JSON nor string comparison takes."""
from __future__ import annotations

import numpy as np


def plain(value):
    """An attribute value: bytes decoded, numpy scalars as Python ones, anything else as it is."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def strings(dataset) -> list[str]:
    """A string dataset as a list of str."""
    return [s.decode() if isinstance(s, bytes) else s for s in dataset[()]]
