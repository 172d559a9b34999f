"""An image classifier made of any registered backbone and a new dense head: the course's own-image models.

The course's transfer-learning examples take a Keras application without its top
(`VGG19(weights=None, include_top=False)`) and add a head; its "Model 1" is

    VGG19 -> Flatten -> Dense 1024 -> Dropout 0.5 -> Dense 512 -> Dropout 0.5 -> Dense num_class (softmax)

`classifier` is that recipe on any backbone that has `features_only` (see
`jaxdl.models.list_backbones()`): the backbone's deepest feature map is pooled
(`flatten` as the course, global `avg` or `max`), then each width of `head` is a
dense layer, its activation (the course's Keras `Dense` has none: "linear") and
dropout, and a last dense layer gives the logits (the softmax is in the loss).
Dense layers start as Keras' do (Glorot uniform, zero bias).

The backbone's variables sit under `backbone` with its family's own names, so a
torchvision state dict of the backbone loads there (`config.init_from`, see
`jaxdl.convert.classifier`) and `config.transfer.freeze="^backbone/"` trains
only the head: the course's "pre-trained base + new dense head".
"""

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.models.features import OnBackbone
from jaxdl.models.registry import Check, all_positive, positive, probability, register

POOLS = ("flatten", "avg", "max")
ACTIVATIONS = {"linear": lambda x: x, "relu": nn.relu, "tanh": jnp.tanh, "gelu": nn.gelu}

# Keras' Dense default: Glorot uniform kernel, zero bias.
_DENSE_INIT = nn.initializers.xavier_uniform()


def pool_features(x: jax.Array, pool: str) -> jax.Array:
    """(batch, features) from an NHWC map: all values in (H, W, C) order (`flatten`, Keras' order) or per channel."""
    if pool == "flatten":
        return x.reshape((x.shape[0], -1))
    if pool == "avg":
        return jnp.mean(x, axis=(1, 2))
    return jnp.max(x, axis=(1, 2))


@register("classifier")
# For tests: a small CNN backbone and a narrow head.
@register("classifier_tiny", backbone="cnn", head=(16,), image_size=32)
class Classifier(OnBackbone, nn.Module):
    """A registered backbone's deepest feature map, pooled, then a dense head; (batch, num_outputs) logits.

    Variables: `backbone` (the backbone built with `features_only=True`, its own
    names), `dense_{i}` (hidden layer i) and `head` (the output layer).

    Attributes:
      num_outputs: number of classes.
      backbone: a registered model with `features_only`, e.g. "vgg19" (the course's
        Model 1), "resnet50" or "cnn".
      backbone_kwargs: more hyperparameters of the backbone (e.g. {"batch_norm": True}).
      pool: how the last feature map becomes a vector: "flatten" (the course; the
        head's input then depends on the image size), "avg" or "max" (global, per channel).
      head: widths of the hidden dense layers, each followed by `activation` and dropout.
      activation: of the hidden dense layers: "linear" (the course's Keras `Dense()`),
        "relu", "tanh" or "gelu".
      dropout_rate: after each hidden dense layer (0.5 in the course).
      image_size: reference input side.
      dtype: compute dtype (also the backbone's); parameters stay float32.
    """

    num_outputs: int
    backbone: str = "vgg19"
    backbone_kwargs: Mapping[str, Any] | None = None
    pool: str = "flatten"
    head: Sequence[int] = (1024, 512)
    activation: str = "linear"
    dropout_rate: float = 0.5
    image_size: int = 224
    dtype: Any = jnp.float32

    checks: ClassVar[Mapping[str, Check]] = {
        "head": all_positive,
        "dropout_rate": probability,
        "image_size": positive,
        "num_outputs": positive,
    }

    def __post_init__(self) -> None:
        """Check the pool, the activation and the backbone (it must exist and have feature maps) at construction."""
        if self.pool not in POOLS:
            raise ValueError(f"pool={self.pool!r} is not valid; choose one of: {', '.join(POOLS)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} is not valid; choose one of: {', '.join(ACTIVATIONS)}")
        super().__post_init__()  # OnBackbone's: checks the backbone.

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits (batch, num_outputs) for an NHWC image."""
        cls, hyperparameters = self.backbone_spec()
        maps = cls(**hyperparameters, name="backbone")(x, train)
        y = pool_features(maps[max(maps)], self.pool)
        for i, width in enumerate(self.head):
            y = nn.Dense(width, kernel_init=_DENSE_INIT, dtype=self.dtype, name=f"dense_{i}")(y)
            y = ACTIVATIONS[self.activation](y)
            y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        return nn.Dense(self.num_outputs, kernel_init=_DENSE_INIT, dtype=self.dtype, name="head")(y)
