"""VGG (Simonyan & Zisserman 2014) in torchvision's layout, with or without BatchNorm.

Layer names follow torchvision's indices so PyTorch weights import one to one:
the conv (and BatchNorm) at torch `features.N` is `features_N`, the hidden
classifier layers `classifier.0`/`classifier.3` are `classifier_0`/`classifier_3`,
and the last one (`classifier.6`) is `head`.
"""

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.models import layers
from jaxdl.models.registry import Check, positive, probability, register

# Convolution widths, "M" for a 2x2 max-pool; the letters are the paper's columns.
CONFIGS: dict[str, tuple[int | str, ...]] = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}

# torchvision's initialisation: Kaiming-normal (fan-out) convs, N(0, 0.01) linears, zero biases.
conv_init = layers.kaiming_normal("fan_out")
dense_init = nn.initializers.normal(0.01)

# Spatial size the classifier sees; torchvision's AdaptiveAvgPool2d((7, 7)).
POOL_SIZE = 7


def resolve_config(config: str | Sequence[int | str]) -> tuple[int | str, ...]:
    """The layer list for a paper letter ("A", "B", "D", "E") or an explicit sequence of widths and "M"."""
    if isinstance(config, str):
        try:
            return CONFIGS[config]
        except KeyError:
            raise ValueError(f"config={config!r} is not valid; choose one of: {', '.join(CONFIGS)}") from None
    entries = tuple(config)
    for item in entries:
        if item != "M" and not (isinstance(item, int) and item > 0):
            raise ValueError(f"config={entries!r} is not valid; every width must be > 0 (or 'M' for a max-pool)")
    return entries


class FeatureLayer(NamedTuple):
    """One conv or pool of the feature extractor and its index in torch's `features` Sequential."""

    kind: str  # "conv" or "pool"
    index: int
    features: int


def feature_layers(config: str | Sequence[int | str], batch_norm: bool) -> Iterator[FeatureLayer]:
    """The convs and pools in order, numbered like torchvision's `make_layers`.

    torch counts every module: conv, (BatchNorm,) ReLU for a width; MaxPool2d for "M".
    The BatchNorm after the conv at index N has index N + 1.
    """
    index = 0
    for item in resolve_config(config):
        if item == "M":
            yield FeatureLayer("pool", index, 0)
            index += 1
        else:
            yield FeatureLayer("conv", index, int(item))
            index += 3 if batch_norm else 2


def adaptive_bins(size: int, output_size: int) -> list[tuple[int, int]]:
    """torch's adaptive pooling windows: bin i covers [floor(i*size/out), ceil((i+1)*size/out))."""
    return [((i * size) // output_size, -((-(i + 1) * size) // output_size)) for i in range(output_size)]


def _pool_matrix(size: int, output_size: int) -> np.ndarray:
    """(output_size, size) matrix whose row i averages the inputs of bin i."""
    matrix = np.zeros((output_size, size), np.float32)
    for i, (start, end) in enumerate(adaptive_bins(size, output_size)):
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_avg_pool(x: jax.Array, output_size: int) -> jax.Array:
    """torch's AdaptiveAvgPool2d on an NHWC map, for any input size (bins may overlap or repeat)."""
    height, width = x.shape[1:3]
    if height % output_size == 0 and width % output_size == 0:
        # Equal, disjoint bins: an ordinary average pool is the same.
        window = (height // output_size, width // output_size)
        return nn.avg_pool(x, window, strides=window)
    rows = jnp.asarray(_pool_matrix(height, output_size), x.dtype)
    cols = jnp.asarray(_pool_matrix(width, output_size), x.dtype)
    return jnp.einsum("ih,bhwc,jw->bijc", rows, x, cols, precision=jax.lax.Precision.HIGHEST)


def _register_variants(cls: type[nn.Module]) -> type[nn.Module]:
    """Registers torchvision's vgg11 ... vgg19 and their `_bn` twins (paper columns A, B, D, E), and vgg_tiny."""
    for depth, letter in ((11, "A"), (13, "B"), (16, "D"), (19, "E")):
        register(f"vgg{depth}", config=letter, batch_norm=False)(cls)
        register(f"vgg{depth}_bn", config=letter, batch_norm=True)(cls)
    return cls


@_register_variants
@register("vgg_tiny", config=(8, "M", 16, "M", 32, 32, "M"), batch_norm=True, classifier_width=32, image_size=32)
class VGG(nn.Module):
    """VGG: 3x3 conv(-BatchNorm)-ReLU layers with 2x2 max-pools, then a three-layer classifier.

    Attributes:
      num_outputs: number of classes.
      config: a paper column letter ("A" = VGG-11, "B" = 13, "D" = 16, "E" = 19) or
        an explicit sequence of conv widths and "M" (max-pool).
      batch_norm: BatchNorm after every conv (torchvision's `vgg*_bn`).
      classifier_width: width of the two hidden classifier layers; None means
        4096 (torchvision) or 512 with `cifar_stem`.
      dropout_rate: dropout before the second and third classifier layers.
      image_size: reference input resolution (224 for ImageNet).
      cifar_stem: for 32x32 inputs, where the five pools leave a 1x1 map: average
        the final map globally and feed its C values to the classifier instead of
        torchvision's AdaptiveAvgPool2d((7, 7)) and its 7*7*C inputs (which at 1x1
        would only copy each value 49 times); the hidden width defaults to 512.
        The convolutions are unchanged, as in the common CIFAR VGG recipes.
      features_only: return {stride: feature map} instead of logits: the map
        before each max-pool and the one after the last ({1, 2, 4, 8, 16, 32}
        for the paper's columns, as segmentation_models_pytorch's VGG encoder).
        No classifier is built.
      dtype: compute dtype; parameters stay float32.

    Without `cifar_stem` the features go through torch's adaptive average pool
    to 7x7 for any input size and are flattened in torch's (C, H, W) order, so
    imported torchvision weights give torchvision's logits.
    """

    num_outputs: int
    config: str | Sequence[int | str] = "D"
    batch_norm: bool = False
    classifier_width: int | None = None
    dropout_rate: float = 0.5
    image_size: int = 224
    cifar_stem: bool = False
    features_only: bool = False
    dtype: Any = jnp.float32

    # The conv widths are checked by `resolve_config`.
    checks: ClassVar[Mapping[str, Check]] = {
        "classifier_width": positive,
        "dropout_rate": probability,
        "image_size": positive,
    }

    def __post_init__(self) -> None:
        """Validate the layer config at construction, not at first call."""
        resolve_config(self.config)
        super().__post_init__()

    @property
    def hidden_width(self) -> int:
        """The hidden classifier width actually used."""
        if self.classifier_width is not None:
            return self.classifier_width
        return 512 if self.cifar_stem else 4096

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array | dict[int, jax.Array]:
        """Logits of shape (batch, num_outputs) for NHWC input, or {stride: map} with `features_only`."""
        features, stride = {}, 1
        for layer in feature_layers(self.config, self.batch_norm):
            if layer.kind == "pool":
                features[stride] = x
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
                stride *= 2
                continue
            x = layers.Conv(
                layer.features,
                (3, 3),
                padding=((1, 1), (1, 1)),
                kernel_init=conv_init,
                dtype=self.dtype,
                name=f"features_{layer.index}",
            )(x)
            if self.batch_norm:
                x = layers.batch_norm(train, dtype=self.dtype, name=f"features_{layer.index + 1}")(x)
            x = nn.relu(x)
        if self.features_only:
            features[stride] = x
            return features
        if self.cifar_stem:
            x = jnp.mean(x, axis=(1, 2))
        else:
            x = adaptive_avg_pool(x, POOL_SIZE)
            # torch flattens (C, H, W); transposing first keeps imported weights valid.
            x = x.transpose(0, 3, 1, 2).reshape((x.shape[0], math.prod(x.shape[1:])))
        for index in (0, 3):
            x = nn.Dense(self.hidden_width, kernel_init=dense_init, dtype=self.dtype, name=f"classifier_{index}")(x)
            x = nn.relu(x)
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_outputs, kernel_init=dense_init, dtype=self.dtype, name="head")(x)
