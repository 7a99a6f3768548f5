"""The jitted steps: frozen parts stay bit-identical and get no backward pass, eval is exact on a partial last
batch, see test_train_sharding.py for 8 devices."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax import lax

from research.models import ModelSpec, layers
from research.train import config, freeze, optim, step as steps

SPEC = ModelSpec("resnet18", "torchvision", num_classes=3)
# The last block and the head: trainable BatchNorm and a short backward pass, so it compiles quickly.
LAST_BLOCK = (("^(stage4/block2|head)/", "train"), (".*", "frozen"))


@functools.lru_cache(maxsize=None)
def initial(spec):
    return jax.jit(spec.build().init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def setup(preset, spec=SPEC, lr=1e-2, devices=None, optimizer="adam"):
    """(train step, eval step, initial state, plan) for `spec` with freeze `preset`."""
    variables = jax.tree.map(jnp.copy, initial(spec))  # the step donates its state
    plan = freeze.plan(preset, spec.family, variables["params"])
    frozen_bn = plan.frozen_bn(freeze.flat_paths(variables["batch_stats"]))
    phase = config.phases(config.defaults())[0]
    phase.learning_rate, phase.optimizer.name, phase.optimizer.momentum = lr, optimizer, 0.9
    tx, _ = optim.transform(phase, plan, variables["params"], steps_per_epoch=4)
    mesh = steps.mesh(devices)
    train = steps.make_train_step(spec.build(frozen_bn=frozen_bn), tx, plan.trainable, "torch", None, mesh)
    evaluate = steps.make_eval_step(spec.build(), "torch", mesh)
    state = {**variables, "opt_state": tx.init(variables["params"]), "step": jnp.int32(0)}
    return train, evaluate, state, plan


def batch(seed=0, n=8):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), (np.arange(n) % 3).astype(np.int32)


def flat(tree):
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def test_frozen_params_and_statistics_are_bit_identical():
    train, _, state, plan = setup(LAST_BLOCK)
    before = {c: flat(state[c]) for c in ("params", "batch_stats")}
    for i in range(3):
        state, metrics = train(state, *batch(i), jax.random.key(0))
    after = {c: flat(state[c]) for c in ("params", "batch_stats")}
    for path, value in before["params"].items():
        same = np.array_equal(value, after["params"][path])
        assert same == (path not in plan.trainable), path
    for path, value in before["batch_stats"].items():
        same = np.array_equal(value, after["batch_stats"][path])
        assert same == (not path.startswith("stage4/block2/")), path
    assert np.isfinite(float(metrics["loss"]))


def conv_count(compiled_text: str) -> int:
    return compiled_text.count("convolution(")


def test_frozen_backbone_gets_no_backward_pass(monkeypatch):
    """Head only: the step has exactly the forward's convolutions; everything trained: about three times.
    Counted with plain lax convolutions: at this size the small-map ones would otherwise be matmuls."""
    monkeypatch.setattr(layers, "conv_general_dilated", lax.conv_general_dilated)
    images, labels = batch()
    model = SPEC.build()
    _, _, state, _ = setup("head")
    forward = jax.jit(lambda v, x: model.apply(v, x.astype(jnp.float32)))
    forward_convs = conv_count(forward.lower({"params": state["params"], "batch_stats": state["batch_stats"]},
                                             images).compile().as_text())
    counts = {}
    for preset in ("head", "all"):
        train, _, state, _ = setup(preset)
        counts[preset] = conv_count(train.lower(state, images, labels, jax.random.key(0)).compile().as_text())
    assert forward_convs == 20  # resnet18: stem, 16 in blocks, 3 downsamples
    assert counts["head"] == forward_convs
    assert counts["all"] == 3 * forward_convs - 1  # no gradient for the input image


def test_eval_is_exact_on_a_partial_last_batch():
    _, evaluate, state, _ = setup("head")
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    images, labels = batch(5, n=11)
    model = SPEC.build()
    logits = np.asarray(model.apply(variables, steps.preprocess.apply("torch", images))["logits"], np.float64)
    log_probs = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    correct = loss = count = 0.0
    for start in range(0, 11, 4):  # batches of 4, 4 and 3 (padded to 4)
        got = steps.pad_batch(images[start:start + 4], labels[start:start + 4], 4)
        sums, _ = evaluate(variables, got["images"], got["labels"], got["mask"])
        correct, loss, count = correct + float(sums["correct"]), loss + float(sums["loss"]), count + float(sums["count"])
    assert count == 11
    assert correct / count == np.mean(logits.argmax(1) == labels)
    np.testing.assert_allclose(loss / count, -np.mean(log_probs[np.arange(11), labels]), rtol=1e-5)


def test_bfloat16_compute_with_augmentation_keeps_float32_params():
    from research.data.augment import AugmentConfig

    variables = jax.tree.map(jnp.copy, initial(SPEC))
    plan = freeze.plan("head", "resnet", variables["params"])
    phase = config.phases(config.defaults())[0]
    tx, _ = optim.transform(phase, plan, variables["params"], steps_per_epoch=4)
    frozen_bn = plan.frozen_bn(freeze.flat_paths(variables["batch_stats"]))
    train = steps.make_train_step(SPEC.build(jnp.bfloat16, frozen_bn), tx, plan.trainable, "torch",
                                  AugmentConfig(flip=True, rotation=10.0, shift=0.0, shear=0.0, zoom=0.0),
                                  steps.mesh())
    state = {**variables, "opt_state": tx.init(variables["params"]), "step": jnp.int32(0)}
    state, metrics = train(state, *batch(), jax.random.key(0))
    assert np.isfinite(float(metrics["loss"]))
    assert {x.dtype for x in jax.tree.leaves(state["params"])} == {jnp.dtype(jnp.float32)}

