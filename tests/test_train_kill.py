"""A run SIGKILLed right after a mid-epoch checkpoint (no clean shutdown) resumes to the uninterrupted params."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np

from research.train import checkpoint, finetune
from tests.train_fixtures import make_dataset, make_weights, tiny_config

ROOT = Path(__file__).resolve().parents[1]

KILLED = textwrap.dedent("""
    import os, signal, sys
    from research.train import checkpoint, finetune
    from tests.train_fixtures import tiny_config
    save = checkpoint.Checkpoints.save

    def save_then_die(self, state, rng, progress):
        save(self, state, rng, progress)
        if int(state["step"]) == 4:  # epoch 2, batch 1 of 3
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.Checkpoints.save = save_then_die
    weights, data, workdir = sys.argv[1:]
    finetune(tiny_config(weights, data, epochs=2, **{"checkpoint.every_steps": 1}), workdir, echo=lambda *_: None)
""")


def test_sigkill_mid_epoch_then_resume(tmp_path):
    weights, data = make_weights(tmp_path / "weights"), make_dataset(tmp_path / "data", per_class=11)
    config = tiny_config(weights, data, epochs=2, **{"checkpoint.every_steps": 1})
    done = subprocess.run([sys.executable, "-c", KILLED, str(weights), str(data), str(tmp_path / "killed")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert checkpoint.Checkpoints(tmp_path / "killed").latest.latest_step() == 4
    finetune(config, tmp_path / "killed", echo=lambda *_: None)
    finetune(config, tmp_path / "straight", echo=lambda *_: None)
    a, b = (checkpoint.restore_variables(tmp_path / name) for name in ("straight", "killed"))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
