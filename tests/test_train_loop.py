"""The run around the steps: NaN stops, phases continue from each other, the CLI's dry run and overrides,
a workdir refuses another config."""
from __future__ import annotations

import re

import jax
import numpy as np
import pytest
from flax import traverse_util

from research import cli
from research.errors import UserError
from research.train import checkpoint, finetune
from tests.train_fixtures import make_dataset, make_weights, tiny_config


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    return make_weights(root / "weights"), make_dataset(root / "data", per_class=11), root


def quiet(*_):
    pass


def flat(tree):
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def test_nan_stops_and_keeps_the_last_good_checkpoint(inputs):
    """The learning rate jumps to 1e38 after the first step, so the params blow up and the loss turns NaN a
    step later; the run stops there and keeps the step before, whose params are finite."""
    weights, data, root = inputs
    config = tiny_config(weights, data, freeze="head", **{
        "optimizer.name": "sgd", "checkpoint.every_steps": 1, "schedule.name": "step",
        "schedule.boundaries": (0.34,), "schedule.factor": 1e19, "learning_rate": 1e19})
    with pytest.raises(UserError, match=r"the (loss|params) became .* by step \d; stopped, keeping the last good "
                                        r"checkpoint \(step \d\)") as error:
        finetune(config, root / "nan", echo=quiet)
    stopped, kept = map(int, re.findall(r"step (\d)", str(error.value)))
    assert kept == stopped - 1 == checkpoint.Checkpoints(root / "nan").latest.latest_step()
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(checkpoint.restore_variables(root / "nan")))
    assert not (root / "nan" / "summary.json").exists()


def test_phase_two_continues_from_phase_one(inputs):
    """Phase 2 trains stage4/block2 only, so its head must be phase 1's final head, bit for bit; a stop at the
    phase boundary resumes into phase 2."""
    weights, data, root = inputs
    phases = (dict(freeze="head", epochs=1),
              dict(freeze=(("^stage4/block2/", "train"), (".*", "frozen")), epochs=1, learning_rate=1e-3,
                   optimizer=dict(name="rmsprop")))
    config = tiny_config(weights, data, phases=phases, max_steps=3)  # 24 training images: 3 steps an epoch
    assert "stopped" in finetune(config, root / "phases", echo=quiet)
    after_one = flat(checkpoint.restore_variables(root / "phases")["params"])
    config.max_steps = 0
    summary = finetune(config, root / "phases", echo=quiet)
    after_two = flat(checkpoint.restore_variables(root / "phases")["params"])
    assert [h["phase"] for h in summary["history"]] == [1, 2] and summary["history"][-1]["step"] == 6
    for path, value in after_one.items():
        same = np.array_equal(value, after_two[path])
        assert same == (not path.startswith("stage4/block2/")), path
    assert summary["params"]["per_phase"][0]["trainable"] == 3 * 512 + 3


def test_cli_dry_run_prints_the_table(inputs, tmp_path, capsys):
    weights, data, _ = inputs
    path = tmp_path / "c.py"
    path.write_text("import ml_collections\n\ndef get_config():\n    return ml_collections.ConfigDict("
                    "dict(image_size=32, batch_size=8, head=dict(hidden=(16,), batch_norm=True, dropout=0.5)))\n")
    status = cli.main(["finetune", "--config", str(path), "--workdir", str(tmp_path / "w"), "--dry-run",
                       f"--config.weights={weights}", f"--config.data={data}", "--config.freeze=top_block"])
    out = capsys.readouterr().out
    assert status == 0
    assert "head/fc1/kernel" in out and "(512, 16)" in out and "head/bn1/scale" in out
    assert "stage4/block1/conv1/kernel" in out and "stem/conv1/kernel" in out
    assert out.rstrip().splitlines()[-1].startswith("trainable ")
    assert not (tmp_path / "w").exists()


def test_cli_reports_bad_overrides(inputs, tmp_path, capsys):
    path = tmp_path / "c.py"
    path.write_text("def get_config():\n    return {}\n")
    assert cli.main(["finetune", "--config", str(path), "--workdir", str(tmp_path), "--config.epochs=x"]) == 2
    assert "error: config field epochs: 'x' is not a int" in capsys.readouterr().err


def test_a_workdir_refuses_another_config(inputs):
    weights, data, root = inputs
    workdir = root / "other"
    config = tiny_config(weights, data, freeze="head", max_steps=1)
    finetune(config, workdir, echo=quiet)
    config.learning_rate = 0.5
    with pytest.raises(UserError, match="another config .*learning_rate"):
        finetune(config, workdir, echo=quiet)
