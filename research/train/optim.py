"""Optimisers and learning-rate schedules from a phase's config, one optax transform for the whole param tree.

Each freeze label gets its own copy of the optimiser with the schedule scaled by the label's multiplier; frozen
params get `optax.set_to_zero()` and so no state. Weight decay applies to kernels only (not to biases or
BatchNorm scales and offsets): decoupled (AdamW-style) for Adam, added to the gradient (L2) for SGD and RMSprop.
"""
from __future__ import annotations

import optax

from research.errors import UserError
from research.train import freeze

OPTIMIZERS = ("adam", "sgd", "rmsprop")
SCHEDULES = ("constant", "step", "cosine")


def schedule(cfg, learning_rate: float, steps_per_epoch: int, epochs: int):
    """step -> learning rate. `warmup_epochs` ramps linearly from 0 first; boundaries are in epochs."""
    total = max(1, steps_per_epoch * epochs)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.name == "constant":
        main = optax.constant_schedule(learning_rate)
    elif cfg.name == "step":
        boundaries = {int(round(b * steps_per_epoch)) - warmup: cfg.factor for b in cfg.boundaries}
        main = optax.piecewise_constant_schedule(learning_rate, boundaries)
    elif cfg.name == "cosine":
        main = optax.cosine_decay_schedule(learning_rate, max(1, total - warmup))
    else:
        raise UserError(f"unknown schedule {cfg.name!r}; known: {', '.join(SCHEDULES)}")
    if not warmup:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, learning_rate, warmup), main], [warmup])


def _decay_kernels(params):
    import jax
    return jax.tree.map(lambda x: x.ndim > 1, params)


def optimizer(cfg, lr):
    """One optimiser for schedule `lr`."""
    wd = cfg.weight_decay
    if cfg.name == "adam":
        return optax.adamw(lr, cfg.b1, cfg.b2, cfg.eps, weight_decay=wd, mask=_decay_kernels)
    if cfg.name == "sgd":
        inner = optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
    elif cfg.name == "rmsprop":
        inner = optax.rmsprop(lr, decay=cfg.decay, eps=cfg.eps, momentum=cfg.momentum or None,
                              nesterov=cfg.nesterov)
    else:
        raise UserError(f"unknown optimizer {cfg.name!r}; known: {', '.join(OPTIMIZERS)}")
    return optax.chain(optax.add_decayed_weights(wd, _decay_kernels), inner) if wd else inner


def transform(phase, plan: freeze.Plan, params, steps_per_epoch: int):
    """The whole-tree transform of one phase: a group per freeze label."""
    lr = schedule(phase.schedule, phase.learning_rate, steps_per_epoch, phase.epochs)
    groups = {}
    for rule in set(plan.rules.values()):
        name = freeze.label(rule)
        if name == freeze.FROZEN:
            groups[name] = optax.set_to_zero()
        else:
            scale = freeze.multiplier(rule)
            groups[name] = optimizer(phase.optimizer, (lambda s, k=scale: k * lr(s)) if scale != 1 else lr)
    return optax.multi_transform(groups, plan.labels(params)), lr
