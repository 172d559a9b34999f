"""The task-aligned assigner of TOOD (Feng et al., 2021, https://arxiv.org/abs/2108.07755), as YOLOv8 uses it.

For every ground truth g and anchor a of an image:

1. candidates: anchors whose point lies strictly inside g (eps = 1e-9), where a
   side of g shorter than `min_gt_side` (ultralytics: the second stride, 16) is
   first widened to it about the box centre;
2. overlap u_ga = max(CIoU(g, predicted box of a), 0) and alignment
   t_ga = s_ga^alpha * u_ga^beta, s_ga the predicted probability of g's class;
   both are 0 outside the candidates;
3. the top-k anchors of g by t (over all anchors) that are candidates are its
   positives;
4. an anchor positive for several ground truths keeps only the one it overlaps
   most (argmax over all ground truths of u, first on ties); with `topk2`
   (< topk), each ground truth then keeps only its `topk2` best positives by t;
5. an anchor's target is one-hot(class of its ground truth) times
   max_g (t_ga * max_a' u_ga' / (max_a' t_ga' + eps)) over its positives,
   the alignment normalised so that each ground truth's best anchor gets its
   best IoU; background anchors get 0.

Behaviour matches ultralytics 8.4.190 `TaskAlignedAssigner` (`utils/tal.py`) with
fixed shapes: ground truths are padded to G per image and `gt_valid` marks the
real ones (ultralytics pads with zero boxes and finds them by a zero sum). Runs
under jit; no data-dependent shapes.

Ties. Step 3 ranks by t, and every non-candidate anchor (and every candidate
whose CIoU is <= 0) has t = 0 exactly. When a ground truth has fewer than top-k
anchors with t > 0, the rest of its top k is filled with such zeros:
`jax.lax.top_k` takes the lowest anchor indices, torch's CPU `topk` an
unspecified set (in practice often anchors next to the ones it selected, i.e.
inside the box). A candidate with t = 0 that one picks and the other does not is
foreground in one and background in the other, with a target score of 0 either
way, so the loss and its gradient do not change; only `fg_mask` /
`target_gt_idx` of such zero-score anchors differ. The one exception: if that
anchor is also a positive of a second ground truth, the pick makes it
multi-assigned, and step 4 may hand it to a third ground truth it overlaps more
(a candidate of it outside its top k), changing its target. Exactly equal positive t values, and
exactly equal overlaps in step 4, go to the lower index here (torch: unspecified).
Step 4 ignores padded ground truths in its argmax, which matters only if a
padding slot precedes a real ground truth (ultralytics always pads at the end).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxdl.detection.boxes import bbox_iou, xywh_to_xyxy, xyxy_to_xywh


class Assignment(NamedTuple):
    """Targets of every anchor; background anchors have fg_mask False and zero target_scores."""

    target_classes: jax.Array  # [B, A] int32 (the class of gt target_gt_idx, also for background)
    target_boxes: jax.Array  # [B, A, 4] xyxy, the assigned ground truth's box
    target_scores: jax.Array  # [B, A, C] one-hot class x normalised alignment
    fg_mask: jax.Array  # [B, A] bool
    target_gt_idx: jax.Array  # [B, A] int32 index into the G ground truths (0 for background)


def _topk_mask(metric: jax.Array, k: int) -> jax.Array:
    """Boolean [..., A]: True at the k largest entries of each row (lowest index first on ties)."""
    k = min(k, metric.shape[-1])
    _, idx = jax.lax.top_k(metric, k)
    flat = metric.reshape(-1, metric.shape[-1])
    rows = jnp.arange(flat.shape[0])[:, None]
    mask = jnp.zeros(flat.shape, bool).at[rows, idx.reshape(flat.shape[0], k)].set(True)
    return mask.reshape(metric.shape)


def candidates_in_gts(
    points: jax.Array, gt_boxes: jax.Array, gt_valid: jax.Array, min_gt_side: float = 16.0, eps: float = 1e-9
) -> jax.Array:
    """[B, G, A]: anchor points [A, 2] strictly inside the valid gt boxes [B, G, 4], sides widened to min_gt_side."""
    xywh = xyxy_to_xywh(gt_boxes)
    wh = xywh[..., 2:]
    wh = jnp.where((wh < min_gt_side) & gt_valid[..., None], jnp.asarray(min_gt_side, wh.dtype), wh)
    boxes = xywh_to_xyxy(jnp.concatenate([xywh[..., :2], wh], axis=-1))[:, :, None, :]  # [B, G, 1, 4]
    x, y = points[:, 0], points[:, 1]
    inside = (x - boxes[..., 0] > eps) & (y - boxes[..., 1] > eps)
    inside &= (boxes[..., 2] - x > eps) & (boxes[..., 3] - y > eps)
    return inside & gt_valid[..., None]


def task_aligned_assign(
    scores: jax.Array,
    pred_boxes: jax.Array,
    points: jax.Array,
    gt_boxes: jax.Array,
    gt_classes: jax.Array,
    gt_valid: jax.Array,
    *,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
    eps: float = 1e-9,
    min_gt_side: float = 16.0,
    topk2: int | None = None,
) -> Assignment:
    """Assign ground truths to anchors (see the module docstring). No gradient flows through the result.

    Args:
      scores: [B, A, C] predicted class probabilities (after the sigmoid).
      pred_boxes: [B, A, 4] predicted xyxy boxes, in the units of gt_boxes (pixels).
      points: [A, 2] anchor points (x, y) in the same units.
      gt_boxes: [B, G, 4] xyxy ground-truth boxes; padding may hold anything.
      gt_classes: [B, G] int class ids in [0, C).
      gt_valid: [B, G] bool, False for padding.
      topk, alpha, beta, eps: TOOD's k, alpha, beta and the normalisation eps (ultralytics' defaults for YOLOv8).
      min_gt_side: sides shorter than this are widened to it when selecting candidates (ultralytics: strides[1]).
      topk2: if given and != topk, each ground truth keeps at most topk2 positives after step 4.
    """
    scores, pred_boxes, gt_boxes = (jax.lax.stop_gradient(x) for x in (scores, pred_boxes, gt_boxes))
    batch, num_anchors, num_classes = scores.shape
    num_gt = gt_boxes.shape[1]
    if num_gt == 0:
        return Assignment(
            jnp.full((batch, num_anchors), num_classes, jnp.int32),
            jnp.zeros_like(pred_boxes),
            jnp.zeros_like(scores),
            jnp.zeros((batch, num_anchors), bool),
            jnp.zeros((batch, num_anchors), jnp.int32),
        )
    valid = gt_valid.astype(bool)
    gt_boxes = jnp.where(valid[..., None], gt_boxes, 0).astype(pred_boxes.dtype)
    gt_classes = jnp.where(valid, gt_classes, 0).astype(jnp.int32)

    candidates = candidates_in_gts(points, gt_boxes, valid, min_gt_side)  # [B, G, A]
    class_scores = jnp.take_along_axis(jnp.swapaxes(scores, 1, 2), gt_classes[..., None], axis=1)  # [B, G, A]
    ciou = bbox_iou(gt_boxes[:, :, None, :], pred_boxes[:, None, :, :], ciou=True)
    overlaps = jnp.where(candidates, jnp.clip(ciou, 0.0), 0.0)
    align = jnp.where(candidates, class_scores**alpha * overlaps**beta, 0.0)

    mask_pos = _topk_mask(align, topk) & candidates  # [B, G, A]

    # An anchor positive for several ground truths keeps the one it overlaps most.
    multi = mask_pos.sum(axis=1) > 1  # [B, A]
    best_gt = jnp.argmax(jnp.where(valid[..., None], overlaps, -1.0), axis=1)  # [B, A]
    is_best = jnp.arange(num_gt)[None, :, None] == best_gt[:, None, :]
    mask_pos = jnp.where(multi[:, None, :], is_best, mask_pos)
    if topk2 is not None and topk2 != topk:
        mask_pos &= _topk_mask(jnp.where(mask_pos, align, 0.0), topk2)

    fg_mask = mask_pos.any(axis=1)
    target_gt_idx = jnp.argmax(mask_pos, axis=1).astype(jnp.int32)  # [B, A]
    target_classes = jnp.take_along_axis(gt_classes, target_gt_idx, axis=1)
    target_boxes = jnp.take_along_axis(gt_boxes, target_gt_idx[..., None], axis=1)

    # Normalised alignment: t * (the gt's best IoU) / (the gt's best t), over the positives.
    align = jnp.where(mask_pos, align, 0.0)
    best_align = align.max(axis=-1, keepdims=True)
    best_overlap = jnp.where(mask_pos, overlaps, 0.0).max(axis=-1, keepdims=True)
    norm_align = (align * best_overlap / (best_align + eps)).max(axis=1)  # [B, A]
    one_hot = jax.nn.one_hot(target_classes, num_classes, dtype=scores.dtype)
    target_scores = one_hot * jnp.where(fg_mask, norm_align, 0.0)[..., None]
    return Assignment(target_classes, target_boxes, target_scores, fg_mask, target_gt_idx)
