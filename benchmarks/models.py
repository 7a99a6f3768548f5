"""Our side of cases a-d: the bundle's jitted forward and research.train's own train step, on random weights
(speed does not depend on their values), so the numbers are those of the code users run."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from . import timing
from research.errors import UserError

CLASSES = 17  # a transfer task's head (flowers17); its size hardly matters to speed
PRESETS = {"b": "head", "c": "top_block", "d": "all"}


@dataclasses.dataclass
class Setup:
    """One model at one input size, batch and dtype, with a device-resident uint8 batch and labels."""
    name: str
    spec: object
    tap: str
    preprocessing: str
    bundle: object
    images: jax.Array
    labels: jax.Array
    dtype: str


def spec_of(name: str):
    """`arch` or `arch:layout` -> a ModelSpec with a fresh linear head; VGGs drop their fc layers and average
    block5_pool, the usual transfer head, so any input size works."""
    from research.models import ARCHS, HeadSpec, ModelSpec

    arch, _, layout = name.partition(":")
    if arch not in ARCHS:
        raise UserError(f"unknown model {arch!r}; known: {', '.join(ARCHS)}")
    layout = layout or ("keras" if "keras" in ARCHS[arch][1] else ARCHS[arch][1][0])
    if ARCHS[arch][0] == "vgg":
        return ModelSpec(arch, layout, include_top=False, num_classes=CLASSES, head=HeadSpec(pool="avg"))
    return ModelSpec(arch, layout, num_classes=CLASSES)


def preprocessing_of(spec) -> str:
    """What the layout's weight files record (the family's source record), as `research.load` would set it."""
    return spec.record.sources[spec.layout].preprocessing


def setup(name: str, image_size: int, batch: int, dtype: str, seed: int = 0) -> Setup:
    from research import Bundle

    spec = spec_of(name)
    variables = random_variables(spec, seed)
    preprocessing = preprocessing_of(spec)
    meta = {"model": spec.to_dict(), "preprocessing": preprocessing, "source": {"file": "random-init"}}
    rng = np.random.default_rng(seed)
    images = jax.device_put(rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8))
    labels = jax.device_put(rng.integers(0, CLASSES, batch).astype(np.int32))
    return Setup(name, spec, spec.feed_tap, preprocessing, Bundle(spec, variables, meta), images, labels, dtype)


def random_variables(spec, seed: int) -> dict:
    """He-normal kernels, unit BatchNorm, from the template's shapes: no init to compile (ResNet-50's takes 10 s
    on two cores), and activations stay finite through 50 random layers."""
    from flax import traverse_util
    from research.weights import mapping

    rng = np.random.default_rng(seed)
    flat = {}
    for key, shape in mapping.template(spec).items():
        if key[-1] == "kernel":
            flat[key] = (rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))).astype(np.float32)
        else:
            flat[key] = (np.ones if key[-1] in ("scale", "var") else np.zeros)(shape, np.float32)
    return traverse_util.unflatten_dict(flat)


def hlo_counts(compiled) -> dict:
    """Op counts in the optimised HLO: the evidence for whether a frozen backward was pruned."""
    text = compiled.as_text()
    cudnn = text.count('custom_call_target="__cudnn$conv')  # a GPU's convolutions, after compilation
    return {"convolution": text.count(" convolution(") + cudnn, "fusion": text.count(" fusion("),
            "dot": text.count(" dot(")}


def forward(s: Setup, dtype: str | None = None) -> timing.Runner:
    """Case a: `forward_fn`, the jitted function `Bundle.features` calls, uint8 in, preprocessing included."""
    from research.bundle import forward_fn

    dtype = dtype or s.dtype
    fn = forward_fn(s.spec, (s.tap,), dtype, s.preprocessing)
    variables = jax.device_put(s.bundle.variables)
    compiled, compile_s, flops = timing.compile_aot(fn, variables, s.images)
    return timing.Runner(lambda: compiled(variables, s.images), compile_s, flops,
                         extra={"tap": s.tap, "dtype": dtype, "hlo": hlo_counts(compiled)})


def train_step(s: Setup, preset: str):
    """research.train's jitted step and initial state for a freeze preset, built as train.loop builds them,
    with the library's default phase (Adam, lr 1e-3, constant)."""
    from research.bundle import DTYPES
    from research.train import config as configs, freeze, optim, step as steps

    variables = s.bundle.variables
    plan = freeze.plan(preset, s.spec.family, variables["params"])
    frozen_bn = plan.frozen_bn(freeze.flat_paths(variables.get("batch_stats", {})))
    model = s.spec.build(DTYPES[s.dtype], frozen_bn=frozen_bn)
    tx, _ = optim.transform(configs.phases(configs.defaults())[0], plan, variables["params"], 1)
    mesh = steps.mesh()
    batch, replicated = steps.shardings(mesh)
    fn = steps.make_train_step(model, tx, plan.trainable, s.preprocessing, None, mesh)
    state = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {}),
             "opt_state": tx.init(variables["params"]), "step": jnp.int32(0)}
    inputs = (jax.device_put(s.images, batch), jax.device_put(s.labels, batch), jax.random.key(0))
    return fn, jax.device_put(state, replicated), inputs, plan


def train(s: Setup, preset: str) -> timing.Runner:
    """Cases b-d: one optimiser step; the donated state is threaded from call to call."""
    fn, state, inputs, plan = train_step(s, preset)
    compiled, compile_s, flops = timing.compile_aot(fn, state, *inputs)
    holder = [state]

    def call():
        holder[0], metrics = compiled(holder[0], *inputs)
        return holder[0], metrics

    trainable, frozen = plan.counts()
    return timing.Runner(call, compile_s, flops, extra={"freeze": preset, "trainable_params": trainable,
                                                        "frozen_params": frozen, "hlo": hlo_counts(compiled)})
