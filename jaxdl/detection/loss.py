"""The YOLOv8 / YOLO11 training loss, equal to ultralytics 8.4.190 `v8DetectionLoss`.

The anchors' targets come from the task-aligned assigner
(`jaxdl.detection.assigner`, fed the predictions without gradient). With
q [B, A, C] the assigner's target scores (one-hot class x normalised alignment,
0 on background), w_a = sum_c q_ac, fg the foreground anchors and
S = max(sum q, 1) over the whole batch:

- cls = sum over all anchors and classes of BCE(logit_ac, q_ac) / S;
- box = sum_{a in fg} w_a (1 - CIoU(predicted box_a, target box_a)) / S, boxes in
  grid units of the anchor's stride;
- dfl = sum_{a in fg} w_a DFL_a / S, where DFL_a is the mean over the four sides of
  -(w_l log p_l + w_r log p_r), p the softmax over the reg_max bins, the target
  distance d (grid units, clipped to [0, reg_max - 1 - 0.01]) split between its
  bins l = floor(d), r = l + 1 with weights w_l = r - d, w_r = d - l
  (Distribution Focal Loss, https://arxiv.org/abs/2006.04388). With reg_max=1
  (distances predicted directly) this term is ultralytics' "l1" instead:
  sum_{a in fg} w_a mean_side |d_pred - d_target| * stride / image side / S,
  the side distances as fractions of the image's width (left, right) or height.

The batch loss is gains . (box, cls, dfl) (ultralytics' hyperparameters box=7.5,
cls=0.5, dfl=1.5); ultralytics back-propagates it times the batch size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxdl.detection.assigner import task_aligned_assign
from jaxdl.detection.boxes import DEFAULT_STRIDES, bbox2dist, bbox_iou, dfl_expectation, dist2bbox, make_anchors


def bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Elementwise binary cross-entropy of sigmoid(logits) against soft targets in [0, 1]."""
    return jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def dfl_loss(raw_box: jax.Array, target: jax.Array, reg_max: int = 16) -> jax.Array:
    """Distribution Focal Loss [...], mean over the 4 sides, of logits [..., 4 * reg_max] for distances [..., 4].

    `target` (grid units) is clipped to [0, reg_max - 1 - 0.01].
    """
    log_p = jax.nn.log_softmax(raw_box.reshape(*raw_box.shape[:-1], 4, reg_max), axis=-1)
    target = jnp.clip(target, 0.0, reg_max - 1 - 0.01)
    left = jnp.floor(target).astype(jnp.int32)
    w_left = (left + 1) - target
    w_right = 1 - w_left
    log_left = jnp.take_along_axis(log_p, left[..., None], axis=-1)[..., 0]
    log_right = jnp.take_along_axis(log_p, left[..., None] + 1, axis=-1)[..., 0]
    return -(log_left * w_left + log_right * w_right).mean(axis=-1)


def yolov8_loss(
    raw: jax.Array,
    targets: Mapping[str, jax.Array],
    image_hw: Sequence[int],
    *,
    num_classes: int,
    reg_max: int = 16,
    strides: Sequence[int] = DEFAULT_STRIDES,
    gains: Sequence[float] = (7.5, 0.5, 1.5),
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
    topk2: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """YOLOv8 loss of raw predictions against padded ground truths.

    Args:
      raw: [B, A, 4 * reg_max + num_classes]: per anchor (in `make_anchors` order)
        the DFL logits of (left, top, right, bottom) (channel side * reg_max + bin),
        then the class logits.
      targets: "boxes" [B, G, 4] xyxy in input pixels, "classes" [B, G] int in
        [0, num_classes), "valid" [B, G] bool (False for padding).
      image_hw: the input's (height, width) in pixels (multiples of max(strides)).
      gains: the (box, cls, dfl) weights.
      topk, alpha, beta, topk2: the task-aligned assigner's parameters.

    Returns:
      per_example [B]: each example's share of the batch loss (its anchors' terms
        over the batch-wide S) times B, so per_example.mean() is the batch loss;
      parts: {"box", "cls", "dfl"} ("l1" for "dfl" with reg_max=1) batch values, each
        times its gain (ultralytics' `loss_items`); their sum is the batch loss.

    Gradients flow only through `raw`; a batch without any valid box has only the
    cls term (all anchors background).
    """
    expected = 4 * reg_max + num_classes
    if raw.ndim != 3 or raw.shape[-1] != expected:
        raise ValueError(f"raw must be [B, A, {expected}] (4 * reg_max + num_classes), got {raw.shape}")
    points, stride = make_anchors(image_hw, strides)
    if raw.shape[1] != points.shape[0]:
        raise ValueError(f"raw has {raw.shape[1]} anchors, a {tuple(image_hw)} input has {points.shape[0]}")
    batch = raw.shape[0]
    raw = raw.astype(jnp.float32)
    raw_box, logits = raw[..., : 4 * reg_max], raw[..., 4 * reg_max :]
    pred_boxes = dist2bbox(dfl_expectation(raw_box, reg_max), points)  # grid units

    assigned = task_aligned_assign(
        jax.nn.sigmoid(logits),
        pred_boxes * stride,
        points * stride,
        jnp.asarray(targets["boxes"], jnp.float32),
        jnp.asarray(targets["classes"]),
        jnp.asarray(targets["valid"]),
        topk=topk,
        alpha=alpha,
        beta=beta,
        min_gt_side=float(strides[1] if len(strides) > 1 else strides[0]),
        topk2=topk2,
    )
    target_scores = jax.lax.stop_gradient(assigned.target_scores)
    fg = assigned.fg_mask
    target_boxes = jax.lax.stop_gradient(assigned.target_boxes) / stride  # grid units
    score_sum = jnp.maximum(target_scores.sum(), 1.0)

    cls = bce_with_logits(logits, target_scores).sum(axis=(1, 2))
    weight = target_scores.sum(axis=-1)  # [B, A], 0 on background
    ciou = bbox_iou(pred_boxes, target_boxes, ciou=True)
    box = jnp.where(fg, (1.0 - ciou) * weight, 0.0).sum(axis=-1)
    if reg_max > 1:
        distance = dfl_loss(raw_box, bbox2dist(points, target_boxes, reg_max - 1 - 0.01), reg_max)
    else:
        # No bins to spread a target over: ultralytics compares the sides in fractions of the image.
        height, width = (float(s) for s in image_hw)
        scale = stride / jnp.asarray([width, height, width, height], jnp.float32)
        distance = jnp.abs((raw_box - bbox2dist(points, target_boxes)) * scale).mean(axis=-1)
    dfl = jnp.where(fg, distance * weight, 0.0).sum(axis=-1)

    box_gain, cls_gain, dfl_gain = (float(g) for g in gains)
    parts = {
        "box": box_gain * box.sum() / score_sum,
        "cls": cls_gain * cls.sum() / score_sum,
        "dfl" if reg_max > 1 else "l1": dfl_gain * dfl.sum() / score_sum,
    }
    per_example = (box_gain * box + cls_gain * cls + dfl_gain * dfl) / score_sum * batch
    return per_example, parts
