"""Object detection: boxes with classes, trained with a detector's own loss, scored by COCO mAP.

Targets are a batch's objects (`config.dataset.target_kind = "objects"`, see
jaxdl.data.objects): class ids `target` [B, G], pixel boxes `boxes` [B, G, 4]
(x0, y0, x1, y1) and `box_valid` [B, G]. `task.head` names the model's output
format and so the loss and the decoding:

- `yolov8` (YOLOv8, YOLO11): raw [B, A, 4 * 16 + C] over the anchor points of
  strides 8, 16, 32; the loss is ultralytics' v8 detection loss (task-aligned
  assigner, CIoU, DFL, BCE; `jaxdl.detection.loss`), boxes are DFL-decoded;
- `yolov1`: [B, S, S, 5 B + C]; the loss is the paper's sum-squared error
  (`jaxdl.detection.yolov1`), boxes are its cells' predictors.

Evaluation decodes the outputs, takes every (box, class) pair scoring above
`task.score_threshold` as a candidate, applies class-aware NMS at
`task.iou_threshold` and keeps at most `task.max_detections` per image, all on
device (`jaxdl.detection.nms`), as ultralytics validates. The host gathers every image's detections and
objects, from every process, and scores them by the COCO protocol
(`jaxdl.detection.coco`, equal to pycocotools): map50_95 (AP at IoU .50:.05:.95),
map50 and map75. The best checkpoint is the one with the highest validation
map50_95. Each image's loss is its share of the batch loss (see the losses):
under jit the batch is the global batch; under pmap each device's shard, as
ultralytics normalises per GPU under DDP.
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdl.detection import boxes as box_ops
from jaxdl.detection import yolov1
from jaxdl.detection.coco import coco_map
from jaxdl.detection.loss import yolov8_loss
from jaxdl.detection.nms import postprocess
from jaxdl.errors import ConfigError, check_at_least, check_choice, check_fraction
from jaxdl.tasks.base import Task

HEADS = ("yolov8", "yolov1")


@flax.struct.dataclass
class Outputs:
    """A detector's raw outputs and the (height, width) of the images they are for (a pytree; the size is static)."""

    raw: jax.Array
    image_hw: tuple[int, int] = flax.struct.field(pytree_node=False)


class Detection(Task):
    """Detection of `num_classes` classes with a `head` of HEADS (see the module)."""

    best_metric = "map50_95"
    maximized = frozenset({"map50_95", "map50", "map75"})
    metric_names = ("loss", "map50_95", "map50", "map75")
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
            raise ValueError(f"head must be one of {HEADS}, got '{head}'")
        self.num_classes, self.head = int(num_classes), head
        self.score_threshold, self.iou_threshold = float(score_threshold), float(iou_threshold)
        self.max_detections = int(max_detections)

    @classmethod
    def from_config(cls, task: ml_collections.ConfigDict, dataset: ml_collections.ConfigDict) -> Detection:
        if dataset.target_kind != "objects":
            raise ConfigError(
                f"config.task.name='detection' needs objects as targets: set config.dataset.target_kind='objects' "
                f"(it is '{dataset.target_kind}')"
            )
        check_at_least("task.num_classes", task.num_classes, 1)
        check_choice("task.head", task.head, HEADS)
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
        """The output format the model must declare (its `detection_head`)."""
        return self.head

    def targets(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        return {
            "boxes": jnp.asarray(batch["boxes"], jnp.float32),
            "classes": jnp.asarray(batch["target"]).astype(jnp.int32),
            "valid": jnp.asarray(batch["box_valid"]) > 0,
        }

    def transform_outputs(self, outputs: jax.Array, inputs: jax.Array) -> Outputs:
        return Outputs(outputs, tuple(int(n) for n in inputs.shape[1:3]))

    def _loss(self, outputs: Outputs, targets: Mapping[str, jax.Array]) -> tuple[jax.Array, dict]:
        if self.head == "yolov8":
            return yolov8_loss(outputs.raw, targets, outputs.image_hw, num_classes=self.num_classes)
        return yolov1.yolov1_loss(
            outputs.raw,
            targets,
            outputs.image_hw,
            num_classes=self.num_classes,
            boxes_per_cell=self._boxes_per_cell(outputs),
        )

    def _boxes_per_cell(self, outputs: Outputs) -> int:
        """YOLOv1's B, from its channels 5 B + C."""
        return (outputs.raw.shape[-1] - self.num_classes) // 5

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
        if self.head == "yolov8":
            boxes, scores = box_ops.decode(outputs.raw, outputs.image_hw)
        else:
            boxes, scores = yolov1.yolov1_decode(
                outputs.raw,
                outputs.image_hw,
                num_classes=self.num_classes,
                boxes_per_cell=self._boxes_per_cell(outputs),
            )
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
        truth = self.targets(batch)
        return {
            **{f"pred_{k}": v for k, v in found.items()},
            **{f"true_{k}": v for k, v in truth.items()},
        }

    def host_metrics(self, values: Mapping[str, np.ndarray]) -> dict[str, float]:
        predictions = {k[len("pred_") :]: v for k, v in values.items() if k.startswith("pred_")}
        truth = {k[len("true_") :]: v for k, v in values.items() if k.startswith("true_")}
        return coco_map(predictions, truth)
