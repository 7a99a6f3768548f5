"""Converted weights on disk: an orbax checkpoint of {params, batch_stats} plus `research.json`.

A fine-tuning workdir (research.train) has the same `research.json`, with a `finetune` entry, and its
variables come from its best (else latest) checkpoint.

`research.json` carries what downstream code must not guess: the model spec, the preprocessing the weights
expect, and the source file's name and sha256. Outputs are written under a temporary name and renamed when
complete (`research.io`), and an existing output is replaced only when asked and only if it is a converted
checkpoint.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp

from research import io
from research.errors import UserError

META_FILE = "research.json"
VARIABLES_DIR = "variables"


def is_checkpoint(path) -> bool:
    return (Path(path) / META_FILE).is_file()


def is_converted(path) -> bool:
    """A folder `save` wrote (its metadata and variables, nothing else): the only folder --overwrite replaces.
    A fine-tuning workdir is not one."""
    path = Path(path)
    try:
        meta = json.loads((path / META_FILE).read_text())
        entries = {p.name for p in path.iterdir()}
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "finetune" not in meta and entries <= {META_FILE, VARIABLES_DIR}


def save(out, variables: dict, meta: dict, overwrite: bool = False) -> Path:
    out = Path(out).absolute()
    if not out.parent.is_dir():
        with io.writing(out.parent):
            out.parent.mkdir(parents=True)
    io.check_out(out, overwrite, ours=is_converted, what="a converted checkpoint", folder=True)
    with io.lock(out):
        io.check_out(out, overwrite, ours=is_converted, what="a converted checkpoint", folder=True)
        io.check_space(out.parent, sum(np.asarray(x).nbytes for x in _leaves(variables)), out)
        tmp = io.temp_dir(out)
        try:
            with io.writing(out):
                with ocp.StandardCheckpointer() as ckpt:
                    ckpt.save(tmp / VARIABLES_DIR, variables)
                io.write_json(tmp / META_FILE, meta)
            io.replace_dir(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def load(path) -> tuple[dict, dict]:
    """-> (variables as numpy float32, meta)."""
    path = Path(path).absolute()
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a converted checkpoint ({e})") from None
    if "finetune" in meta:  # a fine-tuning workdir: its best (else latest) checkpoint
        from research.train.checkpoint import restore_variables
        try:
            return _to_numpy(restore_variables(path)), meta
        except FileNotFoundError as e:
            raise UserError(f"{path}: a fine-tuning workdir with no checkpoint yet") from e
    with ocp.StandardCheckpointer() as ckpt:
        variables = ckpt.restore(path / VARIABLES_DIR)
    return _to_numpy(variables), meta


def _leaves(tree):
    return [x for v in tree.values() for x in _leaves(v)] if isinstance(tree, dict) else [tree]


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree, np.float32)
