"""Logistic regression: a single dense layer that returns logits."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.models.registry import register


@register("logistic_regression")
class LogisticRegression(nn.Module):
    """Linear model producing logits; the task applies sigmoid or softmax."""

    num_outputs: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Return logits of shape (batch, num_outputs)."""
        # `train` is unused but kept so every model shares one call signature.
        del train
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(self.num_outputs, dtype=self.dtype, name="dense")(x)
