"""Object detection in JAX: boxes, the YOLO losses, NMS and COCO mAP.

- `boxes`: anchor points, DFL decoding, box conversions, IoU and CIoU;
- `assigner`, `loss`: the task-aligned assigner and the YOLOv8/YOLO11 loss;
- `yolov1`: the YOLOv1 paper's loss and decoding;
- `heads`: a detector's output format as an object (its geometry, loss and decoding);
- `nms`: class-aware greedy NMS and post-processing with fixed output sizes (jit);
- `coco`: COCO box mAP on the host, equal to pycocotools.

Boxes are (x0, y0, x1, y1) in input pixels unless a name says otherwise. This
package imports only jax and numpy, so models, tasks and tools can all import it.
"""

from jaxdl.detection.assigner import Assignment, task_aligned_assign
from jaxdl.detection.boxes import (
    bbox2dist,
    bbox_iou,
    box_iou,
    decode,
    dfl_expectation,
    dist2bbox,
    make_anchors,
    xywh_to_xyxy,
    xyxy_to_xywh,
)
from jaxdl.detection.coco import coco_map
from jaxdl.detection.heads import HEADS, DetectionHead, YOLOv1Head, YOLOv8Head
from jaxdl.detection.loss import yolov8_loss
from jaxdl.detection.nms import postprocess
from jaxdl.detection.yolov1 import yolov1_decode, yolov1_loss

__all__ = [
    "HEADS",
    "Assignment",
    "DetectionHead",
    "bbox2dist",
    "bbox_iou",
    "box_iou",
    "coco_map",
    "decode",
    "dfl_expectation",
    "dist2bbox",
    "make_anchors",
    "postprocess",
    "task_aligned_assign",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
    "YOLOv1Head",
    "YOLOv8Head",
    "yolov1_decode",
    "yolov1_loss",
    "yolov8_loss",
]
