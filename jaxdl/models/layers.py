"""Layers shared by several model families."""

import flax.linen as nn
import jax
import jax.numpy as jnp


class StochasticDepth(nn.Module):
    """Drops a whole residual branch per example with probability `rate` in training ("row" mode).

    Kept examples are scaled by 1 / (1 - rate); in evaluation this is the identity.
    Draws from the 'dropout' RNG.
    """

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """`x` with whole examples zeroed at random (train) or unchanged (eval)."""
        if not train or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
        if keep == 0.0:
            return jnp.zeros_like(x)
        return x * (mask / keep).astype(x.dtype)
