"""Datasets: `research.data.open(spec)` is the one way in for data; see DESIGN.md's path of the data.

open -> Source (records, class names, given splits) -> splits.stratified (seeded split) ->
loader.batches (decode, resize, batch, prefetch) -> uint8 batches; pack.write stores the decoded result once;
augment.augment (on device, jitted; imported on its own so that listing data never loads JAX) perturbs them.
"""
from __future__ import annotations

from research.data.decode import BadImage, SkipLog, decode
from research.data.loader import batches, ordering, shard
from research.data.resize import ResizePolicy, policy
from research.data.sources import SPLITS, Record, Source, open_source
from research.data.splits import Split, stratified


def open(spec) -> Source:  # noqa: A001 - the design's name; shadows the builtin only in this module
    """A Source for a class-folder tree, a train/validation/test tree, a pack (.h5), or tfds:NAME."""
    return open_source(spec)


__all__ = ["BadImage", "Record", "ResizePolicy", "SPLITS", "SkipLog", "Source", "Split", "batches", "decode",
           "open", "ordering", "policy", "shard", "stratified"]
