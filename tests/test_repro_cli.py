"""`research reproduce`: the list, the up-front checks (offline, missing data), refusals and --overwrite."""
from __future__ import annotations

import json
import types

import pytest

from research.cli import main
from research.experiments import reproduce


@pytest.fixture
def home(tmp_path, monkeypatch):
    """No real caches; runs/ relative to an empty folder."""
    for var, sub in (("KERAS_HOME", "keras"), ("TORCH_HOME", "torch"), ("RESEARCH_CACHE", "ours")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_list_shows_every_experiment_and_the_last_result(home, capsys):
    done = home / "runs" / "repro" / "seed002_vgg16_logreg_animals"
    done.mkdir(parents=True)
    (done / "result.json").write_text(json.dumps({"measured": 0.97, "finished": "2026-01-02T03:04:05+00:00"}))
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert len(rows) >= 13 and "97.0% (2026-01-02)" in rows["seed002_vgg16_logreg_animals"]
    assert "92.8%" in rows["seed000_caltech101_resnet50"] and "tfds:oxford_iiit_pet" in rows[
        "kornblith_r50_linear_pets"]


def test_offline_names_everything_missing_in_one_line(home, capsys):
    assert main(["reproduce", "seed002_vgg16_logreg_animals", "--offline"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in err
    assert "pass --data" in err and "Animals" in err
    assert not (home / "runs").exists()  # nothing started


def test_given_inputs_are_checked_too(home, capsys):
    assert main(["reproduce", "seed002_vgg16_logreg_flowers17", "--weights", "nope.h5", "--data", "nope/"]) == 2
    err = capsys.readouterr().err
    assert "weights nope.h5: no such file" in err and "dataset nope/" in err
    assert main(["reproduce", "seed002_vgg16_logreg_flower17"]) == 2
    assert "unknown experiment" in capsys.readouterr().err
    assert main(["reproduce"]) == 2


def test_unprepared_tfds_is_named_offline_not_downloaded(monkeypatch):
    builder = types.SimpleNamespace(is_prepared=lambda: False, data_dir="/data/pets/4.0.0",
                                    download_and_prepare=lambda **_: pytest.fail("downloaded"))
    monkeypatch.setitem(__import__("sys").modules, "tensorflow_datasets",
                        types.SimpleNamespace(builder=lambda name: builder))
    problems = []
    assert not reproduce._tfds_prepared("tfds:oxford_iiit_pet", problems)
    assert "not prepared in /data/pets/4.0.0" in problems[0] and "tfds build oxford_iiit_pet" in problems[0]


def test_finished_workdir_is_kept_unless_overwrite(home, capsys):
    args = ["reproduce", "kornblith_r50_linear_pets", "--smoke", "--workdir", "w"]
    assert main(args) == 0
    first = json.loads((home / "w" / "result.json").read_text())
    assert first["data"]["split"]["given"] == "train/test"  # the given-split protocol, on tiny train/test folders
    assert main(args) == 2 and "pass --overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert json.loads((home / "w" / "result.json").read_text())["measured"] == first["measured"]
    (home / "other").mkdir()
    (home / "other" / "keep.txt").write_text("mine")
    assert main(["reproduce", "kornblith_r50_linear_pets", "--smoke", "--workdir", "other"]) == 2
    assert "not a reproduction workdir" in capsys.readouterr().err
