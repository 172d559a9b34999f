"""Layers shared by several model families: torch-style BatchNorm, Kaiming init, stochastic depth, remat."""

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

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
