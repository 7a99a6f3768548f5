"""`research sweep`: a 2x2 grid on the tiny fine-tuning fixtures; every cell runs once, a rerun reuses them all,
and the CSV, markdown table and plot are written."""
from __future__ import annotations

import csv

import pytest

from research import train
from research.errors import UserError
from research.experiments import sweep
from tests.train_fixtures import make_dataset, make_weights, tiny_config


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep_inputs")
    return tiny_config(make_weights(root / "weights"), make_dataset(root / "data"), freeze="head")


def test_grid_parsing_and_cell_names():
    grid = sweep.parse_grid(["freeze=head,from:stage2", "learning_rate=1e-3,1e-4"])
    assert grid == {"freeze": ["head", "from:stage2"], "learning_rate": [1e-3, 1e-4]}
    assert [sweep.cell_name(c) for c in sweep.cells(grid)][1] == "freeze=head__learning_rate=0.0001"
    assert sweep.cell_name({"freeze": "from:stage2"}) == "freeze=from-stage2"
    for bad in (["freeze"], ["freeze=a", "freeze=b"], []):
        with pytest.raises(UserError):
            sweep.parse_grid(bad)


def test_bad_cells_fail_before_any_run(base, tmp_path):
    with pytest.raises(UserError, match="unknown config field"):
        sweep.run(base, {"learning_rat": [1e-3]}, tmp_path / "s")
    with pytest.raises(UserError, match="phases"):
        sweep.run(_with_phases(base), {"freeze": ["head", "all"]}, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def _with_phases(base):
    config = base.copy_and_resolve_references()
    config.phases = ({"freeze": "all", "epochs": 1},)
    return config


def test_sweep_runs_each_cell_once_and_tabulates(base, tmp_path, monkeypatch):
    grid = sweep.parse_grid(["freeze=all,head", "learning_rate=1e-2,1e-3"])
    rows = sweep.run(base, grid, tmp_path / "sweep", echo=lambda *_: None)
    assert [r["status"] for r in rows] == ["ran"] * 4
    assert all((tmp_path / "sweep" / sweep.cell_name(c) / "summary.json").is_file() for c in sweep.cells(grid))
    head = next(r for r in rows if r["freeze"] == "head")
    full = next(r for r in rows if r["freeze"] == "all")
    assert head["trainable_params"] < full["trainable_params"] and head["test_accuracy"] is not None

    monkeypatch.setattr(train, "finetune", lambda *a, **k: pytest.fail("a finished cell ran again"))
    again = sweep.run(base, grid, tmp_path / "sweep", echo=lambda *_: None)
    assert [r["status"] for r in again] == ["reused"] * 4
    assert [r["test_accuracy"] for r in again] == [r["test_accuracy"] for r in rows]

    with open(tmp_path / "sweep" / "sweep.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and {"freeze", "learning_rate", "test_accuracy", "best_validation_accuracy",
                                "trainable_params", "wall_s"} <= set(table[0])
    assert all(float(r["wall_s"]) > 0 for r in table)
    assert (tmp_path / "sweep" / "sweep.md").read_text().startswith("| freeze | learning_rate |")
    assert (tmp_path / "sweep" / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_an_interrupted_cell_resumes(base, tmp_path):
    grid = {"learning_rate": [1e-3]}
    stopped = sweep.run(_max_steps(base, 1), grid, tmp_path / "s", echo=lambda *_: None)
    assert stopped[0]["status"] == "stopped"
    rows = sweep.run(base, grid, tmp_path / "s", echo=lambda *_: None)
    assert rows[0]["status"] == "ran" and rows[0]["test_accuracy"] is not None


def _max_steps(base, n):
    config = base.copy_and_resolve_references()
    config.max_steps = n
    return config
