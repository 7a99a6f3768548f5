"""What a wheel holds: every research subpackage, and configs/ and benchmarks/ as research.configs and
research.benchmarks. (.ci/wheel_check installs the wheel into a fresh venv and runs the commands.)"""
from __future__ import annotations

import tomllib
from pathlib import Path

import setuptools

from research import resources

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package_and_maps_the_shipped_folders():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set(setuptools.find_packages(str(ROOT), include=["research", "research.*"]))
    assert found <= set(setup["packages"]), f"add {sorted(found - set(setup['packages']))} to pyproject.toml"
    assert setup["package-dir"] == {"research.configs": "configs", "research.benchmarks": "benchmarks"}
    for name in ("research.configs", "research.configs.repro", "research.benchmarks"):
        assert name in setup["packages"]


def test_shipped_configs_are_found_by_the_names_the_docs_use(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the shipped one is used
    assert resources.config_path("configs/finetune_head.py") == resources.folder("configs") / "finetune_head.py"
    assert resources.config_path("configs/repro/seed002_vgg16_logreg_flowers17.py").is_file()
    own = tmp_path / "configs" / "finetune_head.py"
    own.parent.mkdir()
    own.write_text("def get_config():\n    return {}\n")
    assert resources.config_path("configs/finetune_head.py") == Path("configs/finetune_head.py")  # the user's own
    assert resources.benchmark("run").add_arguments
