"""U-Nets for semantic segmentation: the paper's network, and a decoder on any registered backbone.

`unet` is Ronneberger et al. (2015): a contracting path of two 3x3 convs and a
2x2 max-pool per level, an expanding path of 2x2 up-convolutions, concatenated
(center-cropped) skips and two 3x3 convs per level, and a 1x1 conv to the
classes. With the paper's unpadded convs a 572x572 image gives a 388x388 map.

`unet_resnet18/34/50` put segmentation_models_pytorch's `smp.Unet` decoder on a
backbone built with `features_only=True` (see `features`): one block per 2x
upsampling (nearest), each concatenating the backbone's map at that stride when
there is one, then conv3x3-BN-ReLU twice; a 3x3 conv gives the logits at the
input's resolution. `jaxdl.convert.unet` imports smp's weights.
"""

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.models import layers
from jaxdl.models.features import OnBackbone
from jaxdl.models.registry import Check, all_positive, at_least_one, positive, register

PADDINGS = {"valid": "VALID", "same": ((1, 1), (1, 1))}

# The paper draws weights from N(0, 2 / fan-in); smp's decoder uses the uniform twin.
_PAPER_INIT = layers.kaiming_normal("fan_in")
_DECODER_INIT = nn.initializers.variance_scaling(2.0, "fan_in", "uniform")
_HEAD_INIT = nn.initializers.xavier_uniform()


class ConvBlock(nn.Module):
    """Two 3x3 convs, each followed by ReLU (and, with `batch_norm`, BatchNorm before it).

    Variables: `conv1`, `bn1`, `conv2`, `bn2`; a conv followed by BatchNorm has no bias.
    """

    features: int
    padding: Any = "SAME"
    batch_norm: bool = False
    kernel_init: nn.initializers.Initializer = _PAPER_INIT
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The block's output for an NHWC map."""
        for k in (1, 2):
            x = layers.Conv(
                self.features,
                (3, 3),
                padding=self.padding,
                use_bias=not self.batch_norm,
                kernel_init=self.kernel_init,
                dtype=self.dtype,
                name=f"conv{k}",
            )(x)
            if self.batch_norm:
                x = layers.batch_norm(train, dtype=self.dtype, name=f"bn{k}")(x)
            x = nn.relu(x)
        return x


def center_crop(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """The central `size` (height, width) window of an NHWC map (the paper's skip cropping)."""
    top, left = (x.shape[1] - size[0]) // 2, (x.shape[2] - size[1]) // 2
    return x[:, top : top + size[0], left : left + size[1]]


def valid_output_size(size: int, depth: int) -> int | None:
    """The output side of an unpadded U-Net of `depth` for an input side `size`, or None if it does not fit.

    It fits when every map that is max-pooled has an even, positive side (the paper's rule).
    """
    for _ in range(depth):
        size -= 4
        if size <= 0 or size % 2:
            return None
        size //= 2
    size -= 4
    if size <= 0:
        return None
    for _ in range(depth):
        size = 2 * size - 4
    return size


def _nearest_valid_sizes(size: int, depth: int) -> list[int]:
    """The closest input sides below and above `size` that an unpadded U-Net of `depth` accepts."""
    step = 2**depth
    below = [s for s in range(size - 1, max(size - step - 1, 0), -1) if valid_output_size(s, depth)][:1]
    above = [s for s in range(size + 1, size + 8 * step + 100) if valid_output_size(s, depth)][:1]
    return below + above


@register("unet")
# For tests: two levels, 8-32 channels, padded convs (output size = input size).
@register("unet_tiny", width=8, depth=2, padding="same", image_size=32)
class UNet(nn.Module):
    """U-Net (Ronneberger et al., 2015) with the paper's defaults; NHWC in, per-pixel logits out.

    Variables: `down{i}` (level i of the contracting path, a `ConvBlock` of
    `width * 2**i` channels), `bottom`, `upconv{i}` (the 2x2 stride-2 transposed
    conv to level i, halving the channels), `up{i}` (its `ConvBlock` after the
    concatenation [cropped skip, upsampled]) and `head` (the 1x1 conv).

    Attributes:
      num_outputs: number of classes (channels of the output map).
      width: channels of the first level (64 in the paper); level i has width * 2**i.
      depth: number of 2x2 max-pools (down-steps; 4 in the paper).
      padding: "valid" (the paper's unpadded convs: the output is smaller and every
        pooled map must have an even side, e.g. 572 -> 388) or "same" (output size =
        input size, which must be divisible by 2**depth).
      batch_norm: conv-BatchNorm-ReLU instead of conv-ReLU (torch's BatchNorm).
      image_size: reference input side (572 in the paper).
      dtype: compute dtype; parameters stay float32.
    """

    num_outputs: int
    width: int = 64
    depth: int = 4
    padding: str = "valid"
    batch_norm: bool = False
    image_size: int = 572
    dtype: Any = jnp.float32

    checks: ClassVar[Mapping[str, Check]] = {"width": positive, "depth": at_least_one, "image_size": positive}

    def __post_init__(self) -> None:
        """Validate the padding at construction, not at first call."""
        if self.padding not in PADDINGS:
            raise ValueError(f"padding={self.padding!r} is not valid; choose one of: {', '.join(PADDINGS)}")
        super().__post_init__()

    def check_input_size(self, height: int, width: int) -> None:
        """Raises ValueError unless a height x width input fits this U-Net's pools."""
        for side in (height, width):
            if self.padding == "same" and side % 2**self.depth:
                raise ValueError(
                    f"U-Net with padding='same' and depth={self.depth} needs an input size divisible by "
                    f"{2**self.depth}; got {height}x{width}"
                )
            if self.padding == "valid" and valid_output_size(side, self.depth) is None:
                nearest = " or ".join(map(str, _nearest_valid_sizes(side, self.depth)))
                raise ValueError(
                    f"U-Net with padding='valid' and depth={self.depth} needs an input size whose every pooled map "
                    f"has an even side; got {height}x{width} (try {nearest}, or padding='same')"
                )

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits (batch, H', W', num_outputs) for an NHWC image (H' = H with padding='same')."""
        self.check_input_size(x.shape[1], x.shape[2])
        block = dict(padding=PADDINGS[self.padding], batch_norm=self.batch_norm, dtype=self.dtype)
        skips = []
        for i in range(self.depth):
            x = ConvBlock(self.width * 2**i, name=f"down{i}", **block)(x, train)
            skips.append(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = ConvBlock(self.width * 2**self.depth, name="bottom", **block)(x, train)
        for i in reversed(range(self.depth)):
            x = nn.ConvTranspose(
                self.width * 2**i,
                (2, 2),
                strides=(2, 2),
                padding="VALID",
                kernel_init=_PAPER_INIT,
                dtype=self.dtype,
                name=f"upconv{i}",
            )(x)
            x = jnp.concatenate([center_crop(skips[i], x.shape[1:3]), x], axis=-1)
            x = ConvBlock(self.width * 2**i, name=f"up{i}", **block)(x, train)
        return layers.Conv(self.num_outputs, (1, 1), kernel_init=_PAPER_INIT, dtype=self.dtype, name="head")(x)


def upsample_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """torch's `F.interpolate(mode="nearest")` of an NHWC map to `size`: output i reads input floor(i * in / out)."""
    rows = (np.arange(size[0]) * x.shape[1]) // size[0]
    cols = (np.arange(size[1]) * x.shape[2]) // size[1]
    return jnp.take(jnp.take(x, rows, axis=1), cols, axis=2)


def decoder_strides(deepest: int) -> list[int]:
    """The strides the decoder blocks upsample to, from the backbone's deepest stride down to 1: 32 -> 16, ..., 1."""
    if deepest < 2 or deepest & (deepest - 1):
        raise ValueError(f"a U-Net decoder needs the backbone's deepest stride to be a power of 2, got {deepest}")
    return [deepest >> k for k in range(1, deepest.bit_length())]


@register("unet_resnet18", backbone="resnet18")
@register("unet_resnet34", backbone="resnet34")
@register("unet_resnet50", backbone="resnet50")
# For tests: resnet_tiny (8-64 channels) and a narrow decoder.
@register("unet_resnet_tiny", backbone="resnet_tiny", decoder_channels=(32, 16, 8, 8, 4), image_size=64)
class UNetWithBackbone(OnBackbone, nn.Module):
    """smp.Unet's decoder on a registered backbone's feature maps; logits at the input's resolution.

    The backbone (`encoder`, built with `features_only=True`) gives {stride: map};
    decoder block i (`decoder_block{i}`) upsamples (nearest) to the next stride
    down, concatenates the backbone's map at that stride if it has one, and applies
    two conv3x3-BN-ReLU (`conv1`, `bn1`, `conv2`, `bn2`); the last block reaches
    stride 1. A 3x3 conv (`head`, with bias) gives the logits, with no activation.

    Attributes:
      num_outputs: number of classes (channels of the output map).
      backbone: a registered model that has `features_only` (see
        `jaxdl.models.list_backbones()`), e.g. "resnet34" or "convnext_tiny".
      backbone_kwargs: more hyperparameters of the backbone (e.g. {"cifar_stem": True}).
      decoder_channels: output channels of each decoder block, one per 2x
        upsampling from the backbone's deepest stride (5 for stride 32).
      center_block: two conv3x3-BN-ReLU on the deepest map first (smp uses it for VGG).
      image_size: reference input side; inputs must be divisible by the deepest stride.
      dtype: compute dtype (also the backbone's); parameters stay float32.
    """

    num_outputs: int
    backbone: str = "resnet34"
    backbone_kwargs: Mapping[str, Any] | None = None
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16)
    center_block: bool = False
    image_size: int = 224
    dtype: Any = jnp.float32

    checks: ClassVar[Mapping[str, Check]] = {"decoder_channels": all_positive, "image_size": positive}

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits (batch, H, W, num_outputs) for an NHWC image with H, W divisible by the deepest stride."""
        cls, hyperparameters = self.backbone_spec()
        maps = cls(**hyperparameters, name="encoder")(x, train)
        deepest = max(maps)
        height, width = x.shape[1:3]
        if height % deepest or width % deepest:
            raise ValueError(
                f"a U-Net on {self.backbone} needs an input size divisible by {deepest} (its deepest stride); "
                f"got {height}x{width}"
            )
        strides = decoder_strides(deepest)
        if len(strides) != len(self.decoder_channels):
            raise ValueError(
                f"decoder_channels={tuple(self.decoder_channels)} is not valid; {self.backbone} reaches stride "
                f"{deepest}, so the decoder needs {len(strides)} blocks (one per 2x upsampling)"
            )
        block = dict(padding=((1, 1), (1, 1)), batch_norm=True, kernel_init=_DECODER_INIT, dtype=self.dtype)
        y = maps[deepest]
        if self.center_block:
            y = ConvBlock(y.shape[-1], name="center", **block)(y, train)
        for i, (stride, channels) in enumerate(zip(strides, self.decoder_channels, strict=True)):
            y = upsample_nearest(y, (height // stride, width // stride))
            if stride in maps:
                y = jnp.concatenate([y, maps[stride].astype(y.dtype)], axis=-1)
            y = ConvBlock(channels, name=f"decoder_block{i}", **block)(y, train)
        return layers.Conv(
            self.num_outputs,
            (3, 3),
            padding=((1, 1), (1, 1)),
            kernel_init=_HEAD_INIT,
            dtype=self.dtype,
            name="head",
        )(y)
