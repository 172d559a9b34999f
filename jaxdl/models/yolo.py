"""YOLOv8 and YOLO11 object detectors (Ultralytics' architectures), raw head outputs for a detection loss.

Both are a strided-conv backbone, a PAN neck (upsample + concatenate, then
downsample + concatenate) and an anchor-free decoupled head at strides 8, 16 and
32 (Ultralytics' `Detect`): per level, a box branch of two 3x3 conv-BN-SiLU and a
1x1 conv to 4 x `reg_max` distribution logits (Distribution Focal Loss: for each
side left, top, right, bottom, logits over distances 0 .. reg_max - 1 in stride
units), and a class branch ending in a 1x1 conv to the class logits.

The layouts follow Ultralytics 8.4's `cfg/models/v8/yolov8.yaml` and
`cfg/models/11/yolo11.yaml`, as its `parse_model` scales them: a layer's output
channels are ceil(min(c, max_channels) * width_multiple / 8) * 8 and a repeat
count n > 1 becomes max(round(n * depth_multiple), 1).

* YOLOv8: C2f blocks (split in two, a chain of bottlenecks on one half, every
  intermediate concatenated; 3x3-3x3 bottlenecks at full width, residual in the
  backbone only), SPPF (three chained 5x5 max-pools), and a class branch of two
  3x3 conv-BN-SiLU of width max(c_P3, min(classes, 100)).
* YOLO11: C3k2 blocks (C2f with residual bottlenecks of half width, or with C3k
  blocks -- a CSP block of two 3x3 bottlenecks -- where the yaml asks, and in every
  C3k2 of the m/l/x scales), SPPF, C2PSA after it (position-sensitive attention:
  multi-head self-attention over all positions with a depthwise 3x3 positional
  term on the values, then a 1x1 feed-forward, both residual), and a class branch
  of (depthwise 3x3, pointwise 1x1) conv-BN-SiLU twice.

Every conv but the head's last 1x1s has no bias and is followed by BatchNorm
(eps 1e-3, torch momentum 0.03, as Ultralytics sets them) and SiLU.

Output: `model.apply(variables, x, train=...)` for NHWC `x` [B, H, W, C] (H and W
multiples of 32) is one float32 array [B, A, 4 * reg_max + num_outputs], in
training and in evaluation alike. The A anchors are the cells of the stride-8,
16 and 32 maps, level by level, row-major within a level (Ultralytics'
`make_anchors` order, `jaxdl.detection.boxes.make_anchors` lists them). Channel side * reg_max + bin
is the distribution logit of that side (left, top, right, bottom) and bin; the
last num_outputs channels are the class logits. These are Ultralytics'
`preds["boxes"]` and `preds["scores"]`, transposed; nothing is decoded here. A
box decodes as its anchor centre ((x + 0.5) * stride, (y + 0.5) * stride) minus
(left, top) and plus (right, bottom) the expected distances (softmax over the
bins, times arange(reg_max)) times the stride. `detection_head()` hands this
format, with the model's reg_max and strides, to the detection task
(`jaxdl.detection.heads.YOLOv8Head`, the task's `head="yolov8"`).

Names: layer i of the yaml is `model_{i}` (torch `model.{i}`), with Ultralytics'
submodule names (`cv1`, `cv2`, `m_{j}`, `attn`, `ffn_{k}`; each conv-BN is `conv`
+ `bn`); the Detect layer is `head`, whose level-l box branch is `box_{l}_{k}`
(torch `cv2.{l}.{k}`) and class branch `cls_{l}_{k}` (torch `cv3.{l}.{k}`, with
`_{j}` for YOLO11's depthwise/pointwise pairs). `jaxdl.convert.yolo` imports
Ultralytics `DetectionModel` state dicts.

Parameter counts: Ultralytics counts the DFL's fixed 1x1 conv (the bin values
0 .. reg_max - 1, excluded from its gradients) among its parameters, so jaxdl
keeps it too, as `params/head/dfl` ([1, 1, reg_max, 1] = arange(reg_max)). The
forward pass never reads it, so its gradient is zero (only weight decay could
move it, and nothing reads it). `count_params(params)` at 80 classes equals
Ultralytics' published counts, e.g. yolov8n 3,157,200 and yolo11n 2,624,080
(3,157,184 and 2,624,064 trainable).

`yolov8_tiny` and `yolo11_tiny` (width 1/16: 8-64 channels, 64x64 reference
images) are for tests; their head keeps Ultralytics' minimum box-branch width of
4 * reg_max = 64.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.detection.heads import YOLOv8Head
from jaxdl.models import layers
from jaxdl.models.registry import Check, at_least_one, positive, register

# torch's default conv init (kaiming_uniform with a = sqrt(5)); Ultralytics keeps it.
conv_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# Ultralytics' BatchNorm settings (`initialize_weights`): eps 1e-3, momentum 0.03 (torch's convention).
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.03

# The image side Ultralytics' bias prior assumes.
_PRIOR_IMAGE_SIZE = 640


class ConvBN(nn.Module):
    """Ultralytics' `Conv`: a bias-free conv (padding kernel // 2), BatchNorm, then SiLU unless `act=False`.

    Variables: `conv` (kernel), `bn`. `groups` > 1 is a grouped conv (groups = channels: depthwise).
    """

    features: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    act: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """conv -> BN -> SiLU of an NHWC map."""
        pad = self.kernel // 2
        x = layers.Conv(
            self.features,
            (self.kernel, self.kernel),
            strides=(self.stride, self.stride),
            padding=((pad, pad), (pad, pad)),
            feature_group_count=self.groups,
            use_bias=False,
            kernel_init=conv_init,
            dtype=self.dtype,
            name="conv",
        )(x)
        x = layers.batch_norm(train, dtype=self.dtype, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name="bn")(x)
        return nn.silu(x) if self.act else x


class Bottleneck(nn.Module):
    """Two conv-BN-SiLU, `cv1` to `hidden` channels and `cv2` to `features`; residual if `shortcut` and shapes agree."""

    features: int
    hidden: int
    shortcut: bool = True
    kernels: tuple[int, int] = (3, 3)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The block's output for an NHWC map."""
        y = ConvBN(self.hidden, self.kernels[0], dtype=self.dtype, name="cv1")(x, train)
        y = ConvBN(self.features, self.kernels[1], dtype=self.dtype, name="cv2")(y, train)
        return x + y if self.shortcut and x.shape[-1] == self.features else y


class C3k(nn.Module):
    """CSP block: `cv1` -> `repeats` 3x3 bottlenecks `m_{j}` at full width, concatenated with `cv2`, fused by `cv3`."""

    features: int
    repeats: int = 2
    shortcut: bool = True
    expansion: float = 0.5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The block's output for an NHWC map."""
        hidden = int(self.features * self.expansion)
        y = ConvBN(hidden, dtype=self.dtype, name="cv1")(x, train)
        for j in range(self.repeats):
            y = Bottleneck(hidden, hidden, self.shortcut, dtype=self.dtype, name=f"m_{j}")(y, train)
        z = ConvBN(hidden, dtype=self.dtype, name="cv2")(x, train)
        return ConvBN(self.features, dtype=self.dtype, name="cv3")(jnp.concatenate([y, z], axis=-1), train)


class C2f(nn.Module):
    """C2f (YOLOv8) and C3k2 (YOLO11): `cv1` to 2c channels split in halves, a chain of `m_{j}` on the second
    half, every half and intermediate concatenated and fused by `cv2`.

    c = int(features * expansion). `inner` picks the chained block: "bottleneck" (C2f:
    3x3-3x3 at width c), "half_bottleneck" (C3k2: 3x3-3x3 through c / 2) or "c3k"
    (C3k2 with c3k: a `C3k` of two bottlenecks).
    """

    features: int
    repeats: int = 1
    shortcut: bool = False
    expansion: float = 0.5
    inner: str = "bottleneck"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The block's output for an NHWC map."""
        c = int(self.features * self.expansion)
        ys = list(jnp.split(ConvBN(2 * c, dtype=self.dtype, name="cv1")(x, train), 2, axis=-1))
        for j in range(self.repeats):
            if self.inner == "c3k":
                block = C3k(c, 2, self.shortcut, dtype=self.dtype, name=f"m_{j}")
            else:
                hidden = c if self.inner == "bottleneck" else int(c * 0.5)
                block = Bottleneck(c, hidden, self.shortcut, dtype=self.dtype, name=f"m_{j}")
            ys.append(block(ys[-1], train))
        return ConvBN(self.features, dtype=self.dtype, name="cv2")(jnp.concatenate(ys, axis=-1), train)


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: `cv1` halves the channels, three chained k x k max-pools (stride 1, padded),
    the four maps concatenated and fused by `cv2`."""

    features: int
    pool: int = 5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The block's output for an NHWC map (same size)."""
        ys = [ConvBN(x.shape[-1] // 2, dtype=self.dtype, name="cv1")(x, train)]
        pad = self.pool // 2
        for _ in range(3):
            ys.append(nn.max_pool(ys[-1], (self.pool, self.pool), padding=((pad, pad), (pad, pad))))
        return ConvBN(self.features, dtype=self.dtype, name="cv2")(jnp.concatenate(ys, axis=-1), train)


class Attention(nn.Module):
    """Multi-head self-attention over all H x W positions with 1x1 conv-BN projections.

    `qkv` gives, per head, key_dim query, key_dim key and head_dim value channels
    (head-major; key_dim = head_dim / 2); the attended values plus `pe` (a
    depthwise 3x3 conv-BN of the values) go through `proj`. No activations.
    """

    features: int
    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The attention output for an NHWC map (same shape)."""
        batch, height, width, channels = x.shape
        head_dim = channels // self.num_heads
        key_dim = int(head_dim * 0.5)
        qkv = ConvBN(channels + 2 * key_dim * self.num_heads, act=False, dtype=self.dtype, name="qkv")(x, train)
        qkv = qkv.reshape(batch, height * width, self.num_heads, 2 * key_dim + head_dim)
        q, k, v = jnp.split(qkv, [key_dim, 2 * key_dim], axis=-1)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q * key_dim**-0.5, k)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, height, width, channels)
        v = v.reshape(batch, height, width, channels)
        out = out + ConvBN(channels, 3, groups=channels, act=False, dtype=self.dtype, name="pe")(v, train)
        return ConvBN(channels, act=False, dtype=self.dtype, name="proj")(out, train)


class PSABlock(nn.Module):
    """x + attn(x), then x + ffn(x): 1x1 conv-BN-SiLU to twice the channels (`ffn_0`) and back (`ffn_1`, linear)."""

    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The block's output for an NHWC map."""
        channels = x.shape[-1]
        x = x + Attention(channels, self.num_heads, dtype=self.dtype, name="attn")(x, train)
        y = ConvBN(2 * channels, dtype=self.dtype, name="ffn_0")(x, train)
        return x + ConvBN(channels, act=False, dtype=self.dtype, name="ffn_1")(y, train)


class C2PSA(nn.Module):
    """`cv1` to 2c channels split in halves (c = half the input), `repeats` `PSABlock`s `m_{j}` on the second, `cv2`.

    Each block has max(c // 64, 1) heads.
    """

    features: int
    repeats: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The block's output for an NHWC map."""
        c = x.shape[-1] // 2
        a, b = jnp.split(ConvBN(2 * c, dtype=self.dtype, name="cv1")(x, train), 2, axis=-1)
        for j in range(self.repeats):
            b = PSABlock(max(c // 64, 1), dtype=self.dtype, name=f"m_{j}")(b, train)
        return ConvBN(self.features, dtype=self.dtype, name="cv2")(jnp.concatenate([a, b], axis=-1), train)


def class_prior_bias(num_classes: int, stride: int) -> float:
    """Ultralytics' `bias_init` for the class logits at `stride`: log(5 / nc / (640 / stride)^2).

    About 5 objects per 640x640 image spread over the classes and cells: a fresh
    model starts with low, equal class probabilities.
    """
    return math.log(5 / num_classes / (_PRIOR_IMAGE_SIZE / stride) ** 2)


# Ultralytics' `bias_init` (8.4) starts every box-distribution logit at 2.0.
BOX_PRIOR_BIAS = 2.0


class DetectHead(nn.Module):
    """Ultralytics' `Detect` (one-to-many head): per level l, a box branch `box_{l}_{0,1,2}` and a class branch
    `cls_{l}_{0,1,2}`; returns [B, A, 4 * reg_max + num_outputs] over the levels' cells.

    Box branch: two 3x3 conv-BN-SiLU of width max(16, c_0 // 4, 4 * reg_max), then a 1x1
    conv (bias) to 4 * reg_max. Class branch of width `class_channels` (default
    max(c_0, min(num_outputs, 100)), with c_0 the first level's input channels):
    two 3x3 conv-BN-SiLU (`depthwise=False`, YOLOv8), or twice a depthwise 3x3 then
    a 1x1 conv-BN-SiLU (`cls_{l}_{k}_0`, `cls_{l}_{k}_1`; YOLO11); then a 1x1 conv
    (bias) to the classes. `dfl` holds the DFL bins 0 .. reg_max - 1 (see the module doc).
    """

    num_outputs: int
    strides: Sequence[int]
    reg_max: int = 16
    class_channels: int | None = None
    depthwise: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, maps: Sequence[jax.Array], train: bool = False) -> jax.Array:
        """The raw outputs for the feature maps of the levels, stride 8 first."""
        first = maps[0].shape[-1]
        box_width = max(16, first // 4, 4 * self.reg_max)
        cls_width = self.class_channels or max(first, min(self.num_outputs, 100))
        if self.reg_max > 1:
            self.param("dfl", _dfl_init, (1, 1, self.reg_max, 1))
        outputs = []
        for level, (x, stride) in enumerate(zip(maps, self.strides, strict=True)):
            box = x
            for k in range(2):
                box = ConvBN(box_width, 3, dtype=self.dtype, name=f"box_{level}_{k}")(box, train)
            box = _head_conv(4 * self.reg_max, BOX_PRIOR_BIAS, self.dtype, f"box_{level}_2")(box)
            cls = x
            for k in range(2):
                if self.depthwise:
                    channels = cls.shape[-1]
                    cls = ConvBN(channels, 3, groups=channels, dtype=self.dtype, name=f"cls_{level}_{k}_0")(cls, train)
                    cls = ConvBN(cls_width, dtype=self.dtype, name=f"cls_{level}_{k}_1")(cls, train)
                else:
                    cls = ConvBN(cls_width, 3, dtype=self.dtype, name=f"cls_{level}_{k}")(cls, train)
            prior = class_prior_bias(self.num_outputs, stride)
            cls = _head_conv(self.num_outputs, prior, self.dtype, f"cls_{level}_2")(cls)
            out = jnp.concatenate([box, cls], axis=-1)
            outputs.append(out.reshape(out.shape[0], -1, out.shape[-1]).astype(jnp.float32))
        return jnp.concatenate(outputs, axis=1)


def _dfl_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """The DFL's fixed 1x1 conv kernel (1, 1, reg_max, 1): the bin values 0 .. reg_max - 1."""
    del key
    return jnp.arange(shape[2], dtype=dtype).reshape(shape)


def _head_conv(features: int, bias: float, dtype: Any, name: str) -> nn.Conv:
    """A head's last 1x1 conv, with its bias starting at `bias` (Ultralytics' `bias_init`)."""
    return layers.Conv(
        features,
        (1, 1),
        kernel_init=conv_init,
        bias_init=nn.initializers.constant(bias),
        dtype=dtype,
        name=name,
    )


@dataclasses.dataclass(frozen=True)
class Layer:
    """One row of a yaml: `kind`, its input(s) (-1: the previous layer), and its unscaled size.

    kind: "conv" (conv-BN-SiLU, `kernel`/`stride`), "c2f", "c3k2", "sppf", "c2psa",
    "upsample" (nearest, 2x) or "concat" (channels).
    """

    kind: str
    channels: int = 0
    repeats: int = 1
    source: int | tuple[int, ...] = -1
    kernel: int = 1
    stride: int = 1
    shortcut: bool = True
    c3k: bool = False
    expansion: float = 0.5


def _conv(channels: int) -> Layer:
    return Layer("conv", channels, kernel=3, stride=2)


# cfg/models/v8/yolov8.yaml: the backbone (0-9), the neck (10-21); Detect reads 15, 18, 21.
YOLOV8_LAYERS = (
    _conv(64),  # 0: stride 2
    _conv(128),  # 1: stride 4
    Layer("c2f", 128, 3),
    _conv(256),  # 3: stride 8
    Layer("c2f", 256, 6),
    _conv(512),  # 5: stride 16
    Layer("c2f", 512, 6),
    _conv(1024),  # 7: stride 32
    Layer("c2f", 1024, 3),
    Layer("sppf", 1024),
    Layer("upsample"),
    Layer("concat", source=(-1, 6)),
    Layer("c2f", 512, 3, shortcut=False),  # 12
    Layer("upsample"),
    Layer("concat", source=(-1, 4)),
    Layer("c2f", 256, 3, shortcut=False),  # 15: P3 out
    _conv(256),
    Layer("concat", source=(-1, 12)),
    Layer("c2f", 512, 3, shortcut=False),  # 18: P4 out
    _conv(512),
    Layer("concat", source=(-1, 9)),
    Layer("c2f", 1024, 3, shortcut=False),  # 21: P5 out
)
YOLOV8_OUTPUTS = (15, 18, 21)

# cfg/models/11/yolo11.yaml: the backbone (0-10), the neck (11-22); Detect reads 16, 19, 22.
YOLO11_LAYERS = (
    _conv(64),  # 0: stride 2
    _conv(128),  # 1: stride 4
    Layer("c3k2", 256, 2, expansion=0.25),
    _conv(256),  # 3: stride 8
    Layer("c3k2", 512, 2, expansion=0.25),
    _conv(512),  # 5: stride 16
    Layer("c3k2", 512, 2, c3k=True),
    _conv(1024),  # 7: stride 32
    Layer("c3k2", 1024, 2, c3k=True),
    Layer("sppf", 1024),
    Layer("c2psa", 1024, 2),  # 10
    Layer("upsample"),
    Layer("concat", source=(-1, 6)),
    Layer("c3k2", 512, 2),  # 13
    Layer("upsample"),
    Layer("concat", source=(-1, 4)),
    Layer("c3k2", 256, 2),  # 16: P3 out
    _conv(256),
    Layer("concat", source=(-1, 13)),
    Layer("c3k2", 512, 2),  # 19: P4 out
    _conv(512),
    Layer("concat", source=(-1, 10)),
    Layer("c3k2", 1024, 2, c3k=True),  # 22: P5 out
)
YOLO11_OUTPUTS = (16, 19, 22)


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """A scaled layer: its index i (module `model_{i}`), the absolute indices it reads, its channels and repeats."""

    index: int
    layer: Layer
    sources: tuple[int, ...]
    in_channels: int
    channels: int
    repeats: int
    c3k: bool

    @property
    def kind(self) -> str:
        """The layer's kind (see `Layer`)."""
        return self.layer.kind


def _scaled_channels(channels: int, width: float, max_channels: int) -> int:
    return math.ceil(min(channels, max_channels) * width / 8) * 8


def _scaled_repeats(repeats: int, depth: float) -> int:
    return max(round(repeats * depth), 1) if repeats > 1 else repeats


class _YOLO(nn.Module):
    """The fields and the layer-by-layer forward pass shared by `YOLOv8` and `YOLO11` (see the module doc)."""

    num_outputs: int = 80
    depth_multiple: float = 0.33
    width_multiple: float = 0.25
    max_channels: int = 1024
    reg_max: int = 16
    class_channels: int | None = None
    image_size: int = 640
    dtype: Any = jnp.float32

    strides: ClassVar[tuple[int, ...]] = (8, 16, 32)
    checks: ClassVar[Mapping[str, Check]] = {
        "num_outputs": at_least_one,
        "depth_multiple": positive,
        "width_multiple": positive,
        "max_channels": positive,
        "reg_max": at_least_one,
        "class_channels": positive,
        "image_size": positive,
    }
    architecture: ClassVar[tuple[Layer, ...]] = ()
    head_inputs: ClassVar[tuple[int, ...]] = ()
    depthwise_head: ClassVar[bool] = False

    def uses_c3k(self, layer: Layer) -> bool:
        """Whether a C3k2 layer chains C3k blocks."""
        return layer.c3k

    def layer_specs(self, in_channels: int = 3) -> list[LayerSpec]:
        """The yaml's layers scaled by this model's depth, width and max_channels, for `in_channels` input channels."""
        specs: list[LayerSpec] = []
        channels = [in_channels]  # channels[-1] is the previous layer's output.

        def absolute(source: int, index: int) -> int:
            return index + source if source < 0 else source

        for index, layer in enumerate(self.architecture):
            sources = layer.source if isinstance(layer.source, tuple) else (layer.source,)
            sources = tuple(absolute(s, index) for s in sources)
            inputs = [channels[s + 1] for s in sources]  # channels[0] is the image.
            if layer.kind == "concat":
                out = sum(inputs)
            elif layer.kind == "upsample":
                out = inputs[0]
            else:
                out = _scaled_channels(layer.channels, self.width_multiple, self.max_channels)
            repeats = _scaled_repeats(layer.repeats, self.depth_multiple)
            specs.append(LayerSpec(index, layer, sources, inputs[0], out, repeats, self.uses_c3k(layer)))
            channels.append(out)
        return specs

    def detection_head(self) -> YOLOv8Head:
        """The output format with this model's geometry, for the detection task's loss and decoding."""
        return YOLOv8Head(reg_max=self.reg_max, strides=self.strides)

    def check_input_size(self, height: int, width: int) -> None:
        """Raises ValueError unless height and width are multiples of the deepest stride (32)."""
        deepest = max(self.strides)
        if height % deepest or width % deepest:
            raise ValueError(
                f"{type(self).__name__} needs an input height and width that are multiples of {deepest} "
                f"(its deepest stride); got {height}x{width}"
            )

    def _block(self, spec: LayerSpec) -> nn.Module:
        """The module of one scaled layer (not called for upsample/concat)."""
        name, dtype, layer = f"model_{spec.index}", self.dtype, spec.layer
        if spec.kind == "conv":
            return ConvBN(spec.channels, layer.kernel, layer.stride, dtype=dtype, name=name)
        if spec.kind == "c2f":
            return C2f(spec.channels, spec.repeats, layer.shortcut, dtype=dtype, name=name)
        if spec.kind == "c3k2":
            inner = "c3k" if spec.c3k else "half_bottleneck"
            return C2f(spec.channels, spec.repeats, True, layer.expansion, inner, dtype=dtype, name=name)
        if spec.kind == "sppf":
            return SPPF(spec.channels, dtype=dtype, name=name)
        if spec.kind == "c2psa":
            return C2PSA(spec.channels, spec.repeats, dtype=dtype, name=name)
        raise ValueError(f"unknown layer kind {spec.kind!r}")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Raw outputs [B, A, 4 * reg_max + num_outputs] (float32) for NHWC images [B, H, W, C]."""
        if x.ndim != 4:
            raise ValueError(f"{type(self).__name__} takes NHWC images [B, H, W, C]; got shape {tuple(x.shape)}")
        self.check_input_size(x.shape[1], x.shape[2])
        x = jnp.asarray(x, self.dtype)
        results: list[jax.Array] = []
        for spec in self.layer_specs(x.shape[-1]):
            inputs = [results[s] if results else x for s in spec.sources]
            if spec.kind == "concat":
                y = jnp.concatenate(inputs, axis=-1)
            elif spec.kind == "upsample":
                y = jnp.repeat(jnp.repeat(inputs[0], 2, axis=1), 2, axis=2)
            else:
                y = self._block(spec)(inputs[0], train)
            results.append(y)
        head = DetectHead(
            self.num_outputs,
            self.strides,
            self.reg_max,
            self.class_channels,
            self.depthwise_head,
            dtype=self.dtype,
            name="head",
        )
        return head([results[i] for i in self.head_inputs], train)


@register("yolov8n", depth_multiple=0.33, width_multiple=0.25, max_channels=1024)
@register("yolov8s", depth_multiple=0.33, width_multiple=0.50, max_channels=1024)
@register("yolov8m", depth_multiple=0.67, width_multiple=0.75, max_channels=768)
@register("yolov8l", depth_multiple=1.00, width_multiple=1.00, max_channels=512)
@register("yolov8x", depth_multiple=1.00, width_multiple=1.25, max_channels=512)
# For tests: 8-64 channels, one block per stage (depth 0.33), 64x64 images.
@register("yolov8_tiny", depth_multiple=0.33, width_multiple=0.0625, max_channels=1024, image_size=64)
class YOLOv8(_YOLO):
    """YOLOv8 detector (Ultralytics 8.4, `yolov8.yaml`); NHWC images in, raw head outputs out (see the module doc).

    Attributes:
      num_outputs: number of classes (80 for COCO).
      depth_multiple, width_multiple, max_channels: the yaml's scale (n: 0.33, 0.25,
        1024; s: 0.33, 0.5, 1024; m: 0.67, 0.75, 768; l: 1, 1, 512; x: 1, 1.25, 512).
      reg_max: DFL bins per box side (16).
      class_channels: width of the class branch; None: Ultralytics' max(c_P3, min(classes, 100)).
        Set it to the source's width (e.g. 80 for yolov8n with COCO's 80 classes)
        to import a checkpoint's hidden class layers into a model with fewer classes,
        as Ultralytics' own transfer does.
      image_size: reference input side (640); any multiple of 32 works.
      dtype: compute dtype; parameters stay float32 and the output is float32.
    """

    architecture: ClassVar[tuple[Layer, ...]] = YOLOV8_LAYERS
    head_inputs: ClassVar[tuple[int, ...]] = YOLOV8_OUTPUTS


@register("yolo11n", depth_multiple=0.50, width_multiple=0.25, max_channels=1024)
@register("yolo11s", depth_multiple=0.50, width_multiple=0.50, max_channels=1024)
@register("yolo11m", depth_multiple=0.50, width_multiple=1.00, max_channels=512, c3k=True)
@register("yolo11l", depth_multiple=1.00, width_multiple=1.00, max_channels=512, c3k=True)
@register("yolo11x", depth_multiple=1.00, width_multiple=1.50, max_channels=512, c3k=True)
# For tests: 8-64 channels, one block per stage (depth 0.5), 64x64 images.
@register("yolo11_tiny", depth_multiple=0.50, width_multiple=0.0625, max_channels=1024, image_size=64)
class YOLO11(_YOLO):
    """YOLO11 detector (Ultralytics 8.4, `yolo11.yaml`); NHWC images in, raw head outputs out (see the module doc).

    Attributes:
      num_outputs: number of classes (80 for COCO).
      depth_multiple, width_multiple, max_channels: the yaml's scale (n: 0.5, 0.25,
        1024; s: 0.5, 0.5, 1024; m: 0.5, 1, 512; l: 1, 1, 512; x: 1, 1.5, 512).
      c3k: every C3k2 chains C3k blocks (Ultralytics' `parse_model` does so for the
        m, l and x scales); False: only the layers the yaml marks (6, 8 and 22).
      reg_max, class_channels, image_size, dtype: as for `YOLOv8`.
    """

    c3k: bool = False

    architecture: ClassVar[tuple[Layer, ...]] = YOLO11_LAYERS
    head_inputs: ClassVar[tuple[int, ...]] = YOLO11_OUTPUTS
    depthwise_head: ClassVar[bool] = True

    def uses_c3k(self, layer: Layer) -> bool:
        """Whether a C3k2 layer chains C3k blocks: the yaml's choice, or every one with `c3k`."""
        return layer.kind == "c3k2" and (layer.c3k or self.c3k)


__all__ = [
    "Attention",
    "C2PSA",
    "C2f",
    "C3k",
    "ConvBN",
    "DetectHead",
    "LayerSpec",
    "PSABlock",
    "SPPF",
    "YOLO11",
    "YOLOv8",
    "class_prior_bias",
]
