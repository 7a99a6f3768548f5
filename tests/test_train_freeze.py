"""Freeze rules: matching, coverage errors, presets on real param trees, optimiser state, the dry-run table."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from research.errors import UserError
from research.models import ModelSpec
from research.train import config, freeze, optim
from research.weights import mapping


def params_of(spec):
    """{params} of `spec` as shapes, from the template (no compute)."""
    flat = {k[1:]: v for k, v in mapping.template(spec).items() if k[0] == "params"}
    return traverse_util.unflatten_dict(flat)


def trainable_modules(plan):
    return sorted({p.split("/")[0] for p in plan.trainable})


def test_first_match_wins_and_multipliers_normalise():
    rules = (("^head/", "lr*10"), ("^stage4/block2/", "lr*0.1"), ("^stage4/", "frozen"), (".*", "train"))
    got = freeze.assign(freeze.rules_of(rules, "resnet"),
                        ["head/fc/kernel", "stage4/block2/conv1/kernel", "stage4/block1/bn1/scale", "stem/conv1/kernel"])
    assert got == {"head/fc/kernel": "lr*10", "stage4/block2/conv1/kernel": "lr*0.1",
                   "stage4/block1/bn1/scale": "frozen", "stem/conv1/kernel": "train"}
    assert freeze.label("train") == freeze.label("lr*1.0") == "lr*1"


def test_unmatched_params_are_listed():
    with pytest.raises(UserError, match=r"no rule for 2 params: stem/conv1/kernel, stem/bn1/scale"):
        freeze.assign((("^head/", "train"),), ["head/fc/kernel", "stem/conv1/kernel", "stem/bn1/scale"])


@pytest.mark.parametrize("bad,message", [
    ((("^head/", "thaw"),), "write frozen, train or lr"),
    ((("^(head", "train"),), "freeze regex"),
    ((("^head/",),), "pair of strings"),
    ("tail", "unknown freeze preset"),
    ("from:stage9", "no tap 'stage9'"),
])
def test_bad_rules(bad, message):
    with pytest.raises(UserError, match=message):
        freeze.rules_of(bad, "resnet")


RESNET = ModelSpec("resnet50", "torchvision", num_classes=10)
VGG = ModelSpec("vgg16", "keras", num_classes=2)


@pytest.mark.parametrize("spec,name,expected", [
    (RESNET, "head", ["head"]),
    (RESNET, "top_block", ["head", "stage4"]),
    (RESNET, "from:stage3", ["head", "stage3", "stage4"]),
    (RESNET, "all", ["head", "stage1", "stage2", "stage3", "stage4", "stem"]),
    (VGG, "top_block", ["block5", "fc1", "fc2", "head"]),
    (VGG, "from:block4_pool", ["block4", "block5", "fc1", "fc2", "head"]),
    (VGG, "from:fc2", ["fc2", "head"]),
])
def test_presets(spec, name, expected):
    plan = freeze.plan(name, spec.family, params_of(spec))
    assert trainable_modules(plan) == expected
    trainable, frozen = plan.counts()
    assert trainable + frozen == sum(int(np.prod(s)) for s in plan.shapes.values())


def test_frozen_bn_are_layers_with_frozen_scale_and_bias():
    spec = ModelSpec("resnet18", "torchvision", num_classes=3)
    stats = [("/".join(k[1:])) for k in mapping.template(spec) if k[0] == "batch_stats"]
    plan = freeze.plan("top_block", "resnet", params_of(spec))
    frozen = plan.frozen_bn(stats)
    assert "stem/bn1" in frozen and "stage3/block2/bn2" in frozen
    assert not any(p.startswith("stage4/") for p in frozen)


def test_frozen_params_have_no_optimizer_state():
    spec = ModelSpec("resnet18", "torchvision", num_classes=3)
    variables = jax.jit(spec.build().init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    params = variables["params"]
    plan = freeze.plan("head", "resnet", params)
    phase = config.phases(config.defaults())[0]
    tx, _ = optim.transform(phase, plan, params, steps_per_epoch=4)
    state_shapes = [x.shape for x in jax.tree.leaves(tx.init(params)) if x.ndim]
    head_shapes = [params["head"]["fc"]["kernel"].shape, params["head"]["fc"]["bias"].shape]
    assert sorted(state_shapes) == sorted(head_shapes * 2)  # Adam's mu and nu for the head only


def test_weight_decay_spares_biases_and_batch_norm():
    params = {"conv": {"kernel": jnp.ones((3, 3, 2, 2)), "bias": jnp.ones(2)}, "bn": {"scale": jnp.ones(2)}}
    cfg = config.defaults().optimizer
    cfg.name, cfg.weight_decay = "sgd", 0.5
    tx = optim.optimizer(cfg, 1.0)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    assert float(updates["conv"]["kernel"][0, 0, 0, 0]) == -0.5
    assert float(updates["conv"]["bias"][0]) == 0.0 and float(updates["bn"]["scale"][0]) == 0.0


def test_schedules():
    cfg = config.defaults().schedule
    cfg.name, cfg.warmup_epochs = "cosine", 1.0
    lr = optim.schedule(cfg, 0.1, steps_per_epoch=10, epochs=3)
    assert float(lr(0)) == 0.0 and abs(float(lr(10)) - 0.1) < 1e-7 and float(lr(30)) < 1e-6
    cfg.name, cfg.warmup_epochs, cfg.boundaries, cfg.factor = "step", 0.0, (1, 2), 0.5
    lr = optim.schedule(cfg, 0.1, steps_per_epoch=10, epochs=3)
    assert [round(float(lr(s)), 6) for s in (9, 10, 25)] == [0.1, 0.05, 0.025]


def test_dry_run_table():
    plan = freeze.plan("head", "vgg", params_of(VGG))
    table = plan.table()
    assert "head/fc/kernel" in table and "(4096, 2)" in table and "frozen" in table
    assert table.splitlines()[-1] == f"trainable {4096 * 2 + 2:,}  frozen {134_260_544:,}  total {134_268_738:,}"


CONVNEXT = ModelSpec("convnext_tiny", "keras", num_classes=3)


def test_last_k_blocks_follow_depth_not_names():
    """block10 is deeper than block9 (not alphabetical), across stages, and what follows the last block trains."""
    plan = freeze.plan("last:4", RESNET.family, params_of(RESNET))
    trained = sorted({"/".join(p.split("/")[:2]) for p in plan.trainable})
    assert trained == ["head/fc", "stage3/block6", "stage4/block1", "stage4/block2", "stage4/block3"]
    convnext = freeze.plan("last:10", CONVNEXT.family, params_of(CONVNEXT))
    blocks = {"/".join(p.split("/")[:2]) for p in convnext.trainable if "/block" in p}
    assert blocks == {"stage3/block9", "stage4/block1", "stage4/block2", "stage4/block3"} | {
        f"stage3/block{i}" for i in range(3, 9)}
    assert {"top_norm", "head"} <= set(trainable_modules(convnext))
    with pytest.raises(UserError, match="only 16 blocks"):
        freeze.plan("last:17", RESNET.family, params_of(RESNET))
    with pytest.raises(UserError, match="positive integer"):
        config.check_freeze("last:0")


def test_bias_and_norm_presets():
    bitfit = freeze.plan("bias", CONVNEXT.family, params_of(CONVNEXT))
    assert all(p.endswith("/bias") or p.startswith("head/") for p in bitfit.trainable)
    assert "stage2/block1/pointwise_conv_1/bias" in bitfit.trainable
    assert "head/fc/kernel" in bitfit.trainable and "stage2/block1/pointwise_conv_1/kernel" not in bitfit.trainable
    norms = freeze.plan("norm", CONVNEXT.family, params_of(CONVNEXT))
    assert {p.rsplit("/", 2)[-2] for p in norms.trainable if not p.startswith("head/")} == {"norm", "top_norm"}
    assert "stage2/block1/layer_scale/gamma" not in norms.trainable


def test_layer_decay_scales_by_depth_and_keeps_frozen_params_frozen():
    decay = 0.5
    plan = freeze.plan("last:2", CONVNEXT.family, params_of(CONVNEXT), layer_decay=decay)
    rules = plan.rules
    n = 18  # ConvNeXt-T: 3 + 3 + 9 + 3 blocks
    assert rules["head/fc/kernel"] == rules["top_norm/scale"] == "lr*1"  # depth n + 1
    assert freeze.multiplier(rules["stage4/block3/norm/scale"]) == pytest.approx(decay ** 1)
    assert freeze.multiplier(rules["stage4/block2/norm/scale"]) == pytest.approx(decay ** 2)
    assert rules["stage4/block1/norm/scale"] == rules["stem/conv/kernel"] == freeze.FROZEN
    everything = freeze.plan("all", CONVNEXT.family, params_of(CONVNEXT), layer_decay=decay).rules
    assert freeze.multiplier(everything["stem/conv/kernel"]) == pytest.approx(decay ** (n + 1))
    # stage 2's downsampling runs just before its first block (depth 4)
    assert freeze.multiplier(everything["stage2/downsample/conv/kernel"]) == pytest.approx(decay ** (n + 1 - 4))
    assert freeze.multiplier(everything["stage1/block1/norm/scale"]) == pytest.approx(decay ** n)
    with pytest.raises(UserError, match="layer_decay"):
        freeze.plan("all", CONVNEXT.family, params_of(CONVNEXT), layer_decay=1.5)
