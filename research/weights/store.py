"""Converted weights on disk: an orbax checkpoint of {params, batch_stats} plus `research.json`.

A fine-tuning workdir (research.train) has the same `research.json`, with a `finetune` entry, and its
variables come from its best (else latest) checkpoint.

`research.json` carries what downstream code must not guess: the model spec, the preprocessing the weights
expect, and the source file's name and sha256. Outputs are written under a temporary name and renamed when
complete, and an existing output is replaced only when asked.
"""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp

from research.errors import UserError

META_FILE = "research.json"
VARIABLES_DIR = "variables"


def is_checkpoint(path) -> bool:
    return (Path(path) / META_FILE).is_file()


def save(out, variables: dict, meta: dict, overwrite: bool = False) -> Path:
    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; pass --overwrite (overwrite=True) to replace it")
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir(parents=True)
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(tmp / VARIABLES_DIR, variables)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
        _replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _replace(tmp: Path, out: Path):
    """Swaps `tmp` into place; the old output is removed only after the new one is there."""
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()


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


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree, np.float32)
