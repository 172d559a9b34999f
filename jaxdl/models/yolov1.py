"""YOLO v1 (Redmon et al., 2016, "You Only Look Once"): one network maps an image to an S x S grid of boxes.

`yolov1` is the paper's detection network (its Figure 3): 24 convolutional
layers, then 2 fully connected layers, at a 448x448 input, with S=7, B=2, C=20
(PASCAL VOC) giving a 7x7x30 output. Every layer but the last uses a leaky
ReLU of slope 0.1; the last is linear; dropout 0.5 follows the first FC layer.
The convs, padded to keep the size (k // 2 on each side):

    7x7/2-64, maxpool, 3x3-192, maxpool,
    1x1-128, 3x3-256, 1x1-256, 3x3-512, maxpool,
    {1x1-256, 3x3-512} x4, 1x1-512, 3x3-1024, maxpool,
    {1x1-512, 3x3-1024} x2, 3x3-1024, 3x3/2-1024, 3x3-1024, 3x3-1024,
    FC 4096, FC S*S*(B*5+C)

(maxpool = 2x2, stride 2), so a 448 image reaches a 7x7x1024 map (stride 64).
With C=20 the network has 271,703,550 parameters, 205.5M of them in the first
FC layer.

Output layout, `[batch, S, S, B*5 + C]` float32. Cell (i, j) is row i (top to
bottom), column j (left to right) of the grid over the image; its channels are

    [x_1, y_1, sqrt_w_1, sqrt_h_1, conf_1, ..., x_B, y_B, sqrt_w_B, sqrt_h_B, conf_B, p_1, ..., p_C]

  - x, y: the box centre's offset within its cell, in cell units ([0, 1] spans
    the cell): centre = ((j + x) / S * width, (i + y) / S * height) pixels.
  - sqrt_w, sqrt_h: the square roots of the box's width and height relative to
    the image (width = sqrt_w**2 * image width). The paper's loss compares
    square roots (so an error on a small box costs more than on a large one);
    predicting the root itself keeps the loss free of the square root of a
    negative output, which a linear layer can give (the decoder reads a negative
    root as 0).
  - conf: the box's confidence, Pr(Object) * IoU(pred, truth).
  - p_c: Pr(Class_c | Object), one set per cell, shared by its B boxes.
All are raw linear outputs (no sigmoid or softmax, as in the paper).
`jaxdl.detection.yolov1` holds the paper's loss and the decoder of this layout
(the detection task's `head="yolov1"`; `detection_head()` hands it, with the
model's boxes_per_cell, to the task as a `jaxdl.detection.heads.YOLOv1Head`).

Other backbones: `backbone="resnet18"` (any name of
`jaxdl.models.list_backbones()`) replaces the 24 convs by that model built with
`features_only=True` (a submodule `backbone`), and its deepest map feeds the
same head. `neck_features` adds a 1x1 conv to that many channels first, which
shrinks the first FC layer. The head is either
  - "fc" (the paper's): flatten, FC `hidden_features`, dropout, FC S*S*(B*5+C),
    reshaped to the grid. It works for any S and any map size, but its first
    layer has map_h * map_w * channels * hidden_features weights; or
  - "conv": the same two layers as 1x1 convs applied to every position of the
    map, which must then already be S x S (a fully convolutional head, small,
    for small inputs and tests).
`grid_size=None` takes S from the deepest map's side (7 for the paper's network
at 448; e.g. 2 for a stride-32 backbone at 64).
"""

from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.detection.heads import YOLOv1Head
from jaxdl.models import layers
from jaxdl.models.features import resolve_backbone
from jaxdl.models.registry import Check, at_least_one, positive, probability, register

# The paper's 24 convolutions as (kernel, stride, output channels); "M" is a 2x2 stride-2 max-pool.
PAPER_LAYERS: tuple[tuple[int, int, int] | str, ...] = (
    (7, 2, 64),
    "M",
    (3, 1, 192),
    "M",
    (1, 1, 128),
    (3, 1, 256),
    (1, 1, 256),
    (3, 1, 512),
    "M",
    *((1, 1, 256), (3, 1, 512)) * 4,
    (1, 1, 512),
    (3, 1, 1024),
    "M",
    *((1, 1, 512), (3, 1, 1024)) * 2,
    (3, 1, 1024),
    (3, 2, 1024),
    (3, 1, 1024),
    (3, 1, 1024),
)

HEADS = ("fc", "conv")

LEAKY_SLOPE = 0.1

# The paper does not say how it initialised; He's normal init suits the leaky ReLUs.
_INIT = layers.kaiming_normal("fan_in")


def leaky_relu(x: jax.Array) -> jax.Array:
    """The paper's activation: x for x > 0, else 0.1 x."""
    return nn.leaky_relu(x, LEAKY_SLOPE)


@register("yolov1", num_outputs=20)
# For tests and toy data: resnet_tiny's stride-32 map at 64x64 (2x2x64), a 4x4 grid and a narrow FC head.
@register("yolov1_tiny", backbone="resnet_tiny", image_size=64, grid_size=4, hidden_features=64)
class YOLOv1(nn.Module):
    """YOLO v1: an NHWC image to `[batch, S, S, B*5 + C]` box and class predictions (layout: module docstring).

    Variables: the paper's convs `conv1` ... `conv24` (each with `bn1` ... with
    `batch_norm`), or a `backbone` submodule; `neck` (and `neck_bn`) with
    `neck_features`; the head `fc1`, `fc2` ("fc") or `head1`, `head2` ("conv").

    Attributes:
      num_outputs: C, the number of classes (20 for PASCAL VOC).
      grid_size: S, the grid's side (7); None: the deepest map's side.
      boxes_per_cell: B, the boxes each cell predicts (2).
      image_size: reference input side (448 in the paper).
      batch_norm: conv-BatchNorm-leaky ReLU (no conv bias) in the paper's convs and
        the neck, as YOLO v2 does for stable training; the paper has none.
      backbone: "" for the paper's 24 convs, else a registered model with
        `features_only` (e.g. "resnet18"); its deepest map feeds the head.
      backbone_kwargs: more hyperparameters of the backbone.
      neck_features: channels of a 1x1 conv (with leaky ReLU) on the deepest map
        before the head; None: no such conv (the paper).
      head: "fc" (the paper's two FC layers; any map size) or "conv" (the same as
        1x1 convs; needs an S x S map).
      hidden_features: width of the first head layer (4096 in the paper).
      dropout_rate: dropout after the first head layer (0.5 in the paper).
      dtype: compute dtype (also the backbone's); parameters and the output are float32.
    """

    num_outputs: int
    grid_size: int | None = 7
    boxes_per_cell: int = 2
    image_size: int = 448
    batch_norm: bool = False
    backbone: str = ""
    backbone_kwargs: Mapping[str, Any] | None = None
    neck_features: int | None = None
    head: str = "fc"
    hidden_features: int = 4096
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32

    checks: ClassVar[Mapping[str, Check]] = {
        "num_outputs": at_least_one,
        "grid_size": positive,
        "boxes_per_cell": at_least_one,
        "image_size": positive,
        "neck_features": positive,
        "hidden_features": positive,
        "dropout_rate": probability,
    }

    def __post_init__(self) -> None:
        """Check the head and the backbone at construction, not at first call."""
        if self.head not in HEADS:
            raise ValueError(f"head={self.head!r} is not valid; choose one of: {', '.join(HEADS)}")
        if self.backbone:
            self.backbone_spec()
        super().__post_init__()

    def detection_head(self) -> YOLOv1Head:
        """The output format with this model's boxes per cell, for the detection task's loss and decoding."""
        return YOLOv1Head(boxes_per_cell=self.boxes_per_cell)

    @property
    def cell_channels(self) -> int:
        """B * 5 + C, the channels of each cell of the output."""
        return self.boxes_per_cell * 5 + self.num_outputs

    def backbone_spec(self) -> tuple[type[nn.Module], dict[str, Any]]:
        """The backbone's class and hyperparameters (with `features_only=True` and this model's dtype)."""
        return resolve_backbone(self.backbone, **{"dtype": self.dtype, **dict(self.backbone_kwargs or {})})

    def _conv(
        self, x: jax.Array, features: int, kernel: int, stride: int, names: tuple[str, str], train: bool
    ) -> jax.Array:
        """Conv(-BatchNorm)-leaky ReLU, padded by kernel // 2 on each side; `names`: (conv, BatchNorm)."""
        pad = kernel // 2
        x = layers.Conv(
            features,
            (kernel, kernel),
            strides=(stride, stride),
            padding=((pad, pad), (pad, pad)),
            use_bias=not self.batch_norm,
            kernel_init=_INIT,
            dtype=self.dtype,
            name=names[0],
        )(x)
        if self.batch_norm:
            x = layers.batch_norm(train, dtype=self.dtype, name=names[1])(x)
        return leaky_relu(x)

    def trunk(self, x: jax.Array, train: bool) -> jax.Array:
        """The deepest feature map: the paper's 24 convs, or the backbone's map of the largest stride."""
        if self.backbone:
            cls, hyperparameters = self.backbone_spec()
            maps = cls(**hyperparameters, name="backbone")(x, train)
            return maps[max(maps)]
        index = 0
        for layer in PAPER_LAYERS:
            if layer == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            else:
                kernel, stride, features = layer
                index += 1
                x = self._conv(x, features, kernel, stride, (f"conv{index}", f"bn{index}"), train)
        return x

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Predictions `[batch, S, S, B*5 + C]` (float32) for NHWC images."""
        y = self.trunk(x, train)
        if self.neck_features is not None:
            y = self._conv(y, self.neck_features, 1, 1, ("neck", "neck_bn"), train)
        height, width = y.shape[1:3]
        if self.grid_size is not None:
            side = self.grid_size
        elif height == width:
            side = height
        else:
            raise ValueError(
                f"grid_size=None takes S from the deepest map, which is {height}x{width}, not square; "
                "set grid_size (a grid needs S x S cells)"
            )
        dense = dict(dtype=self.dtype)
        if self.head == "conv":
            if (height, width) != (side, side):
                raise ValueError(
                    f"head='conv' needs the deepest map to be the {side}x{side} grid, but it is {height}x{width}; "
                    "change grid_size or the input size, or use head='fc'"
                )
            y = layers.Conv(self.hidden_features, (1, 1), kernel_init=_INIT, name="head1", **dense)(y)
            y = nn.Dropout(self.dropout_rate, deterministic=not train)(leaky_relu(y))
            y = layers.Conv(self.cell_channels, (1, 1), name="head2", **dense)(y)
        else:
            y = y.reshape((y.shape[0], -1))
            y = nn.Dense(self.hidden_features, kernel_init=_INIT, name="fc1", **dense)(y)
            y = nn.Dropout(self.dropout_rate, deterministic=not train)(leaky_relu(y))
            y = nn.Dense(side * side * self.cell_channels, name="fc2", **dense)(y)
            y = y.reshape((y.shape[0], side, side, self.cell_channels))
        return y.astype(jnp.float32)
