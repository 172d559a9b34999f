"""ResNet (He et al. 2015) in torchvision's v1.5 layout, and the paper's plain (shortcut-free) baselines.

Layer names follow torchvision so PyTorch weights import one to one: the stem is
`conv1`/`bn1`, block `j` of stage `i` is `layer{i}_{j}` (torch `layer{i}.{j}`) with
`conv1`, `bn1`, ... and, where the shape changes, the projection shortcut
`downsample_0` (1x1 conv) and `downsample_1` (BatchNorm); the classifier is `head`
(torch `fc`).
"""

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.models import layers
from jaxdl.models.registry import Check, all_at_least_one, positive, register

# torchvision initialises every conv with Kaiming-normal over the fan-out.
conv_init = layers.kaiming_normal("fan_out")

# Output channels of a block relative to its inner width.
EXPANSION = {"basic": 1, "bottleneck": 4}


def _batch_norm(module: nn.Module, train: bool, name: str, zero_scale: bool = False) -> nn.BatchNorm:
    """torch's BatchNorm2d in `module`'s dtype; `zero_scale` starts its scale at 0 (zero_init_residual)."""
    scale_init = nn.initializers.zeros if zero_scale else nn.initializers.ones
    return layers.batch_norm(train, dtype=module.dtype, scale_init=scale_init, name=name)


def _conv(module: nn.Module, features: int, kernel: int, stride: int, name: str) -> nn.Conv:
    """A bias-free conv with torch's symmetric padding kernel // 2."""
    pad = kernel // 2
    return layers.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=conv_init,
        dtype=module.dtype,
        name=name,
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs (stride on the first), each followed by BatchNorm; ReLU after the sum.

    `projection` adds torchvision's `downsample` shortcut (1x1 conv + BatchNorm);
    `residual=False` drops the shortcut entirely (a plain-net block).
    """

    features: int
    strides: int = 1
    projection: bool = False
    residual: bool = True
    zero_init_last_bn: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Apply the block to an NHWC feature map."""
        y = _conv(self, self.features, 3, self.strides, "conv1")(x)
        y = nn.relu(_batch_norm(self, train, "bn1")(y))
        y = _conv(self, self.features, 3, 1, "conv2")(y)
        y = _batch_norm(self, train, "bn2", self.zero_init_last_bn)(y)
        return _merge(self, y, x, train, self.features)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, torchvision v1.5), 1x1 expand to 4x `features`; ReLU after the sum."""

    features: int
    strides: int = 1
    projection: bool = False
    residual: bool = True
    zero_init_last_bn: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Apply the block to an NHWC feature map."""
        out = self.features * EXPANSION["bottleneck"]
        y = _conv(self, self.features, 1, 1, "conv1")(x)
        y = nn.relu(_batch_norm(self, train, "bn1")(y))
        y = _conv(self, self.features, 3, self.strides, "conv2")(y)
        y = nn.relu(_batch_norm(self, train, "bn2")(y))
        y = _conv(self, out, 1, 1, "conv3")(y)
        y = _batch_norm(self, train, "bn3", self.zero_init_last_bn)(y)
        return _merge(self, y, x, train, out)


def _merge(block: nn.Module, y: jax.Array, x: jax.Array, train: bool, out_features: int) -> jax.Array:
    """ReLU of the residual branch `y` plus the shortcut of the block input `x`.

    The shortcut is the identity or, with `projection`, torchvision's
    `downsample` (1x1 conv `downsample_0`, BatchNorm `downsample_1`); a plain
    block (`residual=False`) has none and returns ReLU(y).
    """
    if not block.residual:
        return nn.relu(y)
    if block.projection:
        x = _conv(block, out_features, 1, block.strides, "downsample_0")(x)
        x = _batch_norm(block, train, "downsample_1")(x)
    return nn.relu(y + x)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class BlockSpec(NamedTuple):
    """Where one block sits and its shape: stage/index count from 1/0 like torchvision's `layer1.0`."""

    stage: int
    index: int
    features: int
    strides: int
    projection: bool


def block_specs(model: "ResNet") -> Iterator[BlockSpec]:
    """The blocks of `model` in order; shared by the model and its PyTorch converter."""
    expansion = EXPANSION[model.block]
    in_features = model.width
    for i, num_blocks in enumerate(model.stage_sizes):
        features = model.width * 2**i
        for j in range(num_blocks):
            strides = 2 if i > 0 and j == 0 else 1
            projection = model.residual and (strides != 1 or in_features != features * expansion)
            yield BlockSpec(i + 1, j, features, strides, projection)
            in_features = features * expansion


@register("resnet18", block="basic", stage_sizes=(2, 2, 2, 2))
@register("resnet34", block="basic", stage_sizes=(3, 4, 6, 3))
@register("resnet50", block="bottleneck", stage_sizes=(3, 4, 6, 3))
@register("resnet101", block="bottleneck", stage_sizes=(3, 4, 23, 3))
@register("resnet152", block="bottleneck", stage_sizes=(3, 8, 36, 3))
@register("plain18", block="basic", stage_sizes=(2, 2, 2, 2), residual=False)
@register("plain34", block="basic", stage_sizes=(3, 4, 6, 3), residual=False)
@register("resnet_tiny", block="basic", stage_sizes=(1, 1, 1, 1), width=8, image_size=32)
class ResNet(nn.Module):
    """ResNet v1.5 (torchvision layout) or, with `residual=False`, the paper's plain network.

    Attributes:
      num_outputs: number of classes.
      block: "basic" (two 3x3 convs, ResNet-18/34) or "bottleneck" (1x1-3x3-1x1, ResNet-50+).
      stage_sizes: blocks per stage; stage i (from 0) has inner width `width * 2**i`
        and, after the first, halves the resolution in its first block.
      width: channels of the stem and of the first stage (64 in torchvision).
      residual: False removes every shortcut (no identity add, no projection),
        giving the plain nets the paper compares against.
      zero_init_residual: initialise the last BatchNorm scale of each block to
        zero so residual blocks start as the identity (torchvision's
        `zero_init_residual`, off by default).
      image_size: reference input resolution (224 for ImageNet).
      cifar_stem: replace the 7x7 stride-2 conv and the 3x3 max-pool with one
        3x3 stride-1 conv and no pooling (the usual stem for 32x32 CIFAR images),
        so the four stages see 32, 16, 8 and 4 pixels.
      features_only: return {stride: feature map} instead of logits: the stem
        after its ReLU (before the max-pool) and each stage's output, i.e.
        {2, 4, 8, 16, 32} as segmentation_models_pytorch's ResNet encoder; with
        `cifar_stem` {1: layer1, 2: layer2, 4: layer3, 8: layer4}. No `head`.
      dtype: compute dtype; parameters stay float32.
    """

    num_outputs: int
    block: str = "basic"
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    width: int = 64
    residual: bool = True
    zero_init_residual: bool = False
    image_size: int = 224
    cifar_stem: bool = False
    features_only: bool = False
    dtype: Any = jnp.float32

    checks: ClassVar[Mapping[str, Check]] = {"stage_sizes": all_at_least_one, "width": positive, "image_size": positive}

    def __post_init__(self) -> None:
        """Validate the block type at construction, not at first call."""
        if self.block not in BLOCKS:
            raise ValueError(f"unknown ResNet block {self.block!r}; choose one of: {', '.join(sorted(BLOCKS))}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array | dict[int, jax.Array]:
        """Logits of shape (batch, num_outputs) for NHWC input, or {stride: map} with `features_only`."""
        # The last map at each stride: a later stage at the same stride replaces an earlier one.
        features = {}
        if self.cifar_stem:
            x = _conv(self, self.width, 3, 1, "conv1")(x)
            x = nn.relu(_batch_norm(self, train, "bn1")(x))
            stride = 1
        else:
            x = _conv(self, self.width, 7, 2, "conv1")(x)
            x = nn.relu(_batch_norm(self, train, "bn1")(x))
            features[2] = x
            # torch's MaxPool2d(3, 2, padding=1) pads with -inf, as nn.max_pool does.
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
            stride = 4
        block_cls = BLOCKS[self.block]
        for spec in block_specs(self):
            x = block_cls(
                spec.features,
                strides=spec.strides,
                projection=spec.projection,
                residual=self.residual,
                zero_init_last_bn=self.zero_init_residual,
                dtype=self.dtype,
                name=f"layer{spec.stage}_{spec.index}",
            )(x, train)
            stride *= spec.strides
            features[stride] = x
        if self.features_only:
            return features
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_outputs, dtype=self.dtype, name="head")(x)
