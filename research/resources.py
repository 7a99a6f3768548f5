"""The configs and benchmarks that ship with the package.

They stay at the top of the source tree (`configs/`, `benchmarks/`); the wheel installs them as the packages
`research.configs` and `research.benchmarks` (setuptools `package-dir` in pyproject.toml), found here through
importlib.resources, so an installed `research` runs `reproduce` and `bench` from any folder. A source tree run
without installing (PYTHONPATH) has no such packages: there the folders beside the package are used.
"""
from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import sys
from pathlib import Path

from research.errors import UserError

SOURCE_TREE = Path(__file__).resolve().parent.parent
SHIPPED = ("configs", "benchmarks")


def folder(name: str) -> Path:
    """The shipped `configs` or `benchmarks` folder."""
    try:
        return Path(str(importlib.resources.files(f"research.{name}")))
    except ModuleNotFoundError:
        pass
    if (SOURCE_TREE / name / "__init__.py").is_file():
        return SOURCE_TREE / name
    raise UserError(f"research.{name} is not installed and there is no {name}/ beside the package; "
                    f"reinstall research (pip install research)")


def config_path(path) -> Path:
    """A config file: `path` as given when it exists, else the shipped one it names (`configs/NAME.py`,
    `configs/repro/NAME.py`, or `NAME.py`), so commands from the docs run from any folder."""
    given = Path(path)
    if given.is_file():
        return given
    shipped = shipped_config(path)
    if shipped.suffix == ".py" and shipped.is_file():
        return shipped
    raise UserError(f"{path}: no such config file (shipped ones are in {folder('configs')})")


def shipped_config(path) -> Path:
    """The shipped config that `configs/NAME.py` (as the docs write it) or `NAME.py` names."""
    parts = Path(path).parts
    return folder("configs").joinpath(*(parts[1:] if parts[:1] == ("configs",) else parts))


def benchmark(name: str = "run"):
    """The module `research.benchmarks.<name>`; from an uninstalled source tree, its benchmarks/ imported
    under that package name (the benchmark modules import each other relatively)."""
    try:
        return importlib.import_module(f"research.benchmarks.{name}")
    except ModuleNotFoundError as e:
        if e.name != "research.benchmarks":
            raise
    package = folder("benchmarks")
    spec = importlib.util.spec_from_file_location("research.benchmarks", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["research.benchmarks"] = module
    spec.loader.exec_module(module)
    return importlib.import_module(f"research.benchmarks.{name}")
