"""Which params train, and how fast: an ordered list of (regex, rule) pairs over param paths, first match wins.

A path is the param's place in the tree joined by "/" ("stage4/block2/conv1/kernel", "head/fc/bias"); a regex
matches if `re.search` finds it. A rule is "frozen", "train" (= "lr*1") or "lr*X" (trainable at X times the
learning rate). Every param must be matched, so that adding a layer never silently freezes or trains it.

Presets: `head`; `top_block` (the last stage and whatever sits above it); `all`; `from:TAP` (the module that
produces TAP and everything after it). The optimizer is an `optax.multi_transform` over the rule labels with
`optax.set_to_zero()` for "frozen", so frozen params carry no optimizer state.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np
from flax import traverse_util

from research.errors import UserError
from research.models import registry

FROZEN = "frozen"
RULE = re.compile(r"^(frozen|train|lr\*(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)$")


def preset(name: str, family: str, present=()) -> tuple[tuple[str, str], ...]:
    """A named rule list, cut at the family's modules (its registry record); `from:TAP` trains the module
    producing TAP and all after it. `present`: the params' top-level modules, for a `top_block` that depends
    on them (a ViT's last block)."""
    record = registry.family(family)
    modules = record.modules
    if name == "head":
        start = registry.HEAD
    elif name == "top_block":
        start = record.top_block if isinstance(record.top_block, str) else record.top_block(present)
    elif name == "all":
        return ((".*", "train"),)
    elif name.startswith("from:"):
        start = record.module_of(name.removeprefix("from:"))
        if start is None:
            raise UserError(f"freeze {name!r}: {family} has no tap {name[5:]!r} with params of its own")
    else:
        raise UserError(f"unknown freeze preset {name!r}; known: head, top_block, all, from:TAP")
    trained = "|".join(modules[modules.index(start):])
    return ((f"^({trained})/", "train"), (".*", FROZEN))


def rules_of(freeze, family: str, present=()) -> tuple[tuple[str, str], ...]:
    """A config's `freeze` (a preset name or a sequence of pairs) as checked (regex, rule) pairs."""
    if isinstance(freeze, str):
        return preset(freeze, family, present)
    pairs = []
    for item in freeze:
        if len(item) != 2 or not all(isinstance(x, str) for x in item):
            raise UserError(f"a freeze rule is a (regex, rule) pair of strings, got {item!r}")
        pattern, rule = item
        if not RULE.match(rule):
            raise UserError(f"freeze rule {rule!r} for {pattern!r}: write frozen, train or lr*X")
        try:
            re.compile(pattern)
        except re.error as e:
            raise UserError(f"freeze regex {pattern!r}: {e}") from None
        pairs.append((pattern, rule))
    return tuple(pairs)


def multiplier(rule: str) -> float:
    """The lr multiplier of a trainable rule."""
    return 1.0 if rule == "train" else float(rule.removeprefix("lr*"))


def label(rule: str) -> str:
    """The multi_transform label: "frozen" or the normalised multiplier, so equal rates share a group."""
    return FROZEN if rule == FROZEN else f"lr*{multiplier(rule):g}"


def assign(rules, paths) -> dict[str, str]:
    """{path: rule} by first match; a UserError names every path no rule matches."""
    compiled = [(re.compile(p), r) for p, r in rules]
    out, unmatched = {}, []
    for path in paths:
        rule = next((r for c, r in compiled if c.search(path)), None)
        if rule is None:
            unmatched.append(path)
        else:
            out[path] = rule
    if unmatched:
        shown = ", ".join(unmatched[:20]) + (f" and {len(unmatched) - 20} more" if len(unmatched) > 20 else "")
        raise UserError(f"freeze rules match no rule for {len(unmatched)} params: {shown}")
    return out


def flat_paths(params) -> dict[str, object]:
    """{"a/b/kernel": leaf}; `params` may hold arrays or shapes."""
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}


@dataclasses.dataclass(frozen=True)
class Plan:
    """Rules resolved against one model's params."""
    rules: dict  # path -> rule
    shapes: dict  # path -> shape

    def labels(self, params):
        """The multi_transform label tree, shaped like `params`."""
        return traverse_util.unflatten_dict({tuple(p.split("/")): label(self.rules[p]) for p in flat_paths(params)})

    @property
    def trainable(self) -> frozenset:
        return frozenset(p for p, r in self.rules.items() if r != FROZEN)

    def frozen_bn(self, batch_stats_paths) -> frozenset:
        """BatchNorm layers whose scale and bias are both frozen: they run on, and keep, running statistics."""
        layers = {p.rsplit("/", 1)[0] for p in batch_stats_paths}
        return frozenset(m for m in layers
                         if all(self.rules.get(f"{m}/{leaf}", FROZEN) == FROZEN for leaf in ("scale", "bias")))

    def counts(self) -> tuple[int, int]:
        """(trainable, frozen) param counts."""
        sizes = {p: int(np.prod(s)) for p, s in self.shapes.items()}
        trainable = sum(n for p, n in sizes.items() if self.rules[p] != FROZEN)
        return trainable, sum(sizes.values()) - trainable

    def table(self) -> str:
        """One line per param (path, shape, rule, count) and the totals: what `--dry-run` prints."""
        width = max(len(p) for p in self.shapes)
        lines = [f"{'path':<{width}}  {'shape':<20} {'rule':<10} {'count':>12}"]
        for path, shape in self.shapes.items():
            n = int(np.prod(shape))
            lines.append(f"{path:<{width}}  {str(tuple(shape)):<20} {self.rules[path]:<10} {n:>12,}")
        trainable, frozen = self.counts()
        lines.append(f"trainable {trainable:,}  frozen {frozen:,}  total {trainable + frozen:,}")
        return "\n".join(lines)


def plan(freeze, family: str, params) -> Plan:
    """Resolves a config's `freeze` against `params` (arrays or shapes)."""
    flat = flat_paths(params)
    shapes = {p: tuple(getattr(v, "shape", v)) for p, v in flat.items()}
    present = {p.split("/")[0] for p in flat}
    return Plan(assign(rules_of(freeze, family, present), list(flat)), shapes)
