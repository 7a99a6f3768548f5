"""`finetune(config, workdir)`: fine-tune a model on a dataset, resumably, phase by phase.

The workdir holds `research.json` (written first: the model spec with its head, the preprocessing, the source
weights' provenance, the config), the checkpoints, TensorBoard files, `curves.png` and, once complete,
`summary.json`. Re-running the same command resumes from the latest checkpoint (or returns the finished
summary); a workdir of a different config is refused. `research.load(WORKDIR)` gives the best model.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from research import data, weights
from research.data import loader, splits
from research.errors import UserError
from research.models import heads
from research.train import checkpoint, config as configs, freeze, optim, report, step as steps

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class Stopped(Exception):
    """max_steps reached (after a checkpoint): the run can be resumed."""


@dataclasses.dataclass
class Setup:
    """What every phase shares: the model spec, the data and its splits, the workdir's writers."""
    config: object
    workdir: Path
    spec: object
    variables: dict
    meta: dict
    source: object
    split: splits.Split
    mesh: object
    plans: list
    phases: list
    echo: object

    @property
    def steps_per_epoch(self) -> int:
        return len(self.split.train) // self.config.batch_size


def finetune(config, workdir, dry_run: bool = False, echo=print) -> dict | None:
    """Runs (or resumes) the config in `workdir`; returns the summary (None for a dry run)."""
    steps.initialize()
    setup = prepare(config, Path(workdir), echo)
    if dry_run:
        for k, plan in enumerate(setup.plans, start=1):
            echo(f"phase {k} ({setup.phases[k - 1].freeze!r}):\n{plan.table()}")
        return None
    if jax.process_index() == 0:
        _claim(setup)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("research.train: workdir claimed")
    done = setup.workdir / report.SUMMARY
    if done.is_file():
        echo(f"{setup.workdir} is complete; its summary is {done}")
        return json.loads(done.read_text())
    return Run(setup).run()


def prepare(config, workdir: Path, echo) -> Setup:
    """Loads weights and data, attaches the head, resolves every phase's freeze rules: all checks up front."""
    from research import load

    configs.check(config)  # a config built in Python skipped load()'s checks
    bundle = load(config.weights)
    source = data.open(config.data)
    spec = heads.target_spec(bundle.spec, source.num_classes, config.head.to_dict(), config.include_top)
    variables = heads.attach(bundle.spec, bundle.variables, spec, config.image_size, config.seed)
    phases = configs.phases(config)
    plans = [freeze.plan(p.freeze, spec.family, variables["params"], p.layer_decay) for p in phases]
    split = _split(source, config)
    mesh = steps.mesh()
    steps.check_batch(config.batch_size, mesh)
    steps.check_batch(config.eval_batch_size or config.batch_size, mesh)
    if len(split.train) < config.batch_size:
        raise UserError(f"{len(split.train)} training images are fewer than one batch of {config.batch_size}")
    meta = {"research_version": _version(), "model": spec.to_dict(), "preprocessing": bundle.preprocessing,
            "source": bundle.meta.get("source"), "weights_model": bundle.meta.get("model"),
            **({"input": bundle.meta["input"]} if "input" in bundle.meta else {}),
            "class_names": list(source.class_names),
            "finetune": {"config": configs.result_fields(config), "data": source.spec, "split": split.record}}
    return Setup(config, workdir, spec, variables, meta, source, split, mesh, plans, phases, echo)


def _version() -> str:
    from research import __version__
    return __version__


def _split(source, config) -> splits.Split:
    if source.split is not None:
        split = splits.given(source.split, source.paths)
    else:
        split = splits.stratified(source.labels, source.paths, source.class_names, test=config.split.test,
                                  validation=config.split.validation, seed=config.seed)
    return splits.train_on_validation(split) if config.split.train_on_validation else split


def _claim(setup: Setup) -> None:
    """Writes research.json into a fresh workdir; in a used one, checks it is the same run (process 0 only)."""
    meta_file = setup.workdir / weights.store.META_FILE
    if meta_file.is_file():
        old = json.loads(meta_file.read_text()).get("finetune", {}).get("config")
        new = setup.meta["finetune"]["config"]
        if old != new:
            changed = sorted(k for k in set(old or {}) | set(new) if (old or {}).get(k) != new.get(k))
            raise UserError(f"{setup.workdir} holds a run of another config (differs in: {', '.join(changed)}); "
                            f"use a new --workdir")
        return
    if setup.workdir.exists() and any(setup.workdir.iterdir()):
        raise UserError(f"{setup.workdir} exists and is not a fine-tuning workdir; use a new --workdir")
    setup.workdir.mkdir(parents=True, exist_ok=True)
    report.write_json(meta_file, setup.meta)


class Run:
    """One pass over the phases, from wherever the workdir's checkpoints left off."""

    def __init__(self, setup: Setup):
        self.s = setup
        self.config = setup.config
        self.batch, self.replicated = steps.shardings(setup.mesh)
        self.checkpoints = checkpoint.Checkpoints(setup.workdir, setup.config.checkpoint.keep)
        self.writer = report.Writer(setup.workdir, jax.process_index() == 0)
        self.rng = jax.random.key(self.config.seed)
        self.progress = self.checkpoints.progress() or {"phase": 0, "epoch": 0, "batch": 0, "best": None,
                                                        "history": []}
        self.resuming = self.checkpoints.latest.latest_step() is not None

    def run(self) -> dict:
        try:
            variables = self.s.variables
            for index in range(self.progress["phase"], len(self.s.phases)):
                variables = self._phase(index, variables)
            return self._finish(variables)
        except Stopped as stop:
            self.s.echo(str(stop))
            return {"stopped": str(stop)}
        finally:
            self.writer.close()
            self.checkpoints.close()

    def _phase(self, index: int, variables: dict) -> dict:
        phase, plan = self.s.phases[index], self.s.plans[index]
        frozen_bn = plan.frozen_bn(freeze.flat_paths(variables.get("batch_stats", {})))
        model = self.s.spec.build(DTYPES[self.config.dtype], frozen_bn=frozen_bn)
        tx, self.lr = optim.transform(phase, plan, variables["params"], self.s.steps_per_epoch)
        state = self._initial_state(tx, variables)
        if self.resuming:
            state, self.rng = self.checkpoints.restore(state, self.rng)
            self.resuming = False
        else:
            self.progress.update(phase=index, epoch=0, batch=0)
        train_step = steps.make_train_step(model, tx, plan.trainable, self.s.meta["preprocessing"],
                                           _augment(self.config), self.s.mesh)
        self.eval_step = steps.make_eval_step(self.s.spec.build(DTYPES[self.config.dtype]),
                                              self.s.meta["preprocessing"], self.s.mesh)
        while self.progress["epoch"] < phase.epochs:
            state = self._epoch(index, phase, train_step, state)
        return {"params": state["params"], "batch_stats": state["batch_stats"]}

    def _initial_state(self, tx, variables) -> dict:
        step = self.progress["history"][-1]["step"] if self.progress["history"] else 0
        state = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {}),
                 "opt_state": tx.init(variables["params"]), "step": jnp.int32(step)}
        return jax.device_put(state, self.replicated)

    def _global_epoch(self, index: int) -> int:
        return sum(p.epochs for p in self.s.phases[:index]) + self.progress["epoch"]

    def _epoch(self, index: int, phase, train_step, state) -> dict:
        from tqdm import tqdm

        epoch, first = self._global_epoch(index), self.progress["batch"]
        per_epoch = self.s.steps_per_epoch
        bar = tqdm(total=per_epoch, initial=first, desc=f"phase {index + 1} epoch {self.progress['epoch'] + 1}/"
                   f"{phase.epochs}", disable=jax.process_index() != 0, leave=False)
        pending, started, seen = [], time.perf_counter(), 0
        for b, batch in enumerate(self._train_batches(epoch, first), start=first):
            arrays = steps.put_batch({"images": batch["images"], "labels": batch["labels"]}, self.batch)
            state, metrics = train_step(state, arrays["images"], arrays["labels"], self.rng)
            pending.append(metrics)
            seen += self.config.batch_size
            self.progress["batch"] = b + 1
            if len(pending) >= self.config.log_every or b + 1 == per_epoch:
                self._drain(pending, state, bar, seen / (time.perf_counter() - started))
                bar.update(len(pending))
                pending = []
            if b + 1 < per_epoch:  # the epoch's end has its own checkpoint
                self._save_if_due(state, pending, bar)
        if pending:  # an epoch short of batches (unreadable images were skipped)
            self._drain(pending, state, bar, seen / (time.perf_counter() - started))
        bar.close()
        return self._end_epoch(index, state)

    def _train_batches(self, epoch: int, first: int):
        order = loader.ordering(self.s.split.train, seed=self.config.seed * 100_003 + epoch, shuffle=True)
        local = loader.shard(order, jax.process_index(), jax.process_count())
        local_batch = self.config.batch_size // jax.process_count()
        local = local[: len(local) // local_batch * local_batch][first * local_batch:]
        return self._load(local, local_batch, drop_remainder=True)

    def _load(self, indices, batch_size: int, drop_remainder: bool):
        source = self.s.source
        image_size = self.config.image_size
        policy = None if source.kind == "pack" else self.config.resize
        return loader.batches(source, indices, batch_size, image_size, policy, drop_remainder=drop_remainder,
                              workers=self.config.workers or None)

    def _drain(self, pending: list, state, bar, images_per_s: float) -> None:
        """Fetches the pending steps' metrics; a NaN loss stops the run with the last good checkpoint kept."""
        got = jax.device_get(pending)
        losses = [float(m["loss"]) for m in got]
        if not all(math.isfinite(x) for x in losses):
            self._non_finite(f"the loss became {losses[-1]}", state)
        accuracy = float(np.mean([m["accuracy"] for m in got]))
        self.progress.setdefault("train_metrics", []).extend([x, float(m["accuracy"])] for x, m in zip(losses, got))
        bar.set_postfix(loss=f"{np.mean(losses):.4f}", acc=f"{accuracy:.3f}", img_s=f"{images_per_s:.0f}")
        step = int(state["step"])
        self.writer.scalars(step, {"loss": losses[-1], "accuracy": float(got[-1]["accuracy"]),
                                   "learning_rate": float(self.lr(step))}, "train")

    def _non_finite(self, what: str, state) -> None:
        kept = self.checkpoints.latest.latest_step()
        raise UserError(f"{what} by step {int(state['step'])}; stopped, keeping the last good checkpoint "
                        f"({'step ' + str(kept) if kept is not None else 'none yet'}) in {self.s.workdir}")

    def _save(self, state) -> None:
        """Saves only finite params: a step's loss is that of the params before it, so the loss alone would
        let the first NaN params through."""
        if not bool(steps.all_finite(state["params"])):
            self._non_finite("the params became NaN or infinite", state)
        self.checkpoints.save(state, self.rng, self.progress)

    def _save_if_due(self, state, pending: list, bar) -> None:
        """Every `checkpoint.every_steps`, and at `max_steps` (then stops). The pending losses are checked
        first, so no NaN state is ever saved."""
        step, every, limit = int(state["step"]), self.config.checkpoint.every_steps, self.config.max_steps
        stop = bool(limit) and step >= limit
        if not (stop or (every and step % every == 0)):
            return
        if pending:
            self._drain(pending, state, bar, 0.0)
            bar.update(len(pending))
            pending.clear()
        self._save(state)
        if stop:
            raise Stopped(f"stopped at step {step} (max_steps); the same command resumes it")

    def _end_epoch(self, index: int, state) -> dict:
        totals = self.progress.pop("train_metrics", [])
        variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
        val = self.evaluate(variables, self.s.split.validation) if len(self.s.split.validation) else None
        record = {"epoch": len(self.progress["history"]) + 1, "phase": index + 1, "step": int(state["step"]),
                  "train_loss": float(np.mean([m[0] for m in totals])) if totals else None,
                  "train_accuracy": float(np.mean([m[1] for m in totals])) if totals else None,
                  "validation_loss": val and val["loss"], "validation_accuracy": val and val["accuracy"]}
        self.progress["history"].append(record)
        self.progress.update(epoch=self.progress["epoch"] + 1, batch=0)
        self.writer.scalars(record["step"], {"loss": record["validation_loss"],
                                             "accuracy": record["validation_accuracy"]}, "validation")
        self.s.echo(_epoch_line(record))
        self._save(state)
        if val and (self.progress["best"] is None or val["accuracy"] > self.progress["best"]):
            self.progress["best"] = val["accuracy"]
            self.checkpoints.save_best(state, {**self.progress, "best_epoch": record["epoch"]})
        if jax.process_index() == 0:
            report.curves(self.progress["history"], self.s.workdir / report.CURVES)
        if self.config.max_steps and record["step"] >= self.config.max_steps:
            raise Stopped(f"stopped at step {record['step']} (max_steps); the same command resumes it")
        return state

    def evaluate(self, variables, indices) -> dict:
        """Exact accuracy and mean loss over `indices`: every host runs as many padded batches as the largest
        share needs, rows past a host's share masked out."""
        size = self.config.eval_batch_size or self.config.batch_size
        local_size = size // jax.process_count()
        local = loader.shard(indices, jax.process_index(), jax.process_count(), even=False)
        n_batches = -(-(-(-len(indices) // jax.process_count())) // local_size)
        batches = iter(self._load(local, local_size, drop_remainder=False))
        sums, labels, predictions = {"correct": 0.0, "loss": 0.0, "count": 0.0}, [], []
        empty = np.zeros((0, self.config.image_size, self.config.image_size, 3), np.uint8)
        for _ in range(n_batches):
            got = next(batches, None) or {"images": empty, "labels": np.zeros(0, np.int32)}
            arrays = steps.put_batch(steps.pad_batch(got["images"], got["labels"], local_size), self.batch)
            batch_sums, batch_predictions = self.eval_step(variables, arrays["images"], arrays["labels"],
                                                           arrays["mask"])
            for k, v in jax.device_get(batch_sums).items():
                sums[k] += float(v)
            mask = _gather(arrays["mask"]).astype(bool)
            labels.append(_gather(arrays["labels"])[mask])
            predictions.append(_gather(batch_predictions)[mask])
        count = max(sums["count"], 1.0)
        return {"accuracy": sums["correct"] / count, "loss": sums["loss"] / count, "count": int(sums["count"]),
                "labels": np.concatenate(labels), "predictions": np.concatenate(predictions)}

    def _finish(self, variables) -> dict:
        best = self.progress["best"] is not None
        if best:
            variables = checkpoint.restore_variables(self.s.workdir)
        test = self.evaluate(variables, self.s.split.test) if len(self.s.split.test) else None
        plan = self.s.plans[-1]
        summary = {"history": self.progress["history"], "config": configs.to_json(self.config),
                   "model": self.s.spec.to_dict(), "best_validation_accuracy": self.progress["best"],
                   "evaluated": "best validation epoch" if best else "final",
                   "params": {"trainable": plan.counts()[0], "frozen": plan.counts()[1],
                              "per_phase": [dict(zip(("trainable", "frozen"), p.counts())) for p in self.s.plans]}}
        if test is not None:
            text, table = report.classification_report(test["labels"], test["predictions"],
                                                       self.s.source.class_names)
            summary["test"] = {"accuracy": test["accuracy"], "loss": test["loss"], "count": test["count"],
                               "report": table}
            self.s.echo(f"test accuracy {test['accuracy']:.4f} over {test['count']} images\n{text}")
        if jax.process_index() == 0:
            report.write_json(self.s.workdir / report.SUMMARY, summary)
        return summary


def _gather(x) -> np.ndarray:
    if jax.process_count() == 1:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _augment(config):
    """The on-device augmentation of the config (a hashable AugmentConfig), or None."""
    if not len(config.augment):
        return None
    from research.data.augment import AugmentConfig
    return AugmentConfig.from_dict(config.augment.to_dict())


def _epoch_line(record: dict) -> str:
    val = record["validation_accuracy"]
    tail = f", validation accuracy {val:.4f}" if val is not None else ""
    return (f"epoch {record['epoch']} (phase {record['phase']}): train loss {record['train_loss']:.4f}, "
            f"accuracy {record['train_accuracy']:.4f}{tail}")
