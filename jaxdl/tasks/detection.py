"""Object detection: boxes with classes, trained with a detector's own loss, scored by COCO mAP.

Targets are a batch's objects (`config.dataset.target_kind = "objects"`, see
jaxdl.data.objects): class ids `target` [B, G], pixel boxes `boxes` [B, G, 4]
(x0, y0, x1, y1) and `box_valid` [B, G], and where the dataset flags them
`box_crowd` [B, G] (crowd regions: out of the loss, ignore regions for COCO)
and `box_area` (the annotations' areas). `task.head` declares the model's output
format (a name of `jaxdl.detection.heads.HEADS`), which the model must give. The
loss and the decoding are the model's own head's (`model.detection_head()`, with
its reg_max, strides or boxes per cell), which `for_model` binds to the task:

- `yolov8` (YOLOv8, YOLO11): raw [B, A, 4 * reg_max + C] over the anchor points of
  the model's strides; the loss is ultralytics' v8 detection loss (task-aligned
  assigner, CIoU, DFL, BCE; `jaxdl.detection.loss`), boxes are DFL-decoded;
- `yolov1`: [B, S, S, 5 B + C]; the loss is the paper's sum-squared error
  (`jaxdl.detection.yolov1`), boxes are its cells' predictors.

Evaluation decodes the outputs, takes every (box, class) pair scoring above
`task.score_threshold` as a candidate, applies class-aware NMS at
`task.iou_threshold` and keeps at most `task.max_detections` per image, all on
device (`jaxdl.detection.nms`), as ultralytics validates. The host gathers every image's detections and
objects, from every process, and scores them by the COCO protocol
(`jaxdl.detection.coco`, equal to pycocotools): the twelve numbers of its
summary, AP map50_95 (IoU .50:.05:.95), map50, map75, map_small, map_medium,
map_large and AR mar_1, mar_10, mar_100, mar_small, mar_medium, mar_large
(-1 where a range has no objects), with crowds as ignore regions and the
annotations' areas deciding the size ranges (default w*h, in the evaluated
image's pixels). The best checkpoint is the one with the highest validation
map50_95. Each image's loss is its share of the batch loss (see the losses):
under jit the batch is the global batch; under pmap each device's shard, as
ultralytics normalises per GPU under DDP.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdl.detection.coco import STAT_NAMES, coco_map
from jaxdl.detection.heads import HEADS, DetectionHead
from jaxdl.detection.nms import postprocess
from jaxdl.errors import check_at_least, check_choice, check_fraction
from jaxdl.tasks.base import ImagePrediction, Task


@flax.struct.dataclass
class Outputs:
    """A detector's raw outputs and the (height, width) of the images they are for (a pytree; the size is static)."""

    raw: jax.Array
    image_hw: tuple[int, int] = flax.struct.field(pytree_node=False)


class Detection(Task):
    """Detection of `num_classes` classes from a model whose output format is `head` (see the module).

    Loss and decoding need the model's head: `for_model(model)` (or `with_head`)
    returns the task bound to it.
    """

    target_kinds = ("objects",)
    best_metric = "map50_95"
    maximized = frozenset(STAT_NAMES)
    metric_names = ("loss", *STAT_NAMES)
    host_evaluator = True

    def __init__(
        self,
        num_classes: int,
        head: str = "yolov8",
        *,
        score_threshold: float = 0.001,
        iou_threshold: float = 0.7,
        max_detections: int = 300,
    ):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {sorted(HEADS)}, got '{head}'")
        self.num_classes, self.head = int(num_classes), head
        self.score_threshold, self.iou_threshold = float(score_threshold), float(iou_threshold)
        self.max_detections = int(max_detections)
        self.model_head: DetectionHead | None = None

    @classmethod
    def from_config(cls, task: ml_collections.ConfigDict, dataset: ml_collections.ConfigDict) -> Detection:
        check_at_least("task.num_classes", task.num_classes, 1)
        check_choice("task.head", task.head, sorted(HEADS))
        check_fraction("task.score_threshold", task.score_threshold)
        check_fraction("task.iou_threshold", task.iou_threshold)
        check_at_least("task.max_detections", task.max_detections, 1)
        return cls(
            task.num_classes,
            task.head,
            score_threshold=task.score_threshold,
            iou_threshold=task.iou_threshold,
            max_detections=task.max_detections,
        )

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    @property
    def model_output(self) -> str:
        """The output format the model must give (the name of its `detection_head()`)."""
        return self.head

    def with_head(self, head: DetectionHead) -> Detection:
        """This task with `head`'s loss and decoding; `head` must be of the declared format."""
        if head.name != self.head:
            raise ValueError(f"the task decodes '{self.head}' outputs, not the '{head.name}' of {head}")
        bound = copy.copy(self)
        bound.model_head = head
        return bound

    def for_model(self, model: Any) -> Detection:
        """This task bound to `model`'s head (its reg_max, strides or boxes per cell)."""
        return self.with_head(model.detection_head())

    @property
    def _head(self) -> DetectionHead:
        if self.model_head is None:
            raise RuntimeError("the detection task has no model head yet: use task.for_model(model)")
        return self.model_head

    def targets(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        truth = self._truth(batch)
        # The loss learns objects only: a crowd region is no box to regress (ultralytics drops crowds too).
        return {"boxes": truth["boxes"], "classes": truth["classes"], "valid": truth["valid"] & ~truth["crowd"]}

    def _truth(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Every annotated box with its crowd flag and, where the dataset has them, areas (COCO's ground truth)."""
        valid = jnp.asarray(batch["box_valid"]) > 0
        truth = {
            "boxes": jnp.asarray(batch["boxes"], jnp.float32),
            "classes": jnp.asarray(batch["target"]).astype(jnp.int32),
            "valid": valid,
            "crowd": jnp.asarray(batch["box_crowd"]) > 0 if "box_crowd" in batch else jnp.zeros_like(valid),
        }
        if "box_area" in batch:
            truth["area"] = jnp.asarray(batch["box_area"], jnp.float32)
        return truth

    def transform_outputs(self, outputs: jax.Array, inputs: jax.Array) -> Outputs:
        return Outputs(outputs, tuple(int(n) for n in inputs.shape[1:3]))

    def _loss(self, outputs: Outputs, targets: Mapping[str, jax.Array]) -> tuple[jax.Array, dict]:
        return self._head.loss(outputs.raw, targets, outputs.image_hw, num_classes=self.num_classes)

    def loss(self, outputs: Outputs, targets: Mapping[str, jax.Array]) -> jax.Array:
        return self._loss(outputs, targets)[0]

    def loss_terms(self, outputs: Outputs, targets: Mapping[str, jax.Array]) -> tuple[jax.Array, dict]:
        per_example, parts = self._loss(outputs, targets)
        # A part is a batch value or one per image; as a column its batch mean is the batch's value.
        return per_example, {f"{k}_loss": jnp.full_like(per_example, v) for k, v in parts.items()}

    def metrics(self, outputs: Outputs, targets: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        return {"loss": self.loss(outputs, targets)}

    def eval_sums(self, outputs: Outputs, targets: Mapping[str, jax.Array], mask: jax.Array) -> dict[str, jax.Array]:
        return {"loss": jnp.sum(self.loss(outputs, targets) * mask), "count": jnp.sum(mask)}

    def decode(self, outputs: Outputs) -> tuple[jax.Array, jax.Array]:
        """Every candidate box [B, N, 4] (x0, y0, x1, y1 in pixels, clipped to the image) and its scores [B, N, C]."""
        boxes, scores = self._head.decode(outputs.raw, outputs.image_hw, num_classes=self.num_classes)
        h, w = outputs.image_hw
        return jnp.clip(boxes, 0, jnp.asarray([w, h, w, h], boxes.dtype)), scores

    def detections(self, outputs: Outputs, multi_label: bool = False) -> dict[str, jax.Array]:
        """The kept detections of every image: boxes [B, M, 4], scores, classes, valid [B, M].

        With `multi_label` every (box, class) pair above the threshold is a
        candidate, as ultralytics validates; otherwise each box's best class,
        as it predicts.
        """
        boxes, scores = self.decode(outputs)
        return postprocess(
            boxes,
            scores,
            score_threshold=self.score_threshold,
            iou_threshold=self.iou_threshold,
            max_detections=self.max_detections,
            multi_label=multi_label,
        )

    def host_values(self, outputs: Outputs, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        found = self.detections(outputs, multi_label=True)
        truth = self._truth(batch)
        return {
            **{f"pred_{k}": v for k, v in found.items()},
            **{f"true_{k}": v for k, v in truth.items()},
        }

    def host_metrics(self, values: Mapping[str, np.ndarray]) -> dict[str, float]:
        predictions = {k[len("pred_") :]: v for k, v in values.items() if k.startswith("pred_")}
        truth = {k[len("true_") :]: v for k, v in values.items() if k.startswith("true_")}
        return coco_map(predictions, truth)

    displays_predictions = True

    def prediction_fit(self, height: int, width: int) -> str:
        """Letterboxed to the trained square, as Ultralytics' predict does (a non-square input: resized)."""
        if height == width:
            return f"letterbox(size={height})"
        return f"resize(size=({height}, {width}))"

    def describe_prediction(
        self,
        prediction: ImagePrediction,
        out: Path,
        *,
        class_names: Sequence[str] | None = None,
        top: int = 5,
        score_threshold: float = 0.25,
    ) -> dict:
        """The kept boxes scoring >= `score_threshold`, in the file's pixels; draws them in OUT/<stem>_boxes.png.

        Boxes found on the model's input are taken back to the file through
        `prediction.to_image` (the eval transforms' resize or letterbox undone).
        """
        from jaxdl import display

        del top
        model_input = np.asarray(prediction.model_input)[None]
        found = self.detections(self.transform_outputs(jnp.asarray(prediction.outputs)[None], model_input))
        found = {k: np.asarray(v)[0] for k, v in found.items()}
        keep = found["valid"] & (found["scores"] >= score_threshold)
        scale, shift = prediction.to_image
        h, w = prediction.image.shape[:2]
        boxes = np.clip(found["boxes"][keep] * np.tile(scale, 2) + np.tile(shift, 2), 0, [w, h, w, h])
        detections = []
        for box, c, p in zip(boxes, found["classes"][keep], found["scores"][keep], strict=True):
            detection = {"class": int(c), "score": round(float(p), 4), "box": [round(float(v), 2) for v in box]}
            if class_names is not None:
                detection["name"] = display.label(int(c), class_names)
            detections.append(detection)
        boxes_path = out / f"{prediction.path.stem}_boxes.png"
        display.draw_boxes(prediction.image, detections, self.num_classes, class_names).save(boxes_path)
        return {"detections": detections, "boxes_image": str(boxes_path)}
