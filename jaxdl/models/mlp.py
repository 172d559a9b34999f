"""Multi-layer perceptron with configurable hidden layers and activation."""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.models.registry import Check, all_positive, probability, register

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": nn.gelu,
    "relu": nn.relu,
    "sigmoid": nn.sigmoid,
    "tanh": jnp.tanh,
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Return the activation function called `name`."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        choices = ", ".join(sorted(ACTIVATIONS))
        raise ValueError(f"unknown activation {name!r}; choose one of: {choices}") from None


@register("mlp")
class MLP(nn.Module):
    """Fully connected net: Dense+activation(+dropout) layers, Dense head."""

    num_outputs: int
    hidden_sizes: Sequence[int] = (32,)
    activation: str = "tanh"
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    checks: ClassVar[Mapping[str, Check]] = {"hidden_sizes": all_positive, "dropout_rate": probability}

    def __post_init__(self) -> None:
        """Validate the activation name at construction, not at first call."""
        get_activation(self.activation)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Return logits of shape (batch, num_outputs)."""
        act = get_activation(self.activation)
        x = x.reshape((x.shape[0], -1))
        for i, size in enumerate(self.hidden_sizes):
            x = nn.Dense(size, dtype=self.dtype, name=f"hidden_{i}")(x)
            x = act(x)
            # A zero rate needs no rng, so skipping it keeps train-mode
            # calls usable without a "dropout" key.
            if self.dropout_rate > 0.0:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_outputs, dtype=self.dtype, name="head")(x)
