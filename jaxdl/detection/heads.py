"""Detection heads: a detector's output format with its own geometry, its loss and its decoding.

A detector model hands out its head (`model.detection_head()`), as ultralytics'
`v8DetectionLoss.__init__` reads stride, nc and reg_max off the model's `Detect`
layer, so the detection task assumes no reg_max, stride or box count. A head is a
small frozen (hashable) object: the task holds it inside the jitted steps.

- `YOLOv8Head` (YOLOv8, YOLO11): raw [B, A, 4 * reg_max + C] over the anchor
  points of `strides`; ultralytics' v8 loss (`jaxdl.detection.loss`), DFL decoding;
- `YOLOv1Head`: [B, S, S, 5 * boxes_per_cell + C]; the paper's sum-squared error
  and its cells' predictors (`jaxdl.detection.yolov1`).

`HEADS` maps the names a config declares (`config.task.head`) to the classes.
Imports only jax and the rest of `jaxdl.detection`.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping, Sequence
from typing import ClassVar

import jax

from jaxdl.detection import boxes, yolov1
from jaxdl.detection.loss import yolov8_loss


class DetectionHead(abc.ABC):
    """The loss and the decoding of one detector output format (`name`), for any number of classes."""

    name: ClassVar[str]

    @abc.abstractmethod
    def loss(
        self, raw: jax.Array, targets: Mapping[str, jax.Array], image_hw: Sequence[int], *, num_classes: int
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(per-example loss [B], named parts: batch values or [B]) of raw outputs against padded targets.

        targets: "boxes" [B, G, 4] xyxy pixels, "classes" [B, G] int, "valid" [B, G] bool.
        """

    @abc.abstractmethod
    def decode(self, raw: jax.Array, image_hw: Sequence[int], *, num_classes: int) -> tuple[jax.Array, jax.Array]:
        """Every candidate box [B, N, 4] (xyxy pixels, not clipped) and its class scores [B, N, C]."""


def _check_count(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field}={value!r} is not valid; it must be an int >= 1")


@dataclasses.dataclass(frozen=True)
class YOLOv8Head(DetectionHead):
    """Ultralytics' anchor-free `Detect` output: `reg_max` DFL bins per box side at the anchor points of `strides`.

    reg_max=1 predicts each side's distance directly (no distribution), and its
    third loss term is ultralytics' L1 of the sides in image fractions ("l1")
    instead of the DFL ("dfl").
    """

    reg_max: int = 16
    strides: tuple[int, ...] = boxes.DEFAULT_STRIDES

    name: ClassVar[str] = "yolov8"

    def __post_init__(self) -> None:
        """Refuse a geometry the loss and the decoding cannot use."""
        _check_count("reg_max", self.reg_max)
        strides = tuple(self.strides)
        if not strides or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in strides):
            raise ValueError(f"strides={strides!r} is not valid; give positive ints, smallest first")
        if list(strides) != sorted(set(strides)):
            # The anchors are laid out level by level, smallest stride first (ultralytics' order).
            raise ValueError(f"strides={strides!r} is not valid; they must increase, smallest first")
        object.__setattr__(self, "strides", strides)

    def loss(self, raw, targets, image_hw, *, num_classes):
        """Ultralytics' v8 loss (see `jaxdl.detection.loss.yolov8_loss`)."""
        return yolov8_loss(raw, targets, image_hw, num_classes=num_classes, reg_max=self.reg_max, strides=self.strides)

    def decode(self, raw, image_hw, *, num_classes):
        """DFL-decoded boxes and sigmoid class scores."""
        expected = 4 * self.reg_max + num_classes
        if raw.shape[-1] != expected:
            raise ValueError(
                f"raw has {raw.shape[-1]} channels; reg_max={self.reg_max} and {num_classes} classes need {expected}"
            )
        return boxes.decode(raw, image_hw, self.strides, self.reg_max)


@dataclasses.dataclass(frozen=True)
class YOLOv1Head(DetectionHead):
    """YOLO v1's grid output: `boxes_per_cell` predictors per cell and one class distribution per cell."""

    boxes_per_cell: int = 2

    name: ClassVar[str] = "yolov1"

    def __post_init__(self) -> None:
        """Refuse a box count the loss and the decoding cannot use."""
        _check_count("boxes_per_cell", self.boxes_per_cell)

    def loss(self, raw, targets, image_hw, *, num_classes):
        """The paper's sum-squared error (see `jaxdl.detection.yolov1.yolov1_loss`)."""
        return yolov1.yolov1_loss(raw, targets, image_hw, num_classes=num_classes, boxes_per_cell=self.boxes_per_cell)

    def decode(self, raw, image_hw, *, num_classes):
        """Every predictor's box and its class-specific scores (see `jaxdl.detection.yolov1.yolov1_decode`)."""
        return yolov1.yolov1_decode(raw, image_hw, num_classes=num_classes, boxes_per_cell=self.boxes_per_cell)


# config.task.head -> the head class a detector must hand out.
HEADS: dict[str, type[DetectionHead]] = {cls.name: cls for cls in (YOLOv8Head, YOLOv1Head)}


__all__ = ["HEADS", "DetectionHead", "YOLOv1Head", "YOLOv8Head"]
