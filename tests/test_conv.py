"""jaxdl's conv: lax's forward exactly, XLA's gradients within rounding, XLA's rule off CPU and where unsupported."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxdl import models
from jaxdl.models import layers
from tests import helpers

NHWC = ("NHWC", "HWIO", "NHWC")

# (input NHWC, kernel HWIO, strides, padding, kernel dilation, groups): every kind of conv the families use.
CASES = {
    "3x3_same": ((3, 9, 9, 4), (3, 3, 4, 6), (1, 1), "SAME", (1, 1), 1),
    "3x3_stride2_same": ((3, 9, 9, 4), (3, 3, 4, 6), (2, 2), "SAME", (1, 1), 1),
    "3x3_stride2_valid": ((3, 9, 10, 4), (3, 3, 4, 6), (2, 2), "VALID", (1, 1), 1),
    "3x3_explicit_uneven": ((3, 9, 10, 4), (3, 3, 4, 6), (2, 1), ((2, 1), (0, 3)), (1, 1), 1),
    "3x3_negative_padding": ((2, 9, 10, 4), (3, 3, 4, 5), (1, 1), ((-1, 2), (1, -1)), (1, 1), 1),
    "3x3_dilation2": ((3, 11, 10, 4), (3, 3, 4, 6), (1, 1), "SAME", (2, 2), 1),
    "3x3_dilation2_stride2": ((1, 11, 12, 3), (3, 3, 3, 4), (2, 2), ((2, 2), (2, 2)), (2, 2), 1),
    "1x1": ((3, 7, 7, 8), (1, 1, 8, 5), (1, 1), "VALID", (1, 1), 1),
    "1x1_stride2": ((5, 8, 8, 8), (1, 1, 8, 16), (2, 2), "SAME", (1, 1), 1),
    "5x5": ((3, 10, 10, 4), (5, 5, 4, 6), (1, 1), "SAME", (1, 1), 1),
    "7x7_stride2_stem": ((3, 16, 16, 3), (7, 7, 3, 8), (2, 2), ((3, 3), (3, 3)), (1, 1), 1),
    "depthwise_3x3": ((3, 9, 10, 6), (3, 3, 1, 6), (1, 1), "SAME", (1, 1), 6),
    "depthwise_5x5_stride2": ((3, 11, 10, 6), (5, 5, 1, 6), (2, 2), "SAME", (1, 1), 6),
    "depthwise_multiplier2": ((3, 9, 9, 4), (3, 3, 1, 8), (1, 1), "SAME", (1, 1), 4),
    "groups2": ((3, 9, 10, 4), (3, 3, 2, 6), (1, 1), "SAME", (1, 1), 2),
    "groups2_stride2_1x1": ((3, 8, 8, 4), (1, 1, 2, 6), (2, 2), "VALID", (1, 1), 2),
    "batch1": ((1, 6, 6, 3), (3, 3, 3, 4), (1, 1), "SAME", (1, 1), 1),
}


def _operands(lhs_shape, rhs_shape, dtype=jnp.float32, seed=0):
    keys = jax.random.split(jax.random.key(seed), 2)
    return jax.random.normal(keys[0], lhs_shape, dtype), jax.random.normal(keys[1], rhs_shape, dtype)


def _loss(conv, strides, padding, dilation, groups, weights):
    """A scalar of the conv's output whose cotangent is `weights` (random, so every output element counts)."""

    def loss(lhs, rhs):
        y = conv(lhs, rhs, strides, padding, rhs_dilation=dilation, dimension_numbers=NHWC, feature_group_count=groups)
        return jnp.sum(y.astype(jnp.float32) * weights)

    return loss


def _relative_error(actual, expected) -> float:
    """The largest difference relative to the largest magnitude (0 where both are all zeros, e.g. a frozen conv)."""
    difference = float(jnp.max(jnp.abs(actual - expected)))
    return difference / float(jnp.max(jnp.abs(expected))) if difference else 0.0


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_is_lax_exactly(case: str) -> None:
    """The forward result is lax.conv_general_dilated's: bit for bit, or within float rounding for a depthwise conv.

    A depthwise conv (channel multiplier 1) is the tap sum on CPU, forward included,
    which adds the same products in another order.
    """
    lhs_shape, rhs_shape, strides, padding, dilation, groups = CASES[case]
    lhs, rhs = _operands(lhs_shape, rhs_shape)
    kwargs = dict(rhs_dilation=dilation, dimension_numbers=NHWC, feature_group_count=groups)
    plan = layers.conv_plan(lhs_shape, rhs_shape, strides, padding, None, dilation, NHWC, groups)
    depthwise = layers.is_depthwise(plan, lhs_shape, rhs_shape)
    assert depthwise == (case in ("depthwise_3x3", "depthwise_5x5_stride2"))

    def assert_equal(actual, expected):
        if depthwise:
            assert actual.dtype == expected.dtype and _relative_error(actual, expected) < 1e-6
        else:
            np.testing.assert_array_equal(actual, expected)

    expected = lax.conv_general_dilated(lhs, rhs, strides, padding, **kwargs)
    assert_equal(layers.conv_general_dilated(lhs, rhs, strides, padding, **kwargs), expected)
    jitted = {
        name: jax.jit(lambda lhs, rhs, conv=conv: conv(lhs, rhs, strides, padding, **kwargs))(lhs, rhs)
        for name, conv in (("xla", lax.conv_general_dilated), ("jaxdl", layers.conv_general_dilated))
    }
    assert_equal(jitted["jaxdl"], jitted["xla"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_equal_xla(case: str) -> None:
    """Input and kernel gradients under each rule (xla, taps, measured) equal XLA's within 1e-5 relative (float32)."""
    lhs_shape, rhs_shape, strides, padding, dilation, groups = CASES[case]
    assert layers.conv_plan(lhs_shape, rhs_shape, strides, padding, None, dilation, NHWC, groups) is not None
    lhs, rhs = _operands(lhs_shape, rhs_shape)
    out_shape = lax.conv_general_dilated(
        lhs, rhs, strides, padding, rhs_dilation=dilation, dimension_numbers=NHWC, feature_group_count=groups
    ).shape
    weights = jax.random.normal(jax.random.key(7), out_shape)
    grads = {}
    for rule in ("xla", "taps", "measured"):
        with layers.conv_rule(rule):
            loss = _loss(layers.conv_general_dilated, strides, padding, dilation, groups, weights)
            grads[rule] = jax.jit(jax.grad(loss, argnums=(0, 1)))(lhs, rhs)
    expected_grads = jax.grad(_loss(lax.conv_general_dilated, strides, padding, dilation, groups, weights), (0, 1))
    for rule, actual_grads in grads.items():
        for actual, expected in zip(actual_grads, expected_grads(lhs, rhs), strict=True):
            assert actual.shape == expected.shape and actual.dtype == expected.dtype
            assert _relative_error(actual, expected) < 1e-5, rule


@pytest.mark.parametrize("case", ["3x3_stride2_same", "depthwise_3x3", "groups2", "1x1_stride2"])
def test_bfloat16_inputs_with_float32_params(case: str) -> None:
    """flax's Conv in bfloat16 with float32 params: XLA's dtypes, and its gradients within bfloat16 rounding."""
    lhs_shape, rhs_shape, strides, padding, dilation, groups = CASES[case]
    x = jax.random.normal(jax.random.key(1), lhs_shape, jnp.bfloat16)
    kwargs = dict(
        features=rhs_shape[-1],
        kernel_size=rhs_shape[:2],
        strides=strides,
        padding=padding,
        kernel_dilation=dilation,
        feature_group_count=groups,
        dtype=jnp.bfloat16,
    )
    params = nn.Conv(**kwargs).init(jax.random.key(0), x)
    weights = jax.random.normal(jax.random.key(7), nn.Conv(**kwargs).apply(params, x).shape)

    def grads(module):
        loss = lambda p, x: jnp.sum(module.apply(p, x).astype(jnp.float32) * weights)  # noqa: E731
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)

    with layers.conv_rule("taps"):
        ours, actual = grads(layers.Conv(**kwargs))
    value, expected = grads(nn.Conv(**kwargs))
    assert float(value) == pytest.approx(float(ours), rel=1e-2)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert a.dtype == e.dtype and a.shape == e.shape
        assert _relative_error(a.astype(jnp.float32), e.astype(jnp.float32)) < 3e-2
    assert jax.tree.leaves(actual[0])[0].dtype == jnp.float32 and actual[1].dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "lhs_shape, rhs_shape, padding, kwargs",
    [
        ((2, 5, 5, 3), (3, 3, 3, 4), ((1, 1), (2, 1)), dict(lhs_dilation=(2, 2), dimension_numbers=NHWC)),  # transposed
        ((2, 3, 5, 5), (4, 3, 3, 3), "SAME", dict(dimension_numbers=("NCHW", "OIHW", "NCHW"))),
        ((2, 7, 3), (3, 3, 4), "SAME", dict(dimension_numbers=("NWC", "WIO", "NWC"))),
        ((4, 5, 5, 3), (3, 3, 3, 4), "SAME", dict(dimension_numbers=NHWC, batch_group_count=2)),
        ((2, 16, 16, 3), (8, 8, 3, 4), "SAME", dict(dimension_numbers=NHWC)),  # more taps than the tap rule takes
    ],
)
def test_unsupported_convs_are_xlas(lhs_shape, rhs_shape, padding, kwargs) -> None:
    """A conv the tap rule cannot express, or where it does not pay, is lax's, gradients included: never an error."""
    strides = (1,) * (len(lhs_shape) - 2)
    plan = layers.conv_plan(lhs_shape, rhs_shape, strides, padding, **kwargs)
    assert plan is None or not layers.tap_rule_pays(plan, lhs_shape, rhs_shape)
    lhs, rhs = _operands(lhs_shape, rhs_shape)

    def loss(conv):
        return lambda lhs, rhs: jnp.sum(jnp.sin(conv(lhs, rhs, strides, padding, **kwargs)))

    expected = jax.grad(loss(lax.conv_general_dilated), argnums=(0, 1))(lhs, rhs)
    actual = jax.grad(loss(layers.conv_general_dilated), argnums=(0, 1))(lhs, rhs)
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(a, e)


def _lowered_grad(platform: str, rhs_shape=(3, 3, 4, 5), groups: int = 1) -> str:
    lhs, rhs = _operands((2, 8, 8, 4), rhs_shape)

    def loss(lhs, rhs):
        y = layers.conv_general_dilated(lhs, rhs, (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=groups)
        return jnp.sum(y**2)

    with layers.conv_rule("taps"):
        traced = jax.jit(jax.grad(loss, argnums=(0, 1))).trace(lhs, rhs)
    return traced.lower(lowering_platforms=(platform,)).as_text()


def test_gpu_lowering_is_xlas_rule() -> None:
    """Lowered for CUDA, the gradient is XLA's three convolutions and no matmul; on CPU dW is the taps' matmuls."""
    gpu = _lowered_grad("cuda")
    assert gpu.count("stablehlo.convolution") == 3
    assert "stablehlo.dot_general" not in gpu
    cpu = _lowered_grad("cpu")
    assert cpu.count("stablehlo.convolution") == 2
    assert cpu.count("stablehlo.dot_general") == 9


def test_depthwise_is_xlas_conv_off_the_cpu_and_taps_on_it() -> None:
    """A depthwise conv lowered for CUDA is XLA's forward, dX and dW convolutions; on CPU it has no convolution."""
    for rule in ("taps", "measured"):
        with layers.conv_rule(rule):
            gpu = _lowered_grad("cuda", (3, 3, 1, 4), groups=4)
            cpu = _lowered_grad("cpu", (3, 3, 1, 4), groups=4)
        assert gpu.count("stablehlo.convolution") == 3, rule
        assert "stablehlo.convolution" not in cpu and cpu.count("stablehlo.slice") >= 9, rule


def test_conv_rule_context() -> None:
    """`conv_rule("xla")` traces lax's conv with no custom rule, "taps" jaxdl's; an unknown rule is an error."""
    lhs, rhs = _operands((2, 6, 6, 3), (3, 3, 3, 4))

    def jaxpr() -> str:
        # A new function each time: the context is not part of make_jaxpr's cache key.
        def conv(lhs, rhs):
            return layers.conv_general_dilated(lhs, rhs, (1, 1), "SAME", dimension_numbers=NHWC)

        return str(jax.make_jaxpr(conv)(lhs, rhs))

    with layers.conv_rule("xla"):
        inside = jaxpr()
    assert "custom_vjp" not in inside and "conv_general_dilated" in inside
    with layers.conv_rule("taps"):
        assert "custom_vjp" in jaxpr()
    with pytest.raises(ValueError, match="'fast'.*measured, xla, taps"):
        with layers.conv_rule("fast"):
            pass


@pytest.mark.parametrize(
    "lhs_shape, rhs_shape, strides, groups, taps",
    [
        ((2, 7, 7, 1152), (5, 5, 1, 1152), (1, 1), 1152, True),  # depthwise
        ((64, 32, 32, 64), (1, 1, 64, 128), (2, 2), 1, True),  # 1x1 stride 2
        ((8, 28, 28, 4), (3, 3, 2, 8), (1, 1), 2, True),  # grouped
        ((64, 32, 32, 64), (3, 3, 64, 64), (1, 1), 1, False),  # dense 3x3: no faster rule found
        ((8, 224, 224, 3), (7, 7, 3, 64), (2, 2), 1, False),  # the 7x7 stem on 3 channels
        ((2, 64, 64, 3), (16, 16, 3, 8), (16, 16), 1, False),  # a ViT patch conv: 256 taps
    ],
)
def test_measured_rule(lhs_shape, rhs_shape, strides, groups, taps: bool) -> None:
    """The measured rule takes the taps where they were measured faster, XLA's dW elsewhere."""
    plan = layers.conv_plan(lhs_shape, rhs_shape, strides, "SAME", None, None, NHWC, groups)
    assert layers.tap_rule_pays(plan, lhs_shape, rhs_shape) is taps


def _train_step_grads(model: nn.Module, variables, x, weights):
    """One train-mode step's loss and parameter gradients (a fixed random projection of every output)."""

    def loss(params):
        outputs, _ = model.apply(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(3)}
        )
        terms = [leaf.astype(jnp.float32) * w for leaf, w in zip(jax.tree.leaves(outputs), weights, strict=True)]
        # The loss sums terms of both signs: its rounding is relative to the sum of their sizes.
        return sum(jnp.sum(t) for t in terms), sum(jnp.sum(jnp.abs(t)) for t in terms)

    (loss, scale), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    return loss, scale, grads


@pytest.mark.parametrize(
    "name, kwargs, shape",
    [
        ("resnet18", dict(num_outputs=10, cifar_stem=True, image_size=32), (3, 32, 32, 3)),
        # Batch 8 at 64 px: at 3 x 32 px its last stages' train-mode BatchNorms normalise over 3
        # values, which turned float rounding in a depthwise forward into 2e-3 in some gradients.
        ("efficientnet_tiny", dict(num_outputs=10), (8, 64, 64, 3)),
        ("yolov8_tiny", dict(num_outputs=3), (2, 64, 64, 3)),
    ],
)
def test_family_train_step_equals_xla(name: str, kwargs: dict, shape: tuple) -> None:
    """A train step's loss and gradients with the tap rule on every conv equal those with XLA's within 1e-5.

    The loss is compared relative to the sum of its terms' sizes. Each gradient is
    compared relative to its own largest entry, or to 1% of the largest gradient of
    the model where its own is smaller: a gradient that is zero in exact arithmetic
    (a BatchNorm bias followed by another train-mode BatchNorm, as in EfficientNet's
    blocks) is float noise, 1e-8 of the largest, whose relative error says nothing.
    Where the forward pass is the taps' (depthwise convs) that noise differs from XLA's.
    """
    model = models.create_model(name, **kwargs)
    x = jax.random.normal(jax.random.key(1), shape)
    variables = jax.jit(lambda k: model.init(k, x, train=False))(jax.random.key(0))
    outputs = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    weights = [jax.random.normal(jax.random.key(i), o.shape) for i, o in enumerate(jax.tree.leaves(outputs))]
    with layers.conv_rule("taps"):
        loss, _, grads = _train_step_grads(model, variables, x, weights)
    with layers.conv_rule("xla"):
        expected_loss, scale, expected = _train_step_grads(model, variables, x, weights)
    assert abs(float(loss) - float(expected_loss)) < 1e-5 * float(scale)
    floor = 0.01 * max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(expected))
    for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
        reference = expected
        for key in path:
            reference = reference[key.key]
        scale = max(float(jnp.max(jnp.abs(reference))), floor)
        assert float(jnp.max(jnp.abs(leaf - reference))) / scale < 1e-5, jax.tree_util.keystr(path)


def test_dense_conv_alternatives_equal_xla_at_toy_size(capsys) -> None:
    # experiments/dense_conv_alternatives.py: the formulations the notes compare with XLA's dense 3x3 rule
    # compute the same conv (an odd size: Winograd's last tiles are cropped at the edge).
    script = helpers.load_experiment("dense_conv_alternatives")
    results = script.main(["--shapes=2x7x3x4", "--repeats=1"])
    assert set(results) == {"2x7x3x4"}
    for per_shape in results.values():
        assert set(per_shape) == set(script.FORMULATIONS)
        for name, numbers in per_shape.items():
            assert max(numbers["max_rel_err_y_dx_dw"]) < 1e-5, name
    assert "winograd_f4 fwd / fwd+dX+dW" in capsys.readouterr().out
