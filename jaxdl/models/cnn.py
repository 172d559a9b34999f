"""Small convolutional network: conv-relu-pool blocks and a dense head."""

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.models import layers
from jaxdl.models.registry import Check, all_positive, positive, probability, register


@register("cnn")
class CNN(nn.Module):
    """Conv(-BatchNorm)-ReLU-MaxPool blocks, then Dense-ReLU-Dropout-Dense.

    With `features_only` it returns {stride: output of each block (after its pool)}
    instead of logits, {2, 4} by default, and builds no dense layers.
    """

    num_outputs: int
    features: Sequence[int] = (32, 64)
    kernel_size: int = 3
    dense_features: int = 128
    dropout_rate: float = 0.25
    use_batch_norm: bool = False
    features_only: bool = False
    dtype: Any = jnp.float32

    checks: ClassVar[Mapping[str, Check]] = {
        "features": all_positive,
        "kernel_size": positive,
        "dense_features": positive,
        "dropout_rate": probability,
    }

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array | dict[int, jax.Array]:
        """Logits of shape (batch, num_outputs) for NHWC input, or {stride: map} with `features_only`."""
        k = self.kernel_size
        features = {}
        for i, feat in enumerate(self.features):
            x = layers.Conv(
                feat,
                (k, k),
                padding="SAME",
                dtype=self.dtype,
                name=f"conv_{i}",
            )(x)
            if self.use_batch_norm:
                x = layers.batch_norm(train, dtype=self.dtype, name=f"bn_{i}")(x)
            x = nn.relu(x)
            # SAME padding lets odd sizes shrink by ceil(n / 2) instead of
            # failing, so tiny 8x8 inputs survive several blocks.
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
            features[2 ** (i + 1)] = x
        if self.features_only:
            return features
        x = x.reshape((x.shape[0], -1))
        x = nn.Dense(self.dense_features, dtype=self.dtype, name="dense")(x)
        x = nn.relu(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_outputs, dtype=self.dtype, name="head")(x)
