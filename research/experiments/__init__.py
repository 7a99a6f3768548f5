"""Reproductions of published transfer-learning numbers: `configs/repro/NAME.py` files, found by name.

Each file's `get_config()` says what the experiment is (`kind`: finetune or probe), where the number comes
from, the number, and which weights and data it needs; `reproduce.run` does the rest. The files live in the
source checkout beside the package, like configs/ and benchmarks/.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections

from research import resources
from research.errors import UserError

KINDS = ("finetune", "probe")
# test_<M>: the probe's (or the fine-tune's test report's) metric M on the test split (`research.probe.metrics`).
METRICS = ("test_accuracy", "validation_accuracy", "test_mean_per_class_accuracy", "test_voc07_map")


def names() -> list[str]:
    """Every experiment, sorted."""
    return sorted(p.stem for p in repro_dir().glob("*.py") if not p.name.startswith("_"))


def repro_dir() -> Path:
    return resources.folder("configs") / "repro"


def get(name: str) -> ml_collections.ConfigDict:
    """The experiment's config, checked; a UserError names the known ones for a typo."""
    known = names()
    if name not in known:
        raise UserError(f"unknown experiment {name!r}; `research reproduce --list` shows the {len(known)} known")
    path = repro_dir() / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"research_repro_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.name = name
    config.doc = (module.__doc__ or "").strip()
    _check(config, path)
    return config


def _check(config, path) -> None:
    if config.kind not in KINDS or config.metric not in METRICS:
        raise UserError(f"{path}: kind must be one of {KINDS} and metric one of {METRICS}")
    if config.kind == "finetune" and not resources.shipped_config(config.finetune.config).is_file():
        raise UserError(f"{path}: its fine-tuning config {config.finetune.config} does not exist")
