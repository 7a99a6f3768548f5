"""Which params train, and how fast: an ordered list of (regex, rule) pairs over param paths, first match wins.

A path is the param's place in the tree joined by "/" ("stage4/block2/conv1/kernel", "head/fc/bias"); a regex
matches if `re.search` finds it. A rule is "frozen", "train" (= "lr*1") or "lr*X" (trainable at X times the
learning rate). Every param must be matched, so that adding a layer never silently freezes or trains it.

Presets: `head`; `top_block` (the last stage and whatever sits above it); `all`; `from:TAP` (the module that
produces TAP and everything after it); `last:K` (the last K blocks, `block<i>` modules in depth order, and
everything after them: a transformer's last K layers); `bias` (BitFit: every bias, and the head); `norm` (every
normalisation layer's scale and bias, modules named `*norm*`, and the head). The optimizer is an
`optax.multi_transform` over the rule labels with `optax.set_to_zero()` for "frozen", so frozen params carry no
optimizer state.

Layer-wise learning-rate decay (`layer_decay` d < 1, as BEiT and MAE fine-tune): a trainable param at depth i
of n blocks trains at d**(n + 1 - i) times its rule's rate; what comes before the first block (the stem, patch
embedding and tokens) is depth 0, what comes after the last (final norm, head) depth n + 1.
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


PRESETS = "head, top_block, all, from:TAP, last:K, bias, norm"
HEAD_RULE = (f"^{registry.HEAD}/", "train")
BLOCK = re.compile(r"^(.*?(?:^|/)block\d+)/")  # a block module's path: `block3`, `stage4/block2`
NORM_PARAM = r"(^|/)[^/]*norm[^/]*/(scale|bias)$"


def preset(name: str, family: str, paths=()) -> tuple[tuple[str, str], ...]:
    """A named rule list, cut at the family's modules (its registry record); `from:TAP` trains the module
    producing TAP and all after it. `last:K` needs the model's param `paths` (its depth is the model's)."""
    record = registry.family(family)
    if name == "all":
        return ((".*", "train"),)
    if name == "bias":
        return HEAD_RULE, (r"(^|/)bias$", "train"), (".*", FROZEN)
    if name == "norm":
        return HEAD_RULE, (NORM_PARAM, "train"), (".*", FROZEN)
    if name.startswith("last:"):
        return _last_blocks(name, record, paths)
    if name == "head":
        start = registry.HEAD
    elif name == "top_block":
        start = record.top_block if isinstance(record.top_block, str) else record.top_block(_tops(paths))
    elif name.startswith("from:"):
        start = record.module_of(name.removeprefix("from:"))
        if start is None:
            raise UserError(f"freeze {name!r}: {family} has no tap {name[5:]!r} with params of its own")
    else:
        raise UserError(f"unknown freeze preset {name!r}; known: {PRESETS}")
    return _from_module(record.modules, start)


def _from_module(modules, start: str):
    trained = "|".join(modules[modules.index(start):])
    return ((f"^({trained})/", "train"), (".*", FROZEN))


def last_count(name: str) -> int:
    text = name.removeprefix("last:")
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"freeze {name!r}: K must be a positive integer (last:K)")
    return int(text)


def blocks(paths) -> list[str]:
    """The model's block modules (`block<i>` anywhere in a path), shallowest first by their numbers."""
    found = {m.group(1) for p in paths if (m := BLOCK.match(p))}
    return sorted(found, key=lambda b: tuple(int(n) for n in re.findall(r"\d+", b)))


def _last_blocks(name: str, record, paths):
    k, found = last_count(name), blocks(paths)
    if not found:
        raise UserError(f"freeze {name!r}: {record.name} has no block<i> modules")
    if k > len(found):
        raise UserError(f"freeze {name!r}: the model has only {len(found)} blocks")
    last_top = found[-1].split("/")[0]  # the top-level module holding the last block; what follows it trains
    after = record.modules[record.modules.index(last_top) + 1:] if last_top in record.modules else ()
    trained = "|".join(re.escape(b) for b in found[-k:])
    rules = ((f"^({trained})/", "train"),) + (((f"^({'|'.join(after)})/", "train"),) if after else ())
    return rules + ((".*", FROZEN),)


def depths(paths, modules) -> dict[str, int]:
    """{path: depth} for layer-wise decay: block i (1-based) is i; a param beside the blocks of its top-level
    module (a stage's downsampling) is the depth of that module's first block; before the first block 0, after
    the last n+1, by the top-level module's place in the family's `modules`."""
    found = blocks(paths)
    index = {b: i for i, b in enumerate(found, start=1)}
    entry = {}  # top-level module -> the depth of its first block
    for b in found:
        entry.setdefault(b.split("/")[0], index[b])
    first = modules.index(found[0].split("/")[0]) if found and found[0].split("/")[0] in modules else 0
    out = {}
    for path in paths:
        top = path.split("/")[0]
        if m := BLOCK.match(path):
            out[path] = index[m.group(1)]
        elif top in entry:
            out[path] = entry[top]
        else:
            out[path] = 0 if top not in modules or modules.index(top) <= first else len(found) + 1
    return out


def _tops(paths) -> set[str]:
    """The top-level modules of param `paths`: what a `top_block` that depends on the model's depth reads."""
    return {p.split("/")[0] for p in paths}


def rules_of(freeze, family: str, paths=()) -> tuple[tuple[str, str], ...]:
    """A config's `freeze` (a preset name or a sequence of pairs) as checked (regex, rule) pairs."""
    if isinstance(freeze, str):
        return preset(freeze, family, paths)
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


def plan(freeze, family: str, params, layer_decay: float = 1.0) -> Plan:
    """Resolves a config's `freeze` against `params` (arrays or shapes), with layer-wise decay below 1."""
    flat = flat_paths(params)
    shapes = {p: tuple(getattr(v, "shape", v)) for p, v in flat.items()}
    rules = assign(rules_of(freeze, family, list(flat)), list(flat))
    if layer_decay != 1.0:
        rules = decayed(rules, layer_decay, registry.family(family).modules)
    return Plan(rules, shapes)


def decayed(rules: dict, decay: float, modules) -> dict:
    """Trainable rules scaled by decay**(n + 1 - depth); frozen ones stay frozen."""
    if not 0 < decay <= 1:
        raise UserError(f"layer_decay must be in (0, 1], got {decay}")
    depth = depths(list(rules), modules)
    top = max(depth.values(), default=0)
    return {p: r if r == FROZEN else f"lr*{multiplier(r) * decay ** (top - depth[p]):.6g}" for p, r in rules.items()}
