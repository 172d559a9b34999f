"""Layers shared by several model families: torch-style BatchNorm, Kaiming init, stochastic depth, remat, conv."""

import contextlib
import contextvars
import functools
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# The mapped axis BatchNorm averages its batch statistics over; read when a model is traced.
_BATCH_NORM_AXIS: contextvars.ContextVar[str | None] = contextvars.ContextVar("batch_norm_axis", default=None)


@contextlib.contextmanager
def batch_norm_axis(axis_name: str | None) -> Iterator[None]:
    """Within this context, every `batch_norm` traced averages its statistics over mapped axis `axis_name`.

    For `jax.pmap(step, axis_name="batch")`: enter the context around the
    traced step (it is read at trace time, like flax's `nn.logical_axis_rules`),
    so BatchNorm sees the global batch rather than each device's shard. Under
    jit over a sharded global batch no axis is needed. Models carry no axis
    field, because only BatchNorm needs one.

    The axis is not part of jit's or pmap's cache key: trace a function either
    always or never inside this context (wrap it in a new function otherwise).
    """
    token = _BATCH_NORM_AXIS.set(axis_name)
    try:
        yield
    finally:
        _BATCH_NORM_AXIS.reset(token)


def current_batch_norm_axis() -> str | None:
    """The axis set by the innermost `batch_norm_axis` context, or None."""
    return _BATCH_NORM_AXIS.get()


def batch_norm(
    train: bool,
    *,
    name: str,
    dtype: Any = jnp.float32,
    momentum: float = 0.1,
    epsilon: float = 1e-5,
    scale_init: nn.initializers.Initializer = nn.initializers.ones,
) -> nn.BatchNorm:
    """torch's BatchNorm2d as a flax BatchNorm: batch statistics in training, running averages in evaluation.

    `momentum` is torch's (the weight of the new batch; flax's momentum is
    1 - momentum). Variables are `params/<name>/{scale,bias}` and
    `batch_stats/<name>/{mean,var}`. Statistics are averaged over the axis of
    the enclosing `batch_norm_axis` context, if any.
    """
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=1.0 - momentum,
        epsilon=epsilon,
        axis_name=_BATCH_NORM_AXIS.get(),
        dtype=dtype,
        scale_init=scale_init,
        name=name,
    )


def kaiming_normal(mode: str = "fan_out") -> nn.initializers.Initializer:
    """torch's `kaiming_normal_(nonlinearity="relu")`: N(0, 2 / fan), untruncated; `mode` is "fan_in" or "fan_out"."""
    return nn.initializers.variance_scaling(2.0, mode, "normal")


class StochasticDepth(nn.Module):
    """Drops a whole residual branch per example with probability `rate` in training ("row" mode).

    Kept examples are scaled by 1 / (1 - rate); in evaluation this is the identity.
    Draws from the 'dropout' RNG.
    """

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, rate: jax.Array | None = None) -> jax.Array:
        """`x` with whole examples zeroed at random (train) or unchanged (eval).

        `rate`, a traced scalar, replaces the field's rate: a scanned stack of
        blocks shares one module definition, so each layer's rate arrives as
        data. The field then only says whether the branch is ever dropped (0: never).
        """
        if not train or self.rate == 0.0:
            return x
        if rate is not None:
            keep = 1.0 - jnp.asarray(rate, jnp.float32)
            mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
            # keep == 0 drops every example; dividing by 1 there keeps 0 / 0 (and its gradient) out.
            return x * (mask / jnp.where(keep > 0, keep, 1.0)).astype(x.dtype)
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
        if keep == 0.0:
            return jnp.zeros_like(x)
        return x * (mask / keep).astype(x.dtype)


# config.remat -> the jax.checkpoint policy of the saved values (None: save nothing, recompute all).
REMAT_POLICIES = {
    "none": None,
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy(field: str, value: str) -> None:
    """A model hyperparameter check: `value` names a remat policy."""
    if value not in REMAT_POLICIES:
        raise ValueError(f"{field}={value!r} is not valid; choose one of: {', '.join(REMAT_POLICIES)}")


def remat(block: type[nn.Module], policy: str, *, static_argnums: tuple[int, ...] = (), scanned: bool = False):
    """`block` rematerialised under `policy` (a key of REMAT_POLICIES); "none" returns `block` itself.

    "full" saves only the block's inputs and recomputes everything else in the
    backward pass; "dots_saveable" keeps the matmul outputs and recomputes the
    cheap elementwise work between them. `static_argnums` counts `self` as 0
    (flax's convention), e.g. (2,) for `__call__(self, x, train)`. Under
    `nn.scan` (`scanned=True`) the loop already keeps XLA from merging the
    recomputation with the forward pass, so jax's CSE guard is not needed there
    (jax.checkpoint's documented advice for scan bodies).
    """
    remat_policy("remat", policy)
    if policy == "none":
        return block
    return nn.remat(block, policy=REMAT_POLICIES[policy], static_argnums=static_argnums, prevent_cse=not scanned)


# --- Convolution with a CPU weight gradient made of matrix products (issue 19) ---
#
# XLA:CPU computes a conv's weight gradient (dW) as a convolution of the input with
# the output cotangent, which for many shapes runs slower than the same sum written
# as one matrix product per kernel tap: dW[i, j] = x_shifted(i, j)^T @ dy, with
# x_shifted the strided slice of the padded input that tap (i, j) sees. The forward
# pass and the input gradient stay XLA's, except for depthwise convs: there XLA:CPU's
# forward and strided input gradient are slow too, and the whole conv is the tap sum
# (`depthwise_conv`), differentiated by JAX. The tap form is chosen when the program is
# lowered (`lax.platform_dependent`), so GPU and TPU programs keep XLA's rule unchanged.

# lax.conv_dimension_numbers of flax's 2-D layout ("NHWC", "HWIO", "NHWC"): the only layout with the tap rule.
_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))

# The rule (`tap_rule_pays`), from `python experiments/benchmark_conv.py` (JAX 0.10.2, the 2-core CPU,
# median of 3, ms of dW alone, XLA's vs the taps'; every conv shape of resnet18 / resnet50 /
# efficientnet_b0 / yolov8n at their benchmark sizes):
#
#   1x1, groups 1 (one matmul): the taps win on every shape, 1.3-15x: resnet50 8x56x56 256->128:
#     161 vs 19; 64->256: 90 vs 11; yolov8n 2x160x160 32->32: 13 vs 1.6; 1x1 stride 2 alike
#     (resnet18 64x32x32 64->128: 38 vs 5.4). Always taps.
#   depthwise and grouped (groups > 1): the taps win 1-40x (efficientnet_b0 8x7x7 1152 ch 5x5:
#     309 vs 13; 8x56x56 144 ch 3x3: 295 vs 59; 8x112x112 32 ch: 61 vs 59). Always taps.
#   k x k, groups 1: no rule found. The taps won on some shapes (resnet18 64x16x16 128->128:
#     132 vs 84; yolov8n 2x80x80 80->80: 53 vs 21) and lost on others (resnet50 8x56x56 64->64:
#     50 vs 73; the 7x7 stem on 3 channels: 62 vs 144; yolov8n 2x40x40 64->64: 2.2 vs 7.7), with
#     neither N*Ho*Wo nor the channel count separating them, measured while the machine was shared.
#     So XLA's dW, never slower than today. Re-measured on a quiet machine with the whole conv
#     (fwd + dX + dW, `python experiments/dense_conv_alternatives.py`, 3x3 stride 1, resnet18 CIFAR,
#     resnet50 and yolov8n shapes), nothing written in XLA ops beats XLA's rule on every shape:
#     this conv with the taps 0.84-1.38x XLA's time (resnet18 64x16x16 128->128: 118 vs 86 ms;
#     yolov8n 2x80x80 64->64: 23 vs 27), the flattened-row tap products 1.06-1.57x, their
#     one-matmul im2col 1.09-1.97x, Winograd F(2x2,3x3) 1.0-1.9x, F(4x4,3x3) 2.5-7.4x (its forward
#     alone 0.9-3.5x). XLA's library paths for convs (its YNNPACK, XNNPACK and oneDNN fusion flags,
#     the script's docstring) were no faster either. In the ResNet-18 step (`python experiments/benchmark_resnet18.py
#     --repeats=3`, batch 64) the taps for every conv gave 0.44 steps/s against 0.43 (this rule)
#     and 0.42 (XLA's): within the spread between rounds.
_MAX_TAPS = 49  # Beyond 7x7 the per-tap products are many and small (e.g. ViT's 16x16 patch conv): XLA's.

# Which weight-gradient rule `conv_general_dilated` takes; set by `conv_rule`, read when a conv is traced.
CONV_RULES = ("measured", "xla", "taps")
_CONV_RULE: contextvars.ContextVar[str] = contextvars.ContextVar("conv_rule", default="measured")


@contextlib.contextmanager
def conv_rule(rule: str) -> Iterator[None]:
    """Within this context, every `conv_general_dilated` traced takes `rule`'s weight gradient on CPU.

    "measured" (the default): the tap rule where `tap_rule_pays`, else XLA's;
    "xla": `lax.conv_general_dilated` itself; "taps": the tap rule wherever it
    can express the conv (for tests and benchmarks). Like `batch_norm_axis`, it
    is read at trace time and is not part of jit's cache key: trace a function
    either always or never inside it.
    """
    if rule not in CONV_RULES:
        raise ValueError(f"conv rule {rule!r} is not valid; choose one of: {', '.join(CONV_RULES)}")
    token = _CONV_RULE.set(rule)
    try:
        yield
    finally:
        _CONV_RULE.reset(token)


class ConvPlan(NamedTuple):
    """A 2-D NHWC/HWIO convolution with explicit padding, as the tap rule sees it."""

    strides: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    dilation: tuple[int, int]
    groups: int
    precision: Any


def conv_plan(
    lhs_shape: tuple[int, ...],
    rhs_shape: tuple[int, ...],
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> ConvPlan | None:
    """The tap rule's plan for this conv, or None where the rule cannot express it (XLA's rule is used)."""
    if len(lhs_shape) != 4 or len(rhs_shape) != 4 or batch_group_count != 1 or preferred_element_type is not None:
        return None
    if lhs_dilation is not None and tuple(lhs_dilation) != (1, 1):
        return None  # A transposed conv: XLA's rule.
    if lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers) != _NHWC:
        return None
    kernel_h, kernel_w, _, _ = rhs_shape
    dilation = (1, 1) if rhs_dilation is None else tuple(int(d) for d in rhs_dilation)
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
        window = [_dilated_extent(k, d) for k, d in zip((kernel_h, kernel_w), dilation, strict=True)]
        padding = lax.padtype_to_pads(lhs_shape[1:3], window, strides, padding)
    pads = tuple((int(low), int(high)) for low, high in padding)
    plan = ConvPlan(strides, pads, dilation, int(feature_group_count), precision)
    if any(size <= 0 for size in conv_output_shape(plan, lhs_shape, rhs_shape)):
        return None
    return plan


def _dilated_extent(size: int, dilation: int) -> int:
    """The extent of a kernel of `size` taps spaced `dilation` apart."""
    return 0 if size == 0 else 1 + dilation * (size - 1)


def conv_output_shape(plan: ConvPlan, lhs_shape: tuple[int, ...], rhs_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The NHWC output shape of `plan` on these input and kernel shapes."""
    spatial = []
    for size, kernel, stride, dilation, (low, high) in zip(
        lhs_shape[1:3], rhs_shape[:2], plan.strides, plan.dilation, plan.padding, strict=True
    ):
        extent = size + low + high - _dilated_extent(kernel, dilation)
        spatial.append(extent // stride + 1 if extent >= 0 else 0)
    return (lhs_shape[0], *spatial, rhs_shape[3])


def _xla_conv(plan: ConvPlan, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(
        lhs,
        rhs,
        plan.strides,
        plan.padding,
        rhs_dilation=plan.dilation,
        dimension_numbers=_NHWC,
        feature_group_count=plan.groups,
        precision=plan.precision,
    )


def _tap_weight_grad(plan: ConvPlan, lhs: jax.Array, cotangent: jax.Array, kernel_shape: tuple[int, ...]) -> jax.Array:
    """dW as one product per kernel tap of the tap's strided input slice with the cotangent, in float32 or wider."""
    _, _, group_in, _ = kernel_shape
    accumulate = jnp.promote_types(lhs.dtype, jnp.float32)
    taps = [
        _group_product(window, cotangent, plan.groups, group_in, accumulate, plan.precision)
        for _, _, window in _tap_windows(plan, lhs, kernel_shape, cotangent.shape)
    ]
    return jnp.stack(taps).reshape(kernel_shape)


def _tap_windows(
    plan: ConvPlan, lhs: jax.Array, kernel_shape: tuple[int, ...], out_shape: tuple[int, ...]
) -> Iterator[tuple[int, int, jax.Array]]:
    """(i, j, the strided slice of the padded input that kernel tap (i, j) sees), in row-major tap order."""
    kernel_h, kernel_w = kernel_shape[:2]
    batch, out_h, out_w, _ = out_shape
    (stride_h, stride_w), (dil_h, dil_w) = plan.strides, plan.dilation
    # lax.pad also crops where a padding is negative, as the conv does.
    padding = ((0, 0, 0), (*plan.padding[0], 0), (*plan.padding[1], 0), (0, 0, 0))
    padded = lax.pad(lhs, jnp.zeros((), lhs.dtype), padding)
    for i in range(kernel_h):
        for j in range(kernel_w):
            start = (0, i * dil_h, j * dil_w, 0)
            limit = (batch, start[1] + (out_h - 1) * stride_h + 1, start[2] + (out_w - 1) * stride_w + 1, lhs.shape[3])
            yield i, j, lax.slice(padded, start, limit, (1, stride_h, stride_w, 1))


def _group_product(
    window: jax.Array, cotangent: jax.Array, groups: int, group_in: int, accumulate: Any, precision: Any
) -> jax.Array:
    """One tap's dW, (in / groups, out): one matmul, or one per group (depthwise convs take `depthwise_conv`)."""
    out = cotangent.shape[-1]
    if groups == 1:
        # Flattened to 2-D first: XLA:CPU runs this (N*H*W, C)^T @ (N*H*W, O) 1.2-1.6x faster than the 4-D einsum.
        rows = window.reshape(-1, window.shape[-1]).T
        return jnp.matmul(rows, cotangent.reshape(-1, out), precision=precision, preferred_element_type=accumulate)
    grouped_window = window.reshape(*window.shape[:3], groups, group_in)
    grouped_cotangent = cotangent.reshape(*cotangent.shape[:3], groups, out // groups)
    product = jnp.einsum(
        "nhwgc,nhwgo->cgo", grouped_window, grouped_cotangent, precision=precision, preferred_element_type=accumulate
    )
    return product.reshape(group_in, out)


def tap_rule_pays(plan: ConvPlan, lhs_shape: tuple[int, ...], rhs_shape: tuple[int, ...]) -> bool:
    """Whether the tap rule's dW beats XLA's on CPU for this conv: the measured rule in the notes above."""
    del lhs_shape  # The rule as measured so far depends on the kernel and the groups only.
    taps = rhs_shape[0] * rhs_shape[1]
    if taps > _MAX_TAPS:
        return False
    return plan.groups > 1 or taps == 1


def is_depthwise(plan: ConvPlan, lhs_shape: tuple[int, ...], rhs_shape: tuple[int, ...]) -> bool:
    """One filter per input channel (channel multiplier 1): EfficientNet's, ConvNeXt's and YOLO11's depthwise convs."""
    return plan.groups > 1 and plan.groups == lhs_shape[3] and rhs_shape[2] == 1 and rhs_shape[3] == plan.groups


def _depthwise_taps(plan: ConvPlan, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    """A depthwise conv as the sum over kernel taps of the tap's strided input slice times its filter row.

    Elementwise work that XLA:CPU fuses, accumulated in float32 or wider. JAX
    differentiates it into pads (dX) and multiply-reduces (dW). Measured against
    XLA's depthwise conv on the 2-core CPU (`experiments/benchmark_conv.py`,
    efficientnet_b0 at 224 px, batch 8): forward 10-30x faster (8x56x56 144 ch
    3x3: 100.6 vs 3.2 ms), forward + dX + dW 6-36x (8x112x112 96 ch 3x3 stride 2:
    718 vs 58 ms), where XLA's strided dX alone took up to 585 ms.
    """
    accumulate = jnp.promote_types(lhs.dtype, jnp.float32)
    total = None
    for i, j, window in _tap_windows(plan, lhs, rhs.shape, conv_output_shape(plan, lhs.shape, rhs.shape)):
        term = window.astype(accumulate) * rhs[i, j, 0].astype(accumulate)
        total = term if total is None else total + term
    return total.astype(lhs.dtype)


def depthwise_conv(plan: ConvPlan, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    """A depthwise conv (`is_depthwise`): the tap sum on CPU, forward and both gradients; XLA's conv elsewhere."""
    return lax.platform_dependent(
        lhs, rhs, cpu=functools.partial(_depthwise_taps, plan), default=functools.partial(_xla_conv, plan)
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def tap_conv(plan: ConvPlan, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    """The conv of `plan` (from `conv_plan`) with the tap rule's weight gradient on CPU, whether or not it pays."""
    return _xla_conv(plan, lhs, rhs)


def _tap_conv_fwd(plan: ConvPlan, lhs: jax.Array, rhs: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    # The residuals are those of XLA's own rule: each gradient needs the other operand.
    return _xla_conv(plan, lhs, rhs), (lhs, rhs)


def _tap_conv_bwd(
    plan: ConvPlan, residuals: tuple[jax.Array, jax.Array], cotangent: jax.Array
) -> tuple[jax.Array, jax.Array]:
    lhs, rhs = residuals
    lhs_struct = jax.ShapeDtypeStruct(lhs.shape, lhs.dtype)
    rhs_struct = jax.ShapeDtypeStruct(rhs.shape, rhs.dtype)
    # linear_transpose applies conv's own transpose rules without evaluating the forward conv again.
    (lhs_grad,) = jax.linear_transpose(lambda x: _xla_conv(plan, x, rhs), lhs_struct)(cotangent)

    def xla_weight_grad(lhs: jax.Array, cotangent: jax.Array) -> jax.Array:
        return jax.linear_transpose(lambda w: _xla_conv(plan, lhs, w), rhs_struct)(cotangent)[0]

    def tap_weight_grad(lhs: jax.Array, cotangent: jax.Array) -> jax.Array:
        return _tap_weight_grad(plan, lhs, cotangent, rhs.shape).astype(rhs.dtype)

    rhs_grad = lax.platform_dependent(lhs, cotangent, cpu=tap_weight_grad, default=xla_weight_grad)
    return lhs_grad, rhs_grad


tap_conv.defvjp(_tap_conv_fwd, _tap_conv_bwd)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """`lax.conv_general_dilated` with, on CPU, a weight gradient made of one matrix product per kernel tap.

    Same signature and forward result as lax's; the input gradient is XLA's. A
    depthwise conv (`is_depthwise`) is the tap sum on CPU, forward and gradients,
    equal to lax's up to float rounding.
    Convs the tap rule cannot express (other layouts, transposed convs, batch
    groups, mixed dtypes) or where it does not pay (`tap_rule_pays`) are lax's
    conv unchanged, as is every conv traced inside `conv_rule("xla")`.
    """
    args = (window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count)
    rest = (batch_group_count, precision, preferred_element_type)
    lhs_shape, rhs_shape, rule = jnp.shape(lhs), jnp.shape(rhs), _CONV_RULE.get()
    plan = None if rule == "xla" else conv_plan(lhs_shape, rhs_shape, *args, *rest)
    taps = plan is not None and (rule == "taps" or tap_rule_pays(plan, lhs_shape, rhs_shape))
    if not taps or jnp.result_type(lhs) != jnp.result_type(rhs):
        return lax.conv_general_dilated(lhs, rhs, *args, *rest)
    if is_depthwise(plan, lhs_shape, rhs_shape):
        return depthwise_conv(plan, lhs, rhs)
    return tap_conv(plan, lhs, rhs)


# flax's Conv with jaxdl's conv: every family builds its convolutions with this.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
