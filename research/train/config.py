"""Fine-tuning configs: a Python file whose `get_config()` returns an ml_collections ConfigDict, plus
`--config.a.b=value` overrides, type-checked against the defaults so a typo or a wrong type fails up front.

`phases` is a tuple of dicts, each overriding `freeze`, `learning_rate`, `optimizer`, `schedule` and `epochs` for
one phase; phase k starts from phase k-1's params and batch statistics with a fresh optimizer. Empty: one
phase from the top-level fields.
"""
from __future__ import annotations

import ast
import copy
import importlib.util
import logging
import math

import ml_collections

from research.errors import UserError

log = logging.getLogger(__name__)

PHASE_FIELDS = ("freeze", "learning_rate", "optimizer", "schedule", "epochs", "layer_decay")
# Fields that steer a run but not its result: a resumed run may change them.
RUN_CONTROL = ("max_steps", "checkpoint", "log_every", "workers", "eval_batch_size")


def defaults() -> ml_collections.ConfigDict:
    """Every field a config may set, with its default."""
    c = ml_collections.ConfigDict()
    c.weights = ""  # a weight file or converted checkpoint, as research.load takes
    c.data = ""  # a dataset spec, as research.data.open takes
    # per-class fractions, for sources without given splits; train_on_validation: the final fit of a protocol
    # that chose its settings on validation (Kornblith et al.) trains on train + validation
    c.split = dict(test=0.0, validation=0.0, train_on_validation=False)
    c.image_size = 224
    c.resize = "direct"  # or shorter_center_crop
    c.batch_size = 32
    c.eval_batch_size = 0  # 0: batch_size
    c.epochs = 1
    c.include_top = True  # keep the source's own top layers (VGG's fc1/fc2) under the new head
    c.head = dict(hidden=(), dropout=0.0, batch_norm=False, pool="flatten")
    c.freeze = "head"  # a preset (head, top_block, all, from:TAP, last:K, bias, norm) or (regex, rule) pairs
    c.layer_decay = 1.0  # < 1: layer-wise lr decay over the blocks (research/train/freeze.py)
    c.optimizer = dict(name="adam", momentum=0.0, nesterov=False, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8,
                       decay=0.9)
    c.learning_rate = 1e-3
    c.schedule = dict(name="constant", warmup_epochs=0.0, boundaries=(), factor=0.1)  # boundaries in epochs
    c.augment = ml_collections.ConfigDict()  # empty: none; else passed to research.data.augment.augment
    c.seed = 0
    c.dtype = "float32"  # compute dtype; params stay float32
    c.phases = ()
    c.checkpoint = dict(every_steps=0, keep=2)  # every_steps 0: at each epoch end only
    c.max_steps = 0  # stop (after a checkpoint) once this many steps are done in all; 0: no limit
    c.log_every = 10
    c.workers = 0  # decoding threads; 0: the loader's default
    return c


def load(path, overrides=()) -> ml_collections.ConfigDict:
    """The config file's `get_config()` merged over the defaults, then `--config.FIELD=VALUE` overrides."""
    config = defaults()
    _merge(config, _read(path), prefix="")
    for item in overrides:
        apply_override(config, item)
    check(config)
    return config


def _read(path) -> dict:
    from research.resources import config_path

    path = config_path(path)
    spec = importlib.util.spec_from_file_location(f"research_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise UserError(f"{path} has no get_config()")
    got = module.get_config()
    return got.to_dict() if isinstance(got, ml_collections.ConfigDict) else dict(got)


def _merge(config, values: dict, prefix: str) -> None:
    for key, value in values.items():
        assign(config, f"{prefix}{key}", value)


def assign(config, dotted: str, value) -> None:
    """Sets a dotted field, type-checked by ConfigDict; unknown fields and wrong types are UserErrors."""
    *parents, leaf = dotted.split(".")
    node = config
    for name in parents:
        if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
            raise UserError(f"unknown config field {dotted!r}")
        node = node[name]
    if leaf not in node:
        raise UserError(f"unknown config field {dotted!r}; known here: {', '.join(sorted(node.keys()))}")
    if isinstance(node[leaf], ml_collections.ConfigDict) and isinstance(value, dict):
        open_ended = dotted == "augment"
        for key, sub in value.items():
            if open_ended:
                node[leaf][key] = sub
            else:
                assign(config, f"{dotted}.{key}", sub)
        return
    current = node[leaf]
    if dotted in FREE_TYPED:
        value = _tuples(value)
        FREE_TYPED[dotted](value)
        del node[leaf]  # e.g. a preset name or a tuple of rules: either type is fine
        node[leaf] = value
        return
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    try:
        node[leaf] = value
    except (TypeError, ValueError) as e:
        raise UserError(f"config field {dotted}: {value!r} is not a {type(current).__name__} "
                        f"({str(e).splitlines()[0]})") from None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_freeze(value) -> None:
    """A preset name or a sequence of (regex, rule) pairs, checked as far as it can be without the model."""
    from research.train import freeze

    if isinstance(value, str):
        if value.startswith("last:"):
            freeze.last_count(value)
        elif value not in ("head", "top_block", "all", "bias", "norm") and not value.startswith("from:"):
            freeze.preset(value, "resnet")  # the unknown-preset error
        return
    if not isinstance(value, tuple) or not value:
        raise UserError(f"config freeze must be a preset ({freeze.PRESETS}) or a tuple of (regex, rule) pairs, "
                        f"got {value!r}")
    for item in value:
        if not isinstance(item, tuple):
            raise UserError(f"a freeze rule is a (regex, rule) pair of strings, got {item!r}")
    freeze.rules_of(value, "")


def check_dropout(value) -> None:
    """One rate, or one per dense layer (their count is checked with the head)."""
    rates = value if isinstance(value, tuple) else (value,)
    if not rates or not all(_is_number(r) and 0.0 <= r < 1.0 for r in rates):
        raise UserError(f"config head.dropout must be a rate in [0, 1) or a tuple of them, got {value!r}")


# Fields of more than one type, each with its check.
FREE_TYPED = {"freeze": check_freeze, "head.dropout": check_dropout}


def _tuples(value):
    """Lists to tuples, all the way down, so rules read from JSON equal rules written in Python."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def apply_override(config, item: str) -> None:
    """`--config.a.b=value` (or `config.a.b=value`): the value is a Python literal, or a plain string."""
    body = item.removeprefix("--")
    if not body.startswith("config.") or "=" not in body:
        raise UserError(f"cannot read override {item!r}; write --config.FIELD=VALUE")
    dotted, text = body.removeprefix("config.").split("=", 1)
    assign(config, dotted, parse_value(text))


def parse_value(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def check(config) -> None:
    """The checks that need more than a type: every value a run would refuse later is refused here, before a
    workdir exists."""
    from research.data.resize import METHODS, check_size
    from research.models.heads import HeadSpec

    if config.dtype not in ("float32", "bfloat16"):
        raise UserError(f"config dtype must be float32 or bfloat16, got {config.dtype!r}")
    check_size(config.image_size, "config image_size")
    if config.resize not in METHODS:
        raise UserError(f"config resize {config.resize!r} is unknown; known: {', '.join(METHODS)}")
    for name, low in (("batch_size", 1), ("eval_batch_size", 0), ("max_steps", 0), ("log_every", 1),
                      ("workers", 0), ("checkpoint.keep", 1), ("checkpoint.every_steps", 0)):
        value = config[name] if "." not in name else config[name.split(".")[0]][name.split(".")[1]]
        if value < low:
            raise UserError(f"config {name} must be at least {low}, got {value}")
    for name in ("test", "validation"):
        if not 0.0 <= config.split[name] < 1.0:
            raise UserError(f"config split.{name} must be a fraction in [0, 1), got {config.split[name]}")
    try:
        HeadSpec(**config.head.to_dict())
    except (TypeError, ValueError) as e:
        raise UserError(f"config head: {str(e).splitlines()[0]}") from None
    if len(config.augment):
        from research.data.augment import AugmentConfig
        AugmentConfig.from_dict(config.augment.to_dict())
    for k, phase in enumerate(config.phases, start=1):
        if not isinstance(phase, dict) or set(phase) - set(PHASE_FIELDS):
            raise UserError(f"phase {k} must be a dict of {', '.join(PHASE_FIELDS)}, got {phase!r}")
    for k, phase in enumerate(phases(config), start=1):
        _check_phase(phase, f"phase {k}" if config.phases else "config")


def _check_phase(phase, where: str) -> None:
    from research.train.optim import OPTIMIZERS, SCHEDULES

    if phase.epochs < 1:
        raise UserError(f"{where} needs at least one epoch, got {phase.epochs}")
    if phase.optimizer.name not in OPTIMIZERS:
        raise UserError(f"{where}: unknown optimizer {phase.optimizer.name!r}; known: {', '.join(OPTIMIZERS)}")
    if phase.schedule.name not in SCHEDULES:
        raise UserError(f"{where}: unknown schedule {phase.schedule.name!r}; known: {', '.join(SCHEDULES)}")
    rate = phase.learning_rate
    if not math.isfinite(rate) or rate <= 0:
        raise UserError(f"{where}: learning_rate must be a positive number, got {rate}")
    if rate > 1.0:
        log.warning("%s: learning_rate %g is above 1; fine-tuning rates are usually 1e-5..1e-1", where, rate)
    for name in ("weight_decay", "momentum"):
        if phase.optimizer[name] < 0:
            raise UserError(f"{where}: optimizer.{name} must be non-negative, got {phase.optimizer[name]}")
    if not 0 < phase.layer_decay <= 1:
        raise UserError(f"{where}: layer_decay must be in (0, 1], got {phase.layer_decay}")
    if phase.schedule.warmup_epochs < 0:
        raise UserError(f"{where}: schedule.warmup_epochs must be non-negative, got {phase.schedule.warmup_epochs}")


def phases(config) -> list[ml_collections.ConfigDict]:
    """One ConfigDict per phase: the top-level fields with that phase's overrides."""
    out = []
    for overrides in config.phases or ({},):
        phase = ml_collections.ConfigDict(copy.deepcopy({k: config[k] for k in PHASE_FIELDS}))
        _merge(phase, overrides, prefix="")
        out.append(phase)
    return out


def result_fields(config) -> dict:
    """The fields that decide the result: a workdir resumes only a run whose fields all match."""
    return {k: v for k, v in to_json(config).items() if k not in RUN_CONTROL}


def to_json(config) -> dict:
    """Plain JSON-able values (tuples as lists), for research.json and summary.json."""
    import json
    return json.loads(json.dumps(config.to_dict(), default=list))
