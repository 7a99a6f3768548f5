"""The classifier on top of a backbone: its shape (`HeadSpec`), the module (`Head`), a backbone with a non-linear
head (`Classifier`), and swapping heads (the source weights with a fresh head for a new set of classes).

Swapping is used by fine-tuning (the dataset's classes) and by `Bundle.with_head` /
`research.load(num_classes=...)`. The head is replaced unless the source already has exactly the asked-for head
(resuming from a fine-tuned workdir); the source's top layers (VGG's fc1/fc2) are dropped when the target spec
has no top.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.errors import UserError
from research.models import layers
from research.models.registry import HEAD

if TYPE_CHECKING:
    from research.models import ModelSpec

HEAD_POOLS = ("flatten", "avg")


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """The classifier's shape, hashable so a spec can key the jit cache; the default is the linear head.

    `hidden`: widths of the ReLU dense layers before the final one. `dropout`: the rate before each dense layer,
    one float for all or one per layer (seed 004's Flatten-Dense(256)-Dropout(0.5)-Dense is hidden=(256,),
    dropout=(0, 0.5)). `batch_norm`: BN before each dropout+dense (seed 000's GAP-BN-Dropout-Dense(512)-BN-Dropout-
    Dense). `pool`: how a spatial input (VGG's block5_pool when there is no top) becomes a vector.
    """
    hidden: tuple = ()
    dropout: Any = 0.0
    batch_norm: bool = False
    pool: str = "flatten"

    def __post_init__(self):
        hidden = tuple(int(h) for h in self.hidden)
        rates = self.dropout if isinstance(self.dropout, (tuple, list)) else (self.dropout,) * (len(hidden) + 1)
        rates = tuple(float(r) for r in rates)
        if len(rates) != len(hidden) + 1 or not all(0.0 <= r < 1.0 for r in rates):
            raise UserError(f"head dropout must be one rate in [0, 1) or one per dense layer "
                            f"({len(hidden) + 1}), got {self.dropout!r}")
        if any(h < 1 for h in hidden):
            raise UserError(f"head hidden widths must be positive, got {self.hidden!r}")
        if self.pool not in HEAD_POOLS:
            raise UserError(f"unknown head pool {self.pool!r}; known: {', '.join(HEAD_POOLS)}")
        object.__setattr__(self, "hidden", hidden)
        object.__setattr__(self, "dropout", rates)
        object.__setattr__(self, "batch_norm", bool(self.batch_norm))

    @property
    def is_linear(self) -> bool:
        return self == HeadSpec()

    @classmethod
    def of(cls, value) -> "HeadSpec":
        """A HeadSpec from itself, a dict (as stored in research.json) or None (the linear head)."""
        if value is None or isinstance(value, cls):
            return value or cls()
        return cls(**dict(value))


class Head(nn.Module):
    """The classifier: ImageNet's own, or a fresh one of any size and `spec`; the final dense layer is `fc`,
    hidden ones `fc1`, `fc2`..., the BN before dense layer k `bn{k}` (the last one's k is len(hidden) + 1)."""
    num_classes: int
    dtype: Any = jnp.float32
    spec: HeadSpec = HeadSpec()
    train: bool = False
    norm: Any = None  # a BatchNorm partial, needed when spec.batch_norm

    @nn.compact
    def __call__(self, x):
        if x.ndim == 4:
            x = x.reshape(x.shape[0], -1) if self.spec.pool == "flatten" else jnp.mean(x, axis=(1, 2))
        widths = self.spec.hidden + (self.num_classes,)
        for k, (width, rate) in enumerate(zip(widths, self.spec.dropout), start=1):
            if self.spec.batch_norm:
                x = self.norm(name=f"bn{k}")(x)
            if rate:
                x = nn.Dropout(rate, deterministic=not self.train)(x)
            last = k == len(widths)
            x = nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32, name="fc" if last else f"fc{k}")(x)
            if not last:
                x = nn.relu(x)
        return x


def pooled_logits(got, x, num_classes: int, dtype: Any, train: bool = False, dropout: float = 0.0) -> dict:
    """The usual end of a family's forward, called inside its compact `__call__`: `pre_logits`, the global average
    of the last map, then (with a head) dropout and `Head` (named `head`) for `logits`. Returns the taps so far."""
    x = jnp.mean(x, axis=(1, 2))
    if got.add("pre_logits", x) or not num_classes:
        return got.out
    if dropout:
        x = nn.Dropout(dropout, deterministic=not train)(x)
    got.add("logits", Head(num_classes, dtype, name=HEAD)(x))
    return got.out


class Classifier(nn.Module):
    """A headless backbone plus a non-linear `Head`, with the backbone's params at their usual paths (the scope is
    shared) and the head's under `head/`, so freeze rules and converters see the same names as without it."""
    backbone: nn.Module
    feed: str
    head: HeadSpec
    num_classes: int
    bn_settings: tuple
    dtype: Any = jnp.float32
    frozen_bn: frozenset = frozenset()

    def setup(self):
        nn.share_scope(self, self.backbone)

    @nn.compact
    def __call__(self, x, train: bool = False, taps=("logits",)):
        wanted = set(taps)
        out = self.backbone(x, train=train, taps=tuple((wanted - {"logits"}) | {self.feed}))
        if "logits" in wanted:
            norm = layers.norm_partial(self.dtype, train, **dict(self.bn_settings), frozen=self.frozen_bn)
            out["logits"] = Head(self.num_classes, self.dtype, self.head, train, norm, name=HEAD)(out[self.feed])
        return {k: v for k, v in out.items() if k in wanted}


def target_spec(source: ModelSpec, num_classes: int, head_cfg: dict, include_top: bool) -> ModelSpec:
    keep_top = source.include_top and include_top
    return dataclasses.replace(source, num_classes=num_classes, head=HeadSpec.of(head_cfg),
                               include_top=keep_top)


def attach(source: ModelSpec, variables: dict, spec: ModelSpec, image_size: int, seed: int) -> dict:
    """`variables` of `source` -> those of `spec`: the backbone kept, a fresh head initialised from `seed`."""
    if spec == source:
        return variables
    if spec.fixed_input_size and spec.fixed_input_size != image_size:
        raise UserError(f"{spec.arch} with this head flattens into a dense layer and needs "
                        f"{spec.fixed_input_size}px images, not {image_size}px; use head.pool='avg'")
    dropped = {HEAD} | (set() if spec.include_top else set(spec.top_modules))
    out = {col: {k: v for k, v in tree.items() if k not in dropped} for col, tree in variables.items()}
    if spec.num_classes:
        for col, tree in fresh_head(spec, image_size, seed).items():
            out.setdefault(col, {})[HEAD] = jax.tree.map(np.asarray, tree)
    return out


def fresh_head(spec: ModelSpec, image_size: int, seed: int) -> dict:
    """A new head's variables, sized by the backbone's output at `image_size` (computed abstractly)."""
    backbone = dataclasses.replace(spec, num_classes=0, head=HeadSpec()).build()
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    features = jax.eval_shape(lambda x: backbone.init_with_output(jax.random.key(0), x, taps=(spec.feed_tap,))[0],
                              x)[spec.feed_tap]
    norm = layers.norm_partial(jnp.float32, False, **dict(spec.bn_settings))
    head = Head(spec.num_classes, jnp.float32, spec.head, False, norm)
    return head.init(jax.random.key(seed), jnp.zeros(features.shape, jnp.float32))
