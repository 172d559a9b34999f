"""Box utilities for anchor-free detectors: anchor grids, distance <-> box, IoU and CIoU.

Boxes are (x0, y0, x1, y1) ("xyxy") or (cx, cy, w, h) ("xywh") in the last axis;
every function takes any leading batch axes. The anchor layout, the DFL decoding
and the CIoU follow ultralytics 8.4 (`ultralytics/utils/tal.py`, `metrics.py`),
so that `jaxdl.detection.loss` equals its `v8DetectionLoss`:

- anchors: the centre (i + 0.5, j + 0.5) of every cell of every stride's grid,
  level by level (smallest stride first), row-major within a level;
- a box is predicted as distances (left, top, right, bottom) from its anchor, in
  units of the anchor's stride; each distance is a distribution over the bins
  0 .. reg_max - 1 whose expectation is the distance (Distribution Focal Loss,
  Li et al., "Generalized Focal Loss", 2020, https://arxiv.org/abs/2006.04388);
- CIoU (Zheng et al., "Distance-IoU Loss", 2020, https://arxiv.org/abs/1911.08287)
  = IoU - rho^2 / c^2 - alpha v, with rho the distance between the centres, c
  the diagonal of the smallest enclosing box,
  v = 4 / pi^2 (atan(w2 / h2) - atan(w1 / h1))^2 and alpha = v / (1 - IoU + v),
  alpha treated as a constant for gradients.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_STRIDES = (8, 16, 32)


def grid_sizes(image_hw: Sequence[int], strides: Sequence[int] = DEFAULT_STRIDES) -> list[tuple[int, int]]:
    """The (height, width) of each stride's grid; the image sides must be multiples of every stride."""
    height, width = (int(s) for s in image_hw)
    sizes = []
    for stride in strides:
        if height % stride or width % stride:
            raise ValueError(f"image size {height}x{width} is not a multiple of stride {stride}")
        sizes.append((height // stride, width // stride))
    return sizes


def make_anchors(
    image_hw: Sequence[int], strides: Sequence[int] = DEFAULT_STRIDES, offset: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Anchor points of all levels: (points [A, 2] as (x, y) in grid units, stride [A, 1]), float32.

    Level l of stride s has (H / s) x (W / s) anchors at (x + offset, y + offset)
    for the cell (y, x), y major; A is the sum over the levels. A pixel position
    is points * stride.
    """
    points, stride_column = [], []
    for (h, w), stride in zip(grid_sizes(image_hw, strides), strides, strict=True):
        y, x = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
        points.append(np.stack([x.ravel(), y.ravel()], axis=-1) + np.float32(offset))
        stride_column.append(np.full((h * w, 1), stride, np.float32))
    return np.concatenate(points), np.concatenate(stride_column)


def dfl_expectation(raw_box: jax.Array, reg_max: int = 16) -> jax.Array:
    """Distances [..., 4] from distribution logits [..., 4 * reg_max] (channel = side * reg_max + bin).

    distance_side = sum_i i * softmax(logits_side)_i, in grid units, in [0, reg_max - 1].
    With reg_max=1 there is no distribution: the four channels are the distances
    (ultralytics' `Detect` then replaces its DFL by the identity).
    """
    if reg_max == 1:
        return raw_box
    logits = raw_box.reshape(*raw_box.shape[:-1], 4, reg_max)
    return jax.nn.softmax(logits, axis=-1) @ jnp.arange(reg_max, dtype=logits.dtype)


def dist2bbox(distance: jax.Array, points: jax.Array) -> jax.Array:
    """xyxy boxes from (left, top, right, bottom) distances to their points [..., 2] (same units)."""
    return jnp.concatenate([points - distance[..., :2], points + distance[..., 2:]], axis=-1)


def bbox2dist(points: jax.Array, boxes: jax.Array, max_dist: float | None = None) -> jax.Array:
    """(left, top, right, bottom) distances from points [..., 2] to the sides of xyxy boxes.

    With `max_dist`, the distances are clipped to [0, max_dist] (the DFL target
    uses reg_max - 1 - 0.01, so its upper bin stays inside the distribution).
    """
    distance = jnp.concatenate([points - boxes[..., :2], boxes[..., 2:] - points], axis=-1)
    if max_dist is not None:
        distance = jnp.clip(distance, 0.0, max_dist)
    return distance


def decode(
    raw: jax.Array, image_hw: Sequence[int], strides: Sequence[int] = DEFAULT_STRIDES, reg_max: int = 16
) -> tuple[jax.Array, jax.Array]:
    """YOLOv8 raw outputs [B, A, 4 * reg_max + nc] -> (boxes [B, A, 4] xyxy in pixels, scores [B, A, nc]).

    scores are the sigmoid of the class logits (independent per class).
    """
    points, stride = make_anchors(image_hw, strides)
    if raw.shape[-2] != points.shape[0]:
        raise ValueError(f"raw has {raw.shape[-2]} anchors, a {tuple(image_hw)} image has {points.shape[0]}")
    boxes = dist2bbox(dfl_expectation(raw[..., : 4 * reg_max], reg_max), points) * stride
    return boxes, jax.nn.sigmoid(raw[..., 4 * reg_max :])


def xyxy_to_xywh(boxes: jax.Array) -> jax.Array:
    """(x0, y0, x1, y1) -> (cx, cy, w, h)."""
    lo, hi = boxes[..., :2], boxes[..., 2:]
    return jnp.concatenate([(lo + hi) / 2, hi - lo], axis=-1)


def xywh_to_xyxy(boxes: jax.Array) -> jax.Array:
    """(cx, cy, w, h) -> (x0, y0, x1, y1)."""
    centre, half = boxes[..., :2], boxes[..., 2:] / 2
    return jnp.concatenate([centre - half, centre + half], axis=-1)


def box_area(boxes: jax.Array) -> jax.Array:
    """Areas [...] of xyxy boxes [..., 4] (negative sides are not clipped)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(a: jax.Array, b: jax.Array, eps: float = 1e-7) -> jax.Array:
    """Pairwise IoU [..., N, M] of xyxy boxes a [..., N, 4] and b [..., M, 4].

    IoU = |a ∩ b| / (|a| + |b| - |a ∩ b| + eps); eps keeps empty boxes at 0 instead of NaN.
    """
    lo = jnp.maximum(a[..., :, None, :2], b[..., None, :, :2])
    hi = jnp.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = jnp.clip(hi - lo, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (box_area(a)[..., :, None] + box_area(b)[..., None, :] - inter + eps)


def bbox_iou(a: jax.Array, b: jax.Array, ciou: bool = False, eps: float = 1e-7) -> jax.Array:
    """Elementwise IoU (or CIoU) [...] of broadcastable xyxy boxes a [..., 4] and b [..., 4].

    As ultralytics' `bbox_iou(xywh=False)`: heights get + eps, union gets + eps,
    c^2 gets + eps and alpha = v / (1 - IoU + v + eps), with no gradient through alpha.
    """
    ax0, ay0, ax1, ay1 = (a[..., i] for i in range(4))
    bx0, by0, bx1, by1 = (b[..., i] for i in range(4))
    w1, h1 = ax1 - ax0, ay1 - ay0 + eps
    w2, h2 = bx1 - bx0, by1 - by0 + eps
    inter = jnp.clip(jnp.minimum(ax1, bx1) - jnp.maximum(ax0, bx0), 0.0) * jnp.clip(
        jnp.minimum(ay1, by1) - jnp.maximum(ay0, by0), 0.0
    )
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if not ciou:
        return iou
    cw = jnp.maximum(ax1, bx1) - jnp.minimum(ax0, bx0)
    ch = jnp.maximum(ay1, by1) - jnp.minimum(ay0, by0)
    c2 = cw**2 + ch**2 + eps
    rho2 = ((bx0 + bx1 - ax0 - ax1) ** 2 + (by0 + by1 - ay0 - ay1) ** 2) / 4
    v = (4 / math.pi**2) * (jnp.arctan(w2 / h2) - jnp.arctan(w1 / h1)) ** 2
    alpha = jax.lax.stop_gradient(v / (1 - iou + v + eps))
    return iou - (rho2 / c2 + v * alpha)
