"""EfficientNet B0-B7 (Tan & Le, 2019) laid out like torchvision's, so its weights import unchanged.

The network is a 3x3 stride-2 stem, seven stages of MBConv blocks (1x1 expansion,
depthwise KxK conv, squeeze-excitation, 1x1 projection, with a stochastic-depth
residual where shapes allow), a 1x1 conv to 4x the last width, global average
pooling, dropout and a linear head. The B1-B7 variants scale the B0 widths by
`width_mult` (rounded to multiples of 8) and the block counts by `depth_mult`
(rounded up), exactly as torchvision does.
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.models import layers
from jaxdl.models.registry import Check, positive, probability, register

# One row per stage of the B0 baseline, before scaling:
# (expand_ratio, kernel, stride, in_channels, out_channels, num_layers).
B0_SETTING: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)

# torch's kaiming_normal_(mode="fan_out") for convs and U(-1/sqrt(out), 1/sqrt(out)) for the head.
_CONV_INIT = layers.kaiming_normal("fan_out")
_HEAD_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform")


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """`value` rounded to the nearest multiple of `divisor` (at least `min_value`), never below 90% of it."""
    floor = divisor if min_value is None else min_value
    rounded = max(floor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def scale_depth(num_layers: int, depth_mult: float) -> int:
    """A stage's block count scaled by `depth_mult`, rounded up."""
    return int(math.ceil(num_layers * depth_mult))


class MBConvSpec(NamedTuple):
    """The resolved shape of one MBConv block.

    `stage` is 1-based and equals the block's torchvision index `features.<stage>`;
    `index` is the block's position within its stage.
    """

    stage: int
    index: int
    kernel: int
    stride: int
    in_channels: int
    expanded_channels: int
    squeeze_channels: int
    out_channels: int
    stochastic_depth_rate: float

    @property
    def has_expand(self) -> bool:
        """Whether the block starts with a 1x1 expansion conv (torchvision skips it at ratio 1)."""
        return self.expanded_channels != self.in_channels

    @property
    def residual(self) -> bool:
        """Whether the block adds its input back (stride 1 and unchanged width)."""
        return self.stride == 1 and self.in_channels == self.out_channels


def mbconv_specs(
    block_setting: Sequence[Sequence[float]],
    width_mult: float,
    depth_mult: float,
    stochastic_depth_rate: float,
) -> list[MBConvSpec]:
    """Every block of a network built from `block_setting` rows scaled by width and depth.

    The stochastic-depth rate grows linearly with the block's position: block i of
    n total gets `stochastic_depth_rate * i / n`.
    """
    stages = []
    for expand_ratio, kernel, stride, in_ch, out_ch, num_layers in block_setting:
        stages.append(
            (
                expand_ratio,
                int(kernel),
                int(stride),
                make_divisible(in_ch * width_mult),
                make_divisible(out_ch * width_mult),
                scale_depth(int(num_layers), depth_mult),
            )
        )
    total = sum(stage[-1] for stage in stages)
    specs: list[MBConvSpec] = []
    for stage_id, (expand_ratio, kernel, stride, in_ch, out_ch, num_layers) in enumerate(stages, start=1):
        for index in range(num_layers):
            block_in = in_ch if index == 0 else out_ch
            specs.append(
                MBConvSpec(
                    stage=stage_id,
                    index=index,
                    kernel=kernel,
                    stride=stride if index == 0 else 1,
                    in_channels=block_in,
                    expanded_channels=make_divisible(block_in * expand_ratio),
                    squeeze_channels=max(1, block_in // 4),
                    out_channels=out_ch,
                    stochastic_depth_rate=stochastic_depth_rate * len(specs) / total,
                )
            )
    return specs


class SqueezeExcitation(nn.Module):
    """Global average pool, 1x1 conv to `squeeze_channels`, SiLU, 1x1 conv back, sigmoid gate."""

    squeeze_channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """`x` scaled channel-wise by its gate."""
        scale = jnp.mean(x, axis=(1, 2), keepdims=True)
        scale = layers.Conv(self.squeeze_channels, (1, 1), dtype=self.dtype, name="fc1")(scale)
        scale = nn.silu(scale)
        scale = layers.Conv(x.shape[-1], (1, 1), dtype=self.dtype, name="fc2")(scale)
        return x * nn.sigmoid(scale)


class MBConv(nn.Module):
    """Inverted residual block: [1x1 expand-BN-SiLU], depthwise KxK-BN-SiLU, SE, 1x1 project-BN."""

    spec: MBConvSpec
    bn_epsilon: float = 1e-5
    bn_momentum: float = 0.1
    dtype: Any = jnp.float32

    def _conv_bn(self, x: jax.Array, features: int, kernel: int, stride: int, groups: int, name: str, train: bool):
        pad = kernel // 2
        x = layers.Conv(
            features,
            (kernel, kernel),
            strides=(stride, stride),
            padding=((pad, pad), (pad, pad)),
            feature_group_count=groups,
            use_bias=False,
            kernel_init=_CONV_INIT,
            dtype=self.dtype,
            name=f"{name}_conv",
        )(x)
        return layers.batch_norm(
            train, momentum=self.bn_momentum, epsilon=self.bn_epsilon, dtype=self.dtype, name=f"{name}_bn"
        )(x)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The block's output; its input is added back when `spec.residual`."""
        spec = self.spec
        y = x
        if spec.has_expand:
            y = nn.silu(self._conv_bn(y, spec.expanded_channels, 1, 1, 1, "expand", train))
        y = self._conv_bn(
            y, spec.expanded_channels, spec.kernel, spec.stride, spec.expanded_channels, "depthwise", train
        )
        y = nn.silu(y)
        y = SqueezeExcitation(spec.squeeze_channels, dtype=self.dtype, name="se")(y)
        y = self._conv_bn(y, spec.out_channels, 1, 1, 1, "project", train)
        if spec.residual:
            y = layers.StochasticDepth(spec.stochastic_depth_rate, name="stochastic_depth")(y, train) + x
        return y


def _variant(width_mult: float, depth_mult: float, image_size: int, dropout: float, large: bool = False) -> dict:
    defaults: dict[str, Any] = dict(
        width_mult=width_mult, depth_mult=depth_mult, image_size=image_size, dropout_rate=dropout
    )
    if large:
        defaults.update(bn_epsilon=1e-3, bn_momentum=0.01)
    return defaults


@register("efficientnet_b0", **_variant(1.0, 1.0, 224, 0.2))
@register("efficientnet_b1", **_variant(1.0, 1.1, 240, 0.2))
@register("efficientnet_b2", **_variant(1.1, 1.2, 260, 0.3))
@register("efficientnet_b3", **_variant(1.2, 1.4, 300, 0.3))
@register("efficientnet_b4", **_variant(1.4, 1.8, 380, 0.4))
@register("efficientnet_b5", **_variant(1.6, 2.2, 456, 0.4, large=True))
@register("efficientnet_b6", **_variant(1.8, 2.6, 528, 0.5, large=True))
@register("efficientnet_b7", **_variant(2.0, 3.1, 600, 0.5, large=True))
# For tests: 8-80 channels and one block per stage.
@register("efficientnet_tiny", **_variant(0.25, 0.25, 32, 0.2))
class EfficientNet(nn.Module):
    """EfficientNet (v1) with torchvision's layout and compound scaling.

    Flax names: `stem_conv`/`stem_bn`; blocks `stage<s>_<i>` (s = 1..7 is torchvision's
    `features.<s>`, i the block in the stage) with `expand_*`, `depthwise_*`, `se/fc1`,
    `se/fc2`, `project_*`; `head_conv`/`head_bn` (the final 1x1 conv) and the linear `head`.

    `cifar_stem` makes the 3x3 stem conv stride 1 (nothing else changes), so 32x32
    inputs reach the last stage at 2x2 instead of 1x1; the weights keep their shapes.

    `features_only` returns {stride: the last block output at that stride} instead of
    logits, {2: stage1, 4: stage2, 8: stage3, 16: stage5, 32: stage7} (timm's and
    segmentation_models_pytorch's choice; halved with `cifar_stem`), and builds
    neither the final 1x1 conv (`head_conv`/`head_bn`) nor the `head`.
    """

    num_outputs: int
    width_mult: float = 1.0
    depth_mult: float = 1.0
    block_setting: Sequence[Sequence[float]] = B0_SETTING
    dropout_rate: float = 0.2
    stochastic_depth_rate: float = 0.2
    # torch's BatchNorm2d eps and momentum (torch's convention: the weight of the new batch):
    # B0-B4 use torch's defaults (1e-5, 0.1); torchvision builds B5-B7 with (1e-3, 0.01).
    bn_epsilon: float = 1e-5
    bn_momentum: float = 0.1
    image_size: int = 224
    cifar_stem: bool = False
    features_only: bool = False
    dtype: Any = jnp.float32

    checks: ClassVar[Mapping[str, Check]] = {
        "width_mult": positive,
        "depth_mult": positive,
        "dropout_rate": probability,
        "stochastic_depth_rate": probability,
        "bn_epsilon": positive,
        "bn_momentum": probability,
        "image_size": positive,
    }

    def block_specs(self) -> list[MBConvSpec]:
        """The resolved MBConv blocks, in order."""
        return mbconv_specs(self.block_setting, self.width_mult, self.depth_mult, self.stochastic_depth_rate)

    def stem_channels(self) -> int:
        """Width of the stem conv (the first stage's scaled input width)."""
        return make_divisible(self.block_setting[0][3] * self.width_mult)

    def _bn(self, train: bool, name: str) -> nn.BatchNorm:
        return layers.batch_norm(train, momentum=self.bn_momentum, epsilon=self.bn_epsilon, dtype=self.dtype, name=name)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array | dict[int, jax.Array]:
        """Logits of shape (batch, num_outputs) for NHWC images, or {stride: map} with `features_only`."""
        stride = 1 if self.cifar_stem else 2
        x = layers.Conv(
            self.stem_channels(),
            (3, 3),
            strides=(stride, stride),
            padding=((1, 1), (1, 1)),
            use_bias=False,
            kernel_init=_CONV_INIT,
            dtype=self.dtype,
            name="stem_conv",
        )(x)
        x = nn.silu(self._bn(train, "stem_bn")(x))
        # The last map at each stride: a later block at the same stride replaces an earlier one.
        features = {stride: x}
        specs = self.block_specs()
        for spec in specs:
            x = MBConv(
                spec,
                bn_epsilon=self.bn_epsilon,
                bn_momentum=self.bn_momentum,
                dtype=self.dtype,
                name=f"stage{spec.stage}_{spec.index}",
            )(x, train)
            stride *= spec.stride
            features[stride] = x
        if self.features_only:
            return features
        x = layers.Conv(
            4 * specs[-1].out_channels,
            (1, 1),
            use_bias=False,
            kernel_init=_CONV_INIT,
            dtype=self.dtype,
            name="head_conv",
        )(x)
        x = nn.silu(self._bn(train, "head_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(
            self.num_outputs, kernel_init=_HEAD_INIT, bias_init=nn.initializers.zeros, dtype=self.dtype, name="head"
        )(x)
