"""Jitted train and eval steps, sharded over a 1-D mesh of every device: batches split along "data", the state
replicated (XLA adds the cross-device reductions, so BatchNorm sees the global batch).

Only the trainable partition is differentiated: frozen params enter the loss as constants, so JAX builds no
backward pass through a frozen prefix of the network (a head-only step has the forward's convolutions and no
more; see tests/test_train_step.py). Frozen params are carried over unchanged rather than updated by zero, so
they stay bit-identical; frozen BatchNorm layers run on, and keep, their running statistics.

Multi-host: set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (or run under a launcher that
jax.distributed.initialize() detects, such as SLURM) and start the same command on every host; `initialize()`
connects them, each process loads `loader.shard(...)` of every epoch's order and feeds its local slice of each
global batch (`jax.make_array_from_process_local_data`).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from research import preprocess, xla
from research.errors import UserError

AXIS = "data"


def initialize() -> None:
    """Joins the other processes when the environment says there are some; a no-op on one host."""
    if jax.distributed.is_initialized():
        return
    if int(os.environ.get("JAX_NUM_PROCESSES", "1")) > 1:
        jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"], int(os.environ["JAX_NUM_PROCESSES"]),
                                   int(os.environ["JAX_PROCESS_ID"]))
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()  # detects the SLURM job itself


def mesh(devices=None) -> Mesh:
    """A 1-D mesh over `devices` (default: all of them)."""
    return Mesh(np.asarray(devices or jax.devices()), (AXIS,))


def shardings(m: Mesh) -> tuple[NamedSharding, NamedSharding]:
    """(batch, replicated)."""
    return NamedSharding(m, PartitionSpec(AXIS)), NamedSharding(m, PartitionSpec())


def check_batch(batch_size: int, m: Mesh) -> None:
    n = m.devices.size
    if batch_size % n or batch_size % jax.process_count():
        raise UserError(f"batch size {batch_size} must be a multiple of the {n} devices and "
                        f"{jax.process_count()} processes")


def put_batch(arrays: dict, sharding: NamedSharding) -> dict:
    """This process's slice of a global batch -> global arrays split along the mesh."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in arrays.items()}


def partition(params, trainable: frozenset):
    """(trainable, frozen) flat dicts keyed by path tuples."""
    flat = traverse_util.flatten_dict(params)
    train = {k: v for k, v in flat.items() if "/".join(k) in trainable}
    return train, {k: v for k, v in flat.items() if k not in train}


def merge(*flats):
    out = {}
    for flat in flats:
        out.update(flat)
    return traverse_util.unflatten_dict(out)


def _inputs(images, preprocessing, augment, key):
    """uint8 batch -> the model's float input, augmented on device when asked."""
    if augment:
        from research.data.augment import augment as apply_augment
        images = apply_augment(key, images, augment)
    return preprocess.apply(preprocessing, images)


def _logits_loss(logits, labels):
    logits = logits.astype(jnp.float32)
    return logits, optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def make_train_step(model, tx, trainable: frozenset, preprocessing: str, augment, m: Mesh):
    """(state, images, labels, key) -> (state, {loss, accuracy}); `state` is {params, batch_stats, opt_state,
    step}, donated. The step's rng is `key` folded with the step number, so a resumed run draws the same."""
    batch, replicated = shardings(m)
    augment = augment or None

    def loss_fn(train, frozen, batch_stats, images, labels, key):
        aug_key, dropout_key = jax.random.split(key)
        variables = {"params": merge(train, frozen), "batch_stats": batch_stats}
        out, updates = model.apply(variables, _inputs(images, preprocessing, augment, aug_key), train=True,
                                   taps=("logits",), mutable=["batch_stats"], rngs={"dropout": dropout_key})
        logits, losses = _logits_loss(out["logits"], labels)
        correct = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
        return losses.mean(), (correct, updates.get("batch_stats", batch_stats))

    def step(state, images, labels, key):
        train, frozen = partition(state["params"], trainable)
        key = jax.random.fold_in(key, state["step"])
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (accuracy, batch_stats)), grads = grad_fn(train, frozen, state["batch_stats"], images, labels, key)
        zeros = {k: jnp.zeros_like(v) for k, v in frozen.items()}  # ignored by set_to_zero; never materialised
        updates, opt_state = tx.update(merge(grads, zeros), state["opt_state"], state["params"])
        flat_updates = traverse_util.flatten_dict(updates)
        train = {k: v + flat_updates[k].astype(v.dtype) for k, v in train.items()}
        new = {"params": merge(train, frozen), "batch_stats": batch_stats, "opt_state": opt_state,
               "step": state["step"] + 1}
        return new, {"loss": loss, "accuracy": accuracy}

    return xla.jit(step, in_shardings=(replicated, batch, batch, replicated),
                   out_shardings=(replicated, replicated), donate_argnums=(0,))


def make_eval_step(model, preprocessing: str, m: Mesh):
    """(variables, images, labels, mask) -> {correct, loss, count} summed over real (mask 1) examples, and the
    predictions; padding rows count for nothing, so a last partial batch is exact."""
    batch, replicated = shardings(m)

    def step(variables, images, labels, mask):
        out = model.apply(variables, preprocess.apply(preprocessing, images), train=False, taps=("logits",))
        logits, losses = _logits_loss(out["logits"], labels)
        predictions = jnp.argmax(logits, -1)
        mask = mask.astype(jnp.float32)
        sums = {"correct": jnp.sum((predictions == labels) * mask), "loss": jnp.sum(losses * mask),
                "count": jnp.sum(mask)}
        return sums, predictions

    return xla.jit(step, in_shardings=(replicated, batch, batch, batch), out_shardings=(replicated, batch))


@jax.jit
def all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def pad_batch(images: np.ndarray, labels: np.ndarray, size: int) -> dict:
    """A batch padded to `size` rows, with the mask saying which are real."""
    n = len(labels)
    if n > size:
        raise ValueError(f"{n} rows do not fit a batch of {size}")
    extra = size - n
    return {"images": np.concatenate([images, np.zeros((extra, *images.shape[1:]), images.dtype)]),
            "labels": np.concatenate([labels, np.zeros(extra, labels.dtype)]).astype(np.int32),
            "mask": np.concatenate([np.ones(n, np.int32), np.zeros(extra, np.int32)])}
