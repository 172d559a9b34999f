"""ConvNeXt (Liu et al., 2022) laid out like torchvision's, so its weights import unchanged.

A 4x4 stride-4 patchify conv with LayerNorm, four stages of ConvNeXt blocks
(7x7 depthwise conv, LayerNorm, Linear to 4x width, exact GELU, Linear back,
learned per-channel layer scale, stochastic-depth residual) separated by
LayerNorm + 2x2 stride-2 conv downsampling, then global average pooling,
LayerNorm and a linear head. Every LayerNorm uses torch's eps of 1e-6.
"""

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.models.layers import Conv, StochasticDepth, remat, remat_policy
from jaxdl.models.registry import Check, all_at_least_one, all_positive, positive, probability, register

LAYER_NORM_EPSILON = 1e-6

# torch's trunc_normal_(std=0.02) with zero bias for every conv and linear layer.
_KERNEL_INIT = nn.initializers.truncated_normal(stddev=0.02)


def block_stochastic_depth_rates(depths: Sequence[int], rate: float) -> list[float]:
    """Per-block stochastic-depth rates rising linearly from 0 to `rate` at the last block."""
    total = sum(depths)
    if total <= 1:
        return [0.0] * total
    return [rate * i / (total - 1.0) for i in range(total)]


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv, LayerNorm, Linear 4x, GELU, Linear, layer scale, stochastic depth, residual."""

    layer_scale_init: float = 1e-6
    stochastic_depth_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """`x` plus the block's (scaled, randomly dropped in training) residual branch."""
        dim = x.shape[-1]
        y = Conv(
            dim,
            (7, 7),
            padding=((3, 3), (3, 3)),
            feature_group_count=dim,
            kernel_init=_KERNEL_INIT,
            dtype=self.dtype,
            name="dwconv",
        )(x)
        y = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=self.dtype, name="norm")(y)
        y = nn.Dense(4 * dim, kernel_init=_KERNEL_INIT, dtype=self.dtype, name="pwconv1")(y)
        y = nn.gelu(y, approximate=False)
        y = nn.Dense(dim, kernel_init=_KERNEL_INIT, dtype=self.dtype, name="pwconv2")(y)
        gamma = self.param("layer_scale", nn.initializers.constant(self.layer_scale_init), (dim,))
        y = y * jnp.asarray(gamma, y.dtype)
        y = StochasticDepth(self.stochastic_depth_rate, name="stochastic_depth")(y, train)
        return x + y


@register("convnext_tiny", depths=(3, 3, 9, 3), widths=(96, 192, 384, 768), stochastic_depth_rate=0.1)
@register("convnext_small", depths=(3, 3, 27, 3), widths=(96, 192, 384, 768), stochastic_depth_rate=0.4)
@register("convnext_base", depths=(3, 3, 27, 3), widths=(128, 256, 512, 1024), stochastic_depth_rate=0.5)
@register("convnext_large", depths=(3, 3, 27, 3), widths=(192, 384, 768, 1536), stochastic_depth_rate=0.5)
# For tests ("convnext_tiny" is the published 28M-parameter model): one block per stage, 8-64 channels.
@register("convnext_mini", depths=(1, 1, 1, 1), widths=(8, 16, 32, 64), stochastic_depth_rate=0.1, image_size=32)
class ConvNeXt(nn.Module):
    """ConvNeXt with torchvision's layout; `widths[s]` channels and `depths[s]` blocks in stage s.

    Flax names: `stem_conv`/`stem_norm`; blocks `stage<s>_<i>` (s from 0) with `dwconv`,
    `norm`, `pwconv1`, `pwconv2` and the `layer_scale` vector; `downsample<s>_norm` and
    `downsample<s>_conv` between stage s and s+1; `head_norm` and the linear `head`.

    `cifar_stem` patchifies with a 2x2 stride-2 conv instead of 4x4 stride 4, so a
    32x32 image enters the first stage at 16x16 and the last at 2x2 (rather than
    8x8 and 1x1). Only the stem kernel's shape changes.

    `features_only` returns {stride: each stage's output} instead of logits,
    {4, 8, 16, 32} ({2, 4, 8, 16} with `cifar_stem`), without `head_norm` and `head`.
    """

    num_outputs: int
    depths: Sequence[int] = (3, 3, 9, 3)
    widths: Sequence[int] = (96, 192, 384, 768)
    stochastic_depth_rate: float = 0.1
    layer_scale_init: float = 1e-6
    image_size: int = 224
    cifar_stem: bool = False
    features_only: bool = False
    # Rematerialise each block in the backward pass; a policy of jaxdl.models.layers.REMAT_POLICIES.
    remat: str = "none"
    dtype: Any = jnp.float32

    checks: ClassVar[Mapping[str, Check]] = {
        "depths": all_at_least_one,
        "widths": all_positive,
        "stochastic_depth_rate": probability,
        "image_size": positive,
        "remat": remat_policy,
    }

    def __post_init__(self) -> None:
        """Check that there is one width per stage."""
        if len(self.depths) != len(self.widths) or not self.depths:
            raise ValueError(f"depths {tuple(self.depths)} and widths {tuple(self.widths)} need one entry per stage")
        super().__post_init__()

    def _norm(self, name: str) -> nn.LayerNorm:
        return nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=self.dtype, name=name)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array | dict[int, jax.Array]:
        """Logits of shape (batch, num_outputs) for NHWC images, or {stride: map} with `features_only`."""
        patch = 2 if self.cifar_stem else 4
        features, stride = {}, patch
        x = Conv(
            self.widths[0],
            (patch, patch),
            strides=(patch, patch),
            padding=((0, 0), (0, 0)),
            kernel_init=_KERNEL_INIT,
            dtype=self.dtype,
            name="stem_conv",
        )(x)
        x = self._norm("stem_norm")(x)
        rates = iter(block_stochastic_depth_rates(self.depths, self.stochastic_depth_rate))
        block = remat(ConvNeXtBlock, self.remat, static_argnums=(2,))
        for stage, (depth, width) in enumerate(zip(self.depths, self.widths, strict=True)):
            if stage > 0:
                x = self._norm(f"downsample{stage - 1}_norm")(x)
                x = Conv(
                    width,
                    (2, 2),
                    strides=(2, 2),
                    padding=((0, 0), (0, 0)),
                    kernel_init=_KERNEL_INIT,
                    dtype=self.dtype,
                    name=f"downsample{stage - 1}_conv",
                )(x)
                stride *= 2
            for index in range(depth):
                x = block(
                    layer_scale_init=self.layer_scale_init,
                    stochastic_depth_rate=next(rates),
                    dtype=self.dtype,
                    name=f"stage{stage}_{index}",
                )(x, train)
            features[stride] = x
        if self.features_only:
            return features
        x = jnp.mean(x, axis=(1, 2))
        x = self._norm("head_norm")(x)
        return nn.Dense(self.num_outputs, kernel_init=_KERNEL_INIT, dtype=self.dtype, name="head")(x)
