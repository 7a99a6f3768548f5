"""A fine-tuning workdir's checkpoints: orbax CheckpointManagers for the last K train states and the best model.

`WORKDIR/checkpoints/STEP` holds `variables` ({params, batch_stats}), `train` ({opt_state, step, rng}) and
`progress` (JSON: phase, epoch, the next batch of that epoch, the best validation accuracy so far, the history).
The loader's order is a pure function of the seed and the epoch, so (epoch, batch) is the loader's whole
position, and the step rng is the run's key folded with the step, so the key is all the rng state there is.
`WORKDIR/best/STEP` holds `variables` and `progress` of the epoch with the best validation accuracy.
Saves are synchronous: a process killed after `save` returns always finds that checkpoint on disk.
"""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

LATEST = "checkpoints"
BEST = "best"


def _manager(directory: Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory.absolute(), options=options)


class Checkpoints:
    def __init__(self, workdir, keep: int = 2):
        self.workdir = Path(workdir)
        self.latest = _manager(self.workdir / LATEST, max(1, keep))
        self.best = _manager(self.workdir / BEST, 1)

    def save(self, state: dict, rng, progress: dict) -> None:
        step = int(state["step"])
        self.latest.save(step, args=ocp.args.Composite(
            variables=ocp.args.StandardSave(_variables(state)),
            train=ocp.args.StandardSave({"opt_state": state["opt_state"], "step": state["step"],
                                         "rng": _key_data(rng)}),
            progress=ocp.args.JsonSave(progress)))

    def save_best(self, state: dict, progress: dict) -> None:
        self.best.save(int(state["step"]), args=ocp.args.Composite(
            variables=ocp.args.StandardSave(_variables(state)), progress=ocp.args.JsonSave(progress)), force=True)

    def progress(self) -> dict | None:
        """The latest checkpoint's progress, or None for a fresh workdir."""
        step = self.latest.latest_step()
        if step is None:
            return None
        return dict(self.latest.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))["progress"])

    def restore(self, state: dict, rng) -> tuple[dict, jax.Array]:
        """The latest train state, shaped and sharded like `state` (the freshly built one of its phase)."""
        step = self.latest.latest_step()
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        train_target = {"opt_state": abstract["opt_state"], "step": abstract["step"],
                        "rng": _key_data(rng)}
        got = self.latest.restore(step, args=ocp.args.Composite(
            variables=ocp.args.StandardRestore(_variables(abstract)), train=ocp.args.StandardRestore(train_target)))
        train = got["train"]
        restored = {**got["variables"], "opt_state": train["opt_state"], "step": train["step"]}
        return restored, jax.random.wrap_key_data(np.asarray(train["rng"]))

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def _key_data(rng) -> np.ndarray:
    """The key as numpy: the same on every process, so it saves without being a global array."""
    return np.asarray(jax.random.key_data(rng))


def _variables(state: dict) -> dict:
    return {"params": state["params"], "batch_stats": state["batch_stats"]}


def restore_variables(workdir) -> dict:
    """The best checkpoint's {params, batch_stats} as numpy, else the latest's: what research.load reads."""
    for name in (BEST, LATEST):
        directory = Path(workdir).absolute() / name
        if not directory.is_dir():
            continue
        with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False)) as manager:
            step = manager.latest_step()
            if step is None:
                continue
            got = manager.restore(step, args=ocp.args.Composite(variables=ocp.args.StandardRestore()))
            return jax.tree.map(np.asarray, dict(got["variables"]))
    raise FileNotFoundError(f"{workdir} holds no checkpoint")
