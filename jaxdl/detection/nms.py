"""Greedy non-maximum suppression (NMS) with fixed shapes, for `jax.jit` and `jax.vmap`.

Greedy NMS, as torchvision's `nms` / `batched_nms` define it:

1. Order the candidates by score, highest first; equal scores keep their index
   order (lower index first), as a stable sort does.
2. Walk that order: a candidate not yet suppressed is kept, and it suppresses
   every later candidate of the same class whose IoU with it is > iou_threshold
   (strictly greater: IoU == iou_threshold survives). Boxes of different
   classes never suppress each other; without classes, all boxes are one class.

IoU = intersection / (area_i + area_j - intersection) on (x0, y0, x1, y1)
boxes, with area = (x1 - x0) * (y1 - y0) (no +1), in float32 (float64 boxes
stay float64). Two empty boxes have IoU 0/0 = NaN, which suppresses nothing.
The computed IoU is compared with the threshold as the exact number given, as
torchvision compares its float IoU with a double threshold: a float32 IoU of
0.3 (0.30000001) exceeds 0.3. That holds for a Python-number threshold (keep it
static under jit); a traced threshold is rounded to the IoU's dtype first.
torchvision makes `batched_nms` class-aware by offsetting each class's boxes
far apart; here the IoU of boxes of different classes is masked instead, so
within a class the IoU is the plain one.

Fixed shapes: only the `max_candidates` (K) highest-scoring valid boxes take
part (`lax.top_k`, ties to the lower index); with more valid boxes than K the
rest are dropped before NMS, a bound like ultralytics' `max_nms` (30000). The
greedy pass is a `lax.while_loop` whose step jumps to the next unsuppressed
candidate, keeps it and suppresses with its row of IoUs, computed on the fly:
O(K) memory per image (no K x K matrix) and one step per kept box, stopping
once `max_detections` are kept, so O(max_detections * K) work.

`postprocess` turns a detector's dense outputs (boxes [B, A, 4], class
probabilities [B, A, C] for A anchors) into at most `max_detections` boxes per
image, as ultralytics' `non_max_suppression` does with its validation settings
(conf 0.001, iou 0.7, max_det 300, class-aware): candidates have a probability
> score_threshold (strictly, as ultralytics), then class-aware NMS. By default
a candidate is each anchor's best class (ultralytics' prediction mode);
`multi_label=True` makes every (anchor, class) pair above the threshold a
candidate, as ultralytics' validator does (slightly higher mAP).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

DEFAULT_MAX_CANDIDATES = 4096


def _iou_row(box: jax.Array, boxes: jax.Array) -> jax.Array:
    """IoU [K] of one (x0, y0, x1, y1) box with each of `boxes` [K, 4], in torchvision's arithmetic."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    w = jnp.maximum(jnp.minimum(box[2], boxes[:, 2]) - jnp.maximum(box[0], boxes[:, 0]), 0)
    h = jnp.maximum(jnp.minimum(box[3], boxes[:, 3]) - jnp.maximum(box[1], boxes[:, 1]), 0)
    inter = w * h
    return inter / (area + areas - inter)


def _threshold(iou_threshold, dtype) -> jax.Array:
    """The threshold in `dtype`, so that `iou > result` exactly when `iou > iou_threshold` as real numbers.

    The largest `dtype` value <= a Python-number threshold; a traced threshold is just cast.
    """
    if isinstance(iou_threshold, int | float | np.floating | np.integer):
        value = np.asarray(iou_threshold, dtype)
        if float(value) > float(iou_threshold):
            value = np.nextafter(value, np.asarray(-np.inf, dtype))
        return jnp.asarray(value, dtype)
    return jnp.asarray(iou_threshold, dtype)


def _greedy(
    boxes: jax.Array, classes: jax.Array, valid: jax.Array, iou_threshold, max_detections: int
) -> tuple[jax.Array, jax.Array]:
    """Greedy NMS over candidates already in descending score order.

    Returns the positions [max_detections] of the kept candidates, in order,
    and a mask of which of those slots hold one (the rest are 0, False).
    """
    k = valid.shape[0]
    position = jnp.arange(k)
    iou_threshold = _threshold(iou_threshold, boxes.dtype)

    def next_after(keep, i):
        later = keep & (position > i)
        return jnp.where(jnp.any(later), jnp.argmax(later), k)

    def cond(state):
        i, _, count = state
        return (i < k) & (count < max_detections)

    def body(state):
        i, keep, count = state
        suppressed = (_iou_row(boxes[i], boxes) > iou_threshold) & (classes == classes[i]) & (position > i)
        keep = keep & ~suppressed
        return next_after(keep, i), keep, count + 1

    first = jnp.where(jnp.any(valid), jnp.argmax(valid), k)
    i, keep, count = lax.while_loop(cond, body, (first, valid, jnp.zeros((), jnp.int32)))
    # Candidates from `i` on were never reached (the count was full): those before `i` are the kept ones.
    kept = keep & (position < i)
    (slots,) = jnp.nonzero(kept, size=max_detections, fill_value=0)
    return slots.astype(jnp.int32), jnp.arange(max_detections) < count


def _float_boxes(boxes) -> jax.Array:
    """Boxes in float32 (float64 stays): IoUs of integer or half-precision boxes are computed in float32."""
    boxes = jnp.asarray(boxes)
    return boxes if boxes.dtype in (jnp.float32, jnp.float64) else boxes.astype(jnp.float32)


def _top_candidates(scores: jax.Array, valid: jax.Array, max_candidates: int | None) -> tuple[jax.Array, jax.Array]:
    """Indices [K] of the K highest valid scores (descending, ties by index) and whether each is valid."""
    k = scores.shape[0] if max_candidates is None else min(int(max_candidates), scores.shape[0])
    masked = jnp.where(valid, scores, -jnp.inf)
    _, order = lax.top_k(masked, k)
    return order, valid[order]


def nms(
    boxes: jax.Array,
    scores: jax.Array,
    iou_threshold: float | jax.Array,
    max_detections: int,
    valid: jax.Array | None = None,
    classes: jax.Array | None = None,
    *,
    max_candidates: int | None = DEFAULT_MAX_CANDIDATES,
) -> tuple[jax.Array, jax.Array]:
    """Greedy, optionally class-aware NMS of one image's boxes (see the module docstring).

    Args:
      boxes: [N, 4] (x0, y0, x1, y1).
      scores: [N].
      iou_threshold: a box is suppressed by a kept one when their IoU is > this.
      max_detections: the number of output slots M (static).
      valid: [N] bool, False for boxes that take no part (padding); default all.
      classes: [N] int; boxes of different classes never suppress each other.
      max_candidates: K, only the K highest valid scores take part (static);
        None for all N.

    Returns:
      indices [M] int32 into `boxes` of the kept boxes, in descending score
      order, and keep [M] bool, False on the padding slots (whose index is 0).
      Like `torchvision.ops.batched_nms(...)[:M]` on the valid boxes.
    """
    n = boxes.shape[0]
    if n == 0:
        return jnp.zeros((max_detections,), jnp.int32), jnp.zeros((max_detections,), bool)
    valid = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid, bool)
    classes = jnp.zeros((n,), jnp.int32) if classes is None else jnp.asarray(classes)
    order, valid_sorted = _top_candidates(jnp.asarray(scores), valid, max_candidates)
    slots, keep = _greedy(_float_boxes(boxes)[order], classes[order], valid_sorted, iou_threshold, max_detections)
    return jnp.where(keep, order[slots], 0).astype(jnp.int32), keep


def _postprocess_image(boxes, scores, score_threshold, iou_threshold, max_detections, max_candidates, multi_label):
    num_classes = scores.shape[-1]
    if multi_label:
        flat = scores.reshape(-1)
        order, valid = _top_candidates(flat, flat > score_threshold, max_candidates)
        anchor, classes = order // num_classes, order % num_classes
        candidate_scores = flat[order]
    else:
        best, best_class = jnp.max(scores, axis=-1), jnp.argmax(scores, axis=-1)
        order, valid = _top_candidates(best, best > score_threshold, max_candidates)
        anchor, classes = order, best_class[order]
        candidate_scores = best[order]
    candidate_boxes = boxes[anchor]
    slots, keep = _greedy(candidate_boxes, classes, valid, iou_threshold, max_detections)
    return {
        "boxes": jnp.where(keep[:, None], candidate_boxes[slots], 0),
        "scores": jnp.where(keep, candidate_scores[slots], 0),
        "classes": jnp.where(keep, classes[slots], 0).astype(jnp.int32),
        "valid": keep,
    }


def postprocess(
    boxes: jax.Array,
    scores: jax.Array,
    *,
    score_threshold: float = 0.001,
    iou_threshold: float = 0.7,
    max_detections: int = 300,
    max_candidates: int | None = DEFAULT_MAX_CANDIDATES,
    multi_label: bool = False,
) -> dict[str, jax.Array]:
    """A batch's detections: score threshold, then class-aware greedy NMS, per image.

    Args:
      boxes: [B, A, 4] (x0, y0, x1, y1) in pixels, one box per anchor.
      scores: [B, A, C] class probabilities.
      score_threshold: candidates need a probability > this.
      iou_threshold: NMS suppresses a box of the same class with IoU > this.
      max_detections: M output slots per image (static).
      max_candidates: K, only the K best candidates per image go into NMS (static); None for all.
      multi_label: False: one candidate per anchor, its best class (ties to the
        lower class id). True: every (anchor, class) with a probability above
        the threshold is a candidate, as ultralytics' validator does (a slightly
        higher mAP); candidates are then ordered anchor-major for equal scores.

    Returns:
      dict of boxes [B, M, 4], scores [B, M], classes [B, M] int32 and valid
      [B, M] bool; detections in descending score order, padding slots are
      zero and not valid. Works under `jax.jit`.
    """
    scores = jnp.asarray(scores)
    if scores.ndim != 3 or boxes.shape[:2] != scores.shape[:2] or boxes.shape[-1] != 4:
        raise ValueError(f"expected boxes [B, A, 4] and scores [B, A, C], got {boxes.shape} and {scores.shape}")

    def one(b, s):
        return _postprocess_image(
            b, s, score_threshold, iou_threshold, int(max_detections), max_candidates, bool(multi_label)
        )

    return jax.vmap(one)(_float_boxes(boxes), scores)
