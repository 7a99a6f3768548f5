"""The CPU lowering choices: 1x1 and small-map convolutions as matrix products and max-pooling from slices
(research/models/layers.py), and the XLA options our jitted functions compile with (research/xla.py). None may
change the numbers beyond float32 rounding."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from research import xla
from research.errors import UserError
from research.models import ModelSpec, layers, lowering

NHWC = ("NHWC", "HWIO", "NHWC")


def both(shape, kernel, stride, padding, groups=1, seed=0, features=6, dtype=jnp.float32, **kw):
    """(lax's output and grads, ours) for one convolution on random data; `kw` goes to both."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(shape), dtype)
    w = jnp.asarray(rng.standard_normal((kernel, kernel, shape[-1] // groups, features)), dtype)
    numbers = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)

    def run(conv, **more):
        f = lambda x, w: conv(x, w, (stride, stride), padding, dimension_numbers=numbers,  # noqa: E731
                              feature_group_count=groups, **kw, **more)
        return f(x, w), jax.grad(lambda x, w: jnp.sum(f(x, w).astype(jnp.float32) ** 2), (0, 1))(x, w)

    return run(lax.conv_general_dilated, precision="highest"), run(lowering.conv_general_dilated), (x, w, numbers)


def assert_close(got, ref, tolerance=1e-5):
    got, ref = np.asarray(got, np.float32), np.asarray(ref, np.float32)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=tolerance, atol=tolerance * float(np.abs(ref).max()))


@pytest.mark.parametrize("shape,kernel,stride,padding", [
    ((2, 2, 2, 5), 3, 1, ((1, 1), (1, 1))),      # ResNet-50's stage4 at 64 px
    ((2, 1, 1, 5), 3, 1, ((1, 1), (1, 1))),      # ... at 32 px
    ((2, 2, 3, 5), 3, 2, ((1, 1), (1, 1))),      # torchvision's stride-2 3x3, a non-square map
    ((2, 2, 2, 5), 3, 2, ((0, 1), (0, 1))),      # TF SAME for stride 2
    ((2, 3, 5, 5), 7, 2, ((3, 3), (3, 3))),      # a stem on a tiny input
    ((2, 2, 2, 5), 3, 1, "SAME"),
    ((2, 5, 7, 5), 1, 1, ((0, 0), (0, 0))),      # a bottleneck's 1x1
    ((2, 5, 7, 5), 1, 2, ((0, 0), (0, 0))),      # Keras ResNet v1's strided 1x1, odd sizes
    ((2, 4, 4, 5), 1, 2, "SAME"),
    ((2, 4, 4, 5), 1, 1, "VALID"),
])
def test_matmul_convs_match_lax_with_their_gradients(shape, kernel, stride, padding):
    (ref, ref_grads), (got, grads), _ = both(shape, kernel, stride, padding)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * float(jnp.abs(ref).max()))
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * float(jnp.abs(r).max()))


@pytest.mark.parametrize("shape,kernel,stride,padding,groups,features", [
    ((2, 9, 9, 6), 3, 1, ((1, 1), (1, 1)), 6, 6),      # MobileNetV2's depthwise
    ((2, 9, 8, 6), 3, 2, ((0, 1), (0, 1)), 6, 6),      # TF SAME / correct_pad for stride 2, a non-square map
    ((2, 10, 10, 6), 5, 2, ((1, 2), (1, 2)), 6, 6),    # EfficientNet-Lite's 5x5 stride 2, SAME
    ((2, 9, 9, 6), 5, 1, "SAME", 6, 6),
    ((2, 8, 8, 4), 7, 1, ((3, 3), (3, 3)), 4, 4),      # ConvNeXt's 7x7
    ((2, 3, 3, 4), 7, 1, ((3, 3), (3, 3)), 4, 4),      # ... on a map smaller than the kernel
    ((2, 7, 7, 4), 3, 1, ((1, 1), (1, 1)), 4, 8),      # a channel multiplier of 2
    ((2, 7, 7, 6), 3, 2, ((1, 1), (1, 1)), 2, 4),      # grouped, 3 channels in and 2 out per group
    ((2, 7, 7, 8), 3, 1, ((1, 1), (1, 1)), 2, 8),      # grouped, 4 in, 4 out
])
def test_depthwise_and_grouped_convs_match_lax_with_their_gradients(shape, kernel, stride, padding, groups, features):
    (ref, ref_grads), (got, grads), _ = both(shape, kernel, stride, padding, groups, features=features)
    assert_close(got, ref)
    for g, r in zip(grads, ref_grads):  # the input's and the weights' gradients
        assert_close(g, r)


@pytest.mark.parametrize("groups", [6, 3])
def test_grouped_convs_take_bfloat16_with_float32_accumulation(groups):
    """As the families call them under bf16 (`preferred_element_type=float32`): exact products, float32 sums."""
    (ref, ref_grads), (got, grads), _ = both((2, 8, 8, 6), 3, 2, ((0, 1), (0, 1)), groups, dtype=jnp.bfloat16,
                                             preferred_element_type=jnp.float32)
    assert got.dtype == ref.dtype == jnp.float32
    assert_close(got, ref)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == r.dtype == jnp.bfloat16
        assert_close(g, r, 1e-2)  # the gradients are rounded to bfloat16


def test_depthwise_convs_become_shifted_products_and_grouped_weight_gradients_matmuls(monkeypatch):
    assert "convolution" not in lowered_ops((2, 6, 6, 6), 3, groups=6)
    x, w = jnp.ones((2, 6, 6, 4)), jnp.ones((3, 3, 2, 4))
    conv = lambda x, w: lowering.conv_general_dilated(  # noqa: E731
        x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=lax.conv_dimension_numbers(x.shape, w.shape, NHWC),
        feature_group_count=2)
    assert "convolution" in jax.jit(conv).lower(x, w).as_text()  # grouped: XLA's forward
    weight_grad = jax.jit(jax.grad(lambda w: jnp.sum(conv(x, w)))).lower(w).as_text()
    assert "convolution" not in weight_grad and "dot_general" in weight_grad
    monkeypatch.setattr(xla, "on_cpu", lambda: False)  # GPUs keep their measured convolutions
    assert "convolution" in lowered_ops((2, 6, 6, 6), 3, groups=6)


def test_a_mobile_model_matches_plain_lax_convs(monkeypatch):
    """EfficientNet-Lite0 to stage3: 3x3 and 5x5 depthwise convs, stride 1 and 2 with SAME's asymmetric pads."""
    from research.models import ARCHS

    spec = ModelSpec("efficientnet_lite0", ARCHS["efficientnet_lite0"][1][0], num_classes=5)
    images = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
    variables = jax.jit(spec.build().init)(jax.random.key(0), images)
    taps = ("stage3",)
    ours = jax.jit(lambda v, x: spec.build().apply(v, x, taps=taps))(variables, images)  # traced on the call
    monkeypatch.setattr(layers, "conv_general_dilated", lax.conv_general_dilated)
    plain = jax.jit(lambda v, x: spec.build().apply(v, x, taps=taps))(variables, images)
    for tap in taps:
        assert_close(ours[tap], plain[tap])


def lowered_ops(shape, kernel, groups=1, padding=((1, 1), (1, 1)), stride=1) -> str:
    *_, (x, w, numbers) = both(shape, kernel, stride, padding, groups)
    fn = jax.jit(lambda x, w: lowering.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=numbers,
                                                          feature_group_count=groups))
    return fn.lower(x, w).as_text()


def test_only_maps_smaller_than_the_kernel_become_a_matmul():
    assert "convolution" not in lowered_ops((2, 2, 2, 4), 3) and "dot_general" in lowered_ops((2, 2, 2, 4), 3)
    assert "convolution" in lowered_ops((2, 3, 3, 4), 3)  # as large as the kernel: XLA's fast path
    assert "convolution" in lowered_ops((2, 2, 2, 4), 3, groups=2)  # grouped: left to lax


def test_unpadded_1x1_convs_become_a_matmul_on_cpu_only(monkeypatch):
    for stride in (1, 2):
        ops = lowered_ops((2, 4, 4, 4), 1, padding=((0, 0), (0, 0)), stride=stride)
        assert "convolution" not in ops and "dot_general" in ops
    assert "convolution" in lowered_ops((2, 4, 4, 4), 1)  # padded: a border of zeros that a slice cannot give
    assert "convolution" in lowered_ops((2, 4, 4, 4), 1, groups=2)
    monkeypatch.setattr(xla, "on_cpu", lambda: False)  # GPUs keep their measured convolutions
    assert "convolution" in lowered_ops((2, 4, 4, 4), 1, padding=((0, 0), (0, 0)))


def test_a_resnet_on_1x1_and_2x2_maps_matches_plain_lax_convs(monkeypatch):
    spec = ModelSpec("resnet18", "torchvision", num_classes=5)
    images = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
    model = spec.build()
    variables = model.init(jax.random.key(0), images)
    ours = model.apply(variables, images, taps=("stage4", "logits"))
    monkeypatch.setattr(layers, "conv_general_dilated", lax.conv_general_dilated)
    plain = spec.build().apply(variables, images, taps=("stage4", "logits"))
    assert ours["stage4"].shape[1:3] == (1, 1)
    for tap in ours:
        np.testing.assert_allclose(ours[tap], plain[tap], rtol=1e-5, atol=1e-5 * float(jnp.abs(plain[tap]).max()))


def test_cpu_options_opt_out_of_ynnpack(monkeypatch):
    monkeypatch.delenv(xla.ENV, raising=False)
    assert xla.cpu_mode() == "eigen"
    assert xla.options() == {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
    monkeypatch.setenv(xla.ENV, "default")
    assert xla.options() is None
    monkeypatch.setenv(xla.ENV, "fast")
    with pytest.raises(UserError, match="RESEARCH_XLA_CPU='fast'"):
        xla.options()


def test_our_jitted_forward_compiles_with_the_options(monkeypatch):
    from research.bundle import forward_body

    monkeypatch.delenv(xla.ENV, raising=False)
    spec = ModelSpec("resnet18", "torchvision", num_classes=5)
    images = jnp.zeros((1, 32, 32, 3), jnp.uint8)
    variables = spec.build().init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    compiled = xla.jit(forward_body(spec, ("logits",), "float32", "torch")).lower(variables, images).compile()
    assert "convolution(" in compiled.as_text() and "__ynn" not in compiled.as_text()  # XLA's own convolutions
    column_sum = xla.jit(lambda x: x.sum((0, 1, 2)))  # a bias gradient's reduction
    assert "__ynn_fusion" in column_sum.lower(jnp.ones((8, 16, 16, 64))).compile().as_text()  # YNNPACK keeps those
    with pytest.raises(ValueError, match="compiler_options"):  # why forward_body exists: no options when nested
        jax.jit(lambda v, x: xla.jit(forward_body(spec, ("logits",), "float32", "torch"))(v, x))(variables, images)


@pytest.mark.parametrize("shape,window,stride,padding", [((2, 9, 7, 3), 3, 2, 1), ((2, 8, 8, 3), 2, 2, 0),
                                                         ((2, 7, 7, 3), 2, 2, 0)])
def test_max_pool_from_slices_matches_reduce_window(shape, window, stride, padding):
    import flax.linen as nn

    x = jnp.asarray(np.random.default_rng(1).permutation(np.prod(shape)).reshape(shape), jnp.float32)  # no ties
    pads = ((padding, padding), (padding, padding))
    reference = lambda x: nn.max_pool(x, (window, window), strides=(stride, stride), padding=pads)  # noqa: E731
    ours = lambda x: layers.max_pool(x, window, stride, padding)  # noqa: E731
    np.testing.assert_array_equal(ours(x), reference(x))
    np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(ours(x) ** 2))(x),
                                  jax.grad(lambda x: jnp.sum(reference(x) ** 2))(x))
