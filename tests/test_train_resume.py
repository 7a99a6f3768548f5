"""A run stopped mid-epoch and resumed ends with the params of an uninterrupted one; the workdir then loads
like any other weights, with the new (BN, Dense, BN, Dropout, Dense) head's logits."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import research
from research.train import checkpoint, finetune
from tests.train_fixtures import make_dataset, make_weights, tiny_config


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return make_weights(root / "weights"), make_dataset(root / "data", per_class=11), root


def run(inputs, name, **fields):
    weights, data, root = inputs
    head = {"head.hidden": (16,), "head.batch_norm": True, "head.dropout": (0.0, 0.25)}  # dropout: rng on resume
    config = tiny_config(weights, data, epochs=2, **{"checkpoint.every_steps": 1, **head, **fields})
    return finetune(config, root / name, echo=lambda *_: None), root / name


@pytest.fixture(scope="module")
def uninterrupted(inputs):
    return run(inputs, "straight")


def test_resume_mid_epoch_matches_uninterrupted(inputs, uninterrupted):
    _, straight = uninterrupted
    stopped, workdir = run(inputs, "killed", max_steps=4)  # 24 training images: 3 steps an epoch
    assert "stopped" in stopped and not (workdir / "summary.json").exists()
    progress = checkpoint.Checkpoints(workdir).progress()
    assert (progress["epoch"], progress["batch"]) == (1, 1)
    summary, _ = run(inputs, "killed")  # the same command again (without the stop) resumes
    a, b = checkpoint.restore_variables(straight), checkpoint.restore_variables(workdir)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert summary["test"]["accuracy"] == json.loads((straight / "summary.json").read_text())["test"]["accuracy"]
    assert [h["train_loss"] for h in summary["history"]] == \
        [h["train_loss"] for h in json.loads((straight / "summary.json").read_text())["history"]]


def test_workdir_loads_with_its_head(uninterrupted):
    summary, workdir = uninterrupted
    bundle = research.load(workdir)
    assert bundle.spec.num_classes == 3 and bundle.meta["finetune"]["config"]["epochs"] == 2
    assert bundle.spec.head.hidden == (16,) and "bn2" in bundle.variables["batch_stats"]["head"]
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    logits = bundle.features(images)["logits"]
    model = bundle.spec.build()
    expected = model.apply(bundle.variables, research.preprocess.apply("torch", images))["logits"]
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    assert {"history", "test", "params", "config"} <= set(summary)
    assert summary["params"]["trainable"] > 0 and summary["params"]["frozen"] > summary["params"]["trainable"]
    assert (workdir / "curves.png").stat().st_size > 1000 and any((workdir / "tensorboard").iterdir())


def test_finished_workdir_returns_its_summary(inputs, uninterrupted):
    summary, _ = uninterrupted
    again, _ = run(inputs, "straight")
    assert again == json.loads(json.dumps(summary))
