"""Config files and --config.FIELD=VALUE overrides."""
from __future__ import annotations

from pathlib import Path

import pytest

from research.errors import UserError
from research.train import config

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_load(path):
    c = config.load(path)
    assert config.phases(c)
    assert "research finetune --config" in path.read_text()


def write(tmp_path, body="c.epochs = 2"):
    path = tmp_path / "c.py"
    path.write_text(f"import ml_collections\n\ndef get_config():\n    c = ml_collections.ConfigDict()\n"
                    f"    {body}\n    return c\n")
    return path


def test_overrides_are_typed(tmp_path):
    c = config.load(write(tmp_path), ["--config.learning_rate=1e-4", "--config.optimizer.name=sgd",
                                      "--config.optimizer.nesterov=true", "--config.epochs=3",
                                      "--config.head.hidden=(64,32)", "--config.freeze=from:stage3",
                                      "--config.learning_rate=1"])
    assert c.learning_rate == 1.0 and c.optimizer.name == "sgd" and c.optimizer.nesterov is True
    assert c.epochs == 3 and c.head.hidden == (64, 32) and c.freeze == "from:stage3"


@pytest.mark.parametrize("override,message", [
    ("--config.epochs=many", "epochs: 'many' is not a int"),
    ("--config.optimiser.name=sgd", "unknown config field 'optimiser.name'"),
    ("--config.optimizer.nme=sgd", "unknown config field 'optimizer.nme'"),
    ("--epochs=3", "write --config.FIELD=VALUE"),
    ("--config.dtype=float16", "float32 or bfloat16"),
])
def test_override_errors(tmp_path, override, message):
    with pytest.raises(UserError, match=message):
        config.load(write(tmp_path), [override])


def test_phases_inherit_and_override(tmp_path):
    body = "c.phases = (dict(epochs=1), dict(freeze='all', learning_rate=1e-5, optimizer=dict(name='rmsprop')))"
    first, second = config.phases(config.load(write(tmp_path, body)))
    assert (first.freeze, first.optimizer.name, first.epochs) == ("head", "adam", 1)
    assert (second.freeze, second.optimizer.name, second.learning_rate) == ("all", "rmsprop", 1e-5)


def test_bad_phase_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="phase 1 must be a dict"):
        config.load(write(tmp_path, "c.phases = (dict(batch_size=3),)"))
    with pytest.raises(UserError, match="no such config file"):
        config.load(tmp_path / "nope.py")
