"""DenseNet-BC (Huang et al., 2017) with torchvision's layer layout, so its ImageNet weights import."""

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.models import layers
from jaxdl.models.registry import Check, all_at_least_one, positive, probability, register

# torchvision initialises every convolution with kaiming_normal_ (fan-in, gain sqrt(2), untruncated).
_CONV_INIT = layers.kaiming_normal("fan_in")


def _batch_norm_relu(module: nn.Module, name: str, x: jax.Array, train: bool) -> jax.Array:
    """BatchNorm-ReLU as a variable scope `name` directly under `module` (torch's `norm*` layer)."""
    return nn.relu(layers.batch_norm(train, dtype=module.dtype, name=name)(x))


class _DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1(bn_size * growth) - BN-ReLU-Conv3x3(growth), then dropout; returns only the new features."""

    growth_rate: int
    bn_size: int
    dropout_rate: float
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = _batch_norm_relu(self, "norm1", x, train)
        x = layers.Conv(
            self.bn_size * self.growth_rate,
            (1, 1),
            padding="VALID",
            use_bias=False,
            kernel_init=_CONV_INIT,
            dtype=self.dtype,
            name="conv1",
        )(x)
        x = _batch_norm_relu(self, "norm2", x, train)
        x = layers.Conv(
            self.growth_rate,
            (3, 3),
            padding=((1, 1), (1, 1)),
            use_bias=False,
            kernel_init=_CONV_INIT,
            dtype=self.dtype,
            name="conv2",
        )(x)
        if self.dropout_rate > 0:
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return x


class _DenseBlock(nn.Module):
    """`num_layers` dense layers; each sees the concatenation of the block input and all earlier outputs."""

    num_layers: int
    growth_rate: int
    bn_size: int
    dropout_rate: float
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        features = [x]
        for j in range(self.num_layers):
            inputs = features[0] if len(features) == 1 else jnp.concatenate(features, axis=-1)
            new = _DenseLayer(
                self.growth_rate,
                self.bn_size,
                self.dropout_rate,
                self.dtype,
                name=f"denselayer{j + 1}",
            )(inputs, train)
            features.append(new)
        return jnp.concatenate(features, axis=-1)


class _Transition(nn.Module):
    """BN-ReLU-Conv1x1 (compressing the channels) then 2x2 average pooling with stride 2 (floor, like torch)."""

    features: int
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = _batch_norm_relu(self, "norm", x, train)
        x = layers.Conv(
            self.features,
            (1, 1),
            padding="VALID",
            use_bias=False,
            kernel_init=_CONV_INIT,
            dtype=self.dtype,
            name="conv",
        )(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def _compression(field: str, value: Any) -> None:
    """A transition's channel fraction: in (0, 1]."""
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{field}={value!r} is not valid; it must be in (0, 1]")


def _variant(growth_rate: int, block_config: tuple[int, ...], num_init_features: int) -> dict[str, Any]:
    return {"growth_rate": growth_rate, "block_config": block_config, "num_init_features": num_init_features}


@register("densenet121", **_variant(32, (6, 12, 24, 16), 64))
@register("densenet161", **_variant(48, (6, 12, 36, 24), 96))
@register("densenet169", **_variant(32, (6, 12, 32, 32), 64))
@register("densenet201", **_variant(32, (6, 12, 48, 32), 64))
# For tests: every feature of the family (four blocks, transitions, bottlenecks) at a few channels.
@register("densenet_tiny", **_variant(8, (2, 2, 2, 2), 16), bn_size=2, image_size=32)
class DenseNet(nn.Module):
    """DenseNet-BC as in torchvision: stem, dense blocks joined by transitions, BN-ReLU, global average pool, head.

    The ImageNet stem is Conv7x7/2 (no bias) - BN - ReLU - MaxPool3x3/2 (padding 1). With `cifar_stem=True`
    the stem conv is 3x3 with stride 1 and the max-pool is dropped (BN-ReLU are kept), so a 32x32 input
    enters the first dense block at full resolution, as in the paper's CIFAR networks.

    Flax variable names follow torchvision's (`conv0`, `norm0`, `denseblock1/denselayer1/norm1`,
    `transition1/conv`, `norm5`), except that the classifier is `head`.

    Attributes:
      num_outputs: number of classes.
      growth_rate: channels each dense layer adds (k in the paper).
      block_config: number of dense layers in each block; a transition follows every block but the last.
      num_init_features: channels of the stem convolution.
      bn_size: the bottleneck 1x1 conv has bn_size * growth_rate channels.
      compression: a transition keeps floor(compression * channels) channels (torchvision: 0.5).
      dropout_rate: dropout on each dense layer's new features (torchvision's drop_rate, default 0).
      image_size: reference input resolution.
      cifar_stem: use the 3x3 stride-1 stem without max-pool for 32x32 inputs.
      features_only: return {stride: feature map} instead of logits: the stem after
        norm0-ReLU, each dense block's output (before its transition) and, for the
        last block, the map after norm5-ReLU, i.e. {2, 4, 8, 16, 32} (timm's
        choice); with `cifar_stem` {1, 2, 4, 8}. No `head`.
      dtype: computation dtype (parameters stay float32).
    """

    num_outputs: int
    growth_rate: int = 32
    block_config: Sequence[int] = (6, 12, 24, 16)
    num_init_features: int = 64
    bn_size: int = 4
    compression: float = 0.5
    dropout_rate: float = 0.0
    image_size: int = 224
    cifar_stem: bool = False
    features_only: bool = False
    dtype: Any = jnp.float32

    checks: ClassVar[Mapping[str, Check]] = {
        "growth_rate": positive,
        "block_config": all_at_least_one,
        "num_init_features": positive,
        "bn_size": positive,
        "compression": _compression,
        "dropout_rate": probability,
        "image_size": positive,
    }

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array | dict[int, jax.Array]:
        """Logits of shape (batch, num_outputs) for NHWC images, or {stride: map} with `features_only`."""
        if self.cifar_stem:
            kernel, stride, padding = (3, 3), (1, 1), ((1, 1), (1, 1))
        else:
            kernel, stride, padding = (7, 7), (2, 2), ((3, 3), (3, 3))
        x = layers.Conv(
            self.num_init_features,
            kernel,
            strides=stride,
            padding=padding,
            use_bias=False,
            kernel_init=_CONV_INIT,
            dtype=self.dtype,
            name="conv0",
        )(x)
        x = _batch_norm_relu(self, "norm0", x, train)
        stride = 1 if self.cifar_stem else 2
        features = {stride: x}
        if not self.cifar_stem:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
            stride *= 2

        channels = self.num_init_features
        for i, num_layers in enumerate(self.block_config):
            x = _DenseBlock(
                num_layers,
                self.growth_rate,
                self.bn_size,
                self.dropout_rate,
                self.dtype,
                name=f"denseblock{i + 1}",
            )(x, train)
            channels += num_layers * self.growth_rate
            if i != len(self.block_config) - 1:
                features[stride] = x
                channels = int(channels * self.compression)
                x = _Transition(channels, self.dtype, name=f"transition{i + 1}")(x, train)
                stride *= 2

        x = _batch_norm_relu(self, "norm5", x, train)
        if self.features_only:
            features[stride] = x
            return features
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_outputs, dtype=self.dtype, name="head")(x)
