"""YOLO v1's loss and decoder (Redmon et al., 2016), for outputs laid out as `jaxdl.models.yolov1` gives them.

Outputs are `[N, S, S, B*5 + C]`: cell (i, j) is grid row i, column j, and holds
for each predictor b the five values (x, y, sqrt_w, sqrt_h, confidence) at
channels 5b ... 5b+4, then C class scores. x, y: the box centre's offset in its
cell (cell units); sqrt_w, sqrt_h: square roots of the width and height relative
to the image. A predicted box reads a negative root as 0 (width = max(sqrt_w, 0)**2).

Targets are per image, padded to a fixed G objects: `boxes` [N, G, 4] float32
(x0, y0, x1, y1) pixels, `classes` [N, G] int32 in [0, C), `valid` [N, G] bool.

`yolov1_loss` is the paper's sum-squared error, per image:

    λcoord Σ_ij 1obj_ij [(x - x̂)² + (y - ŷ)²]
  + λcoord Σ_ij 1obj_ij [(√w - √ŵ)² + (√h - √ĥ)²]
  + Σ_ij 1obj_ij (C - Ĉ)²
  + λnoobj Σ_ij 1noobj_ij (C - Ĉ)²
  + Σ_i 1obj_i Σ_c (p(c) - p̂(c))²

with hatted values the targets. The choices the paper leaves open:
  - Cell i is responsible for the object whose box centre lies in it (a centre on
    the image's right or bottom edge belongs to the last cell). If several
    objects' centres fall in one cell, the FIRST valid one in the target order
    is that cell's object and the others are ignored (the paper's grid has one
    object per cell; sort the targets, e.g. by area, to choose another).
  - Within that cell, the predictor whose decoded box has the highest IoU with
    the object's box is responsible (1obj_ij = 1; ties go to the lower index).
    1noobj_ij = 1 - 1obj_ij: the cell's other predictors, and every predictor of
    a cell without an object, are pushed to confidence 0.
  - The confidence target Ĉ of the responsible predictor is, by default, the IoU
    of its box with the truth (`confidence_target="iou"`: the paper defines
    confidence as Pr(Object) * IoU(pred, truth)), held constant (stop_gradient);
    `confidence_target="one"` uses 1, a common simplification.
  - p̂ is the one-hot class of the cell's object; class scores of cells without
    an object are not penalised.
Every term is a sum over the image (not a mean), as in the paper; average the
per-image losses over a batch.

`yolov1_decode` gives every predictor's box in pixels and its class-specific
scores confidence * Pr(class | object), the paper's test-time score. The
network's outputs are linear, so both factors are clipped to [0, 1] first.

Imports only jax and numpy.
"""

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

CONFIDENCE_TARGETS = ("iou", "one")


def _split(outputs: jax.Array, num_classes: int, boxes_per_cell: int) -> tuple[jax.Array, jax.Array]:
    """outputs [N, S, S, B*5 + C] -> (per-predictor values [N, S, S, B, 5], class scores [N, S, S, C])."""
    n, s, s2, channels = outputs.shape
    if s != s2:
        raise ValueError(f"YOLO v1 outputs need an S x S grid, got {s}x{s2}")
    if channels != boxes_per_cell * 5 + num_classes:
        raise ValueError(
            f"YOLO v1 outputs have {channels} channels per cell, but boxes_per_cell={boxes_per_cell} and "
            f"num_classes={num_classes} need {boxes_per_cell * 5 + num_classes} (B * 5 + C)"
        )
    outputs = outputs.astype(jnp.float32)
    predictors = outputs[..., : boxes_per_cell * 5].reshape(n, s, s, boxes_per_cell, 5)
    return predictors, outputs[..., boxes_per_cell * 5 :]


def _cell_offsets(grid_size: int) -> tuple[jax.Array, jax.Array]:
    """(column j, row i) of every cell, each [S, S] float32."""
    rows, cols = jnp.meshgrid(jnp.arange(grid_size), jnp.arange(grid_size), indexing="ij")
    return cols.astype(jnp.float32), rows.astype(jnp.float32)


def predicted_boxes(predictors: jax.Array) -> jax.Array:
    """Boxes (x0, y0, x1, y1) relative to the image ([0, 1] spans it) of predictors [N, S, S, B, 5+]: [N, S, S, B, 4].

    Centre ((j + x) / S, (i + y) / S), size (max(sqrt_w, 0)**2, max(sqrt_h, 0)**2).
    """
    grid_size = predictors.shape[1]
    cols, rows = _cell_offsets(grid_size)
    cx = (cols[:, :, None] + predictors[..., 0]) / grid_size
    cy = (rows[:, :, None] + predictors[..., 1]) / grid_size
    w = jnp.maximum(predictors[..., 2], 0.0) ** 2
    h = jnp.maximum(predictors[..., 3], 0.0) ** 2
    return jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def _iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """IoU of boxes (x0, y0, x1, y1) broadcast against each other over the leading axes; 0 where the union is empty."""
    iw = jnp.clip(jnp.minimum(a[..., 2], b[..., 2]) - jnp.maximum(a[..., 0], b[..., 0]), 0.0)
    ih = jnp.clip(jnp.minimum(a[..., 3], b[..., 3]) - jnp.maximum(a[..., 1], b[..., 1]), 0.0)
    inter = iw * ih
    area_a = jnp.clip(a[..., 2] - a[..., 0], 0.0) * jnp.clip(a[..., 3] - a[..., 1], 0.0)
    area_b = jnp.clip(b[..., 2] - b[..., 0], 0.0) * jnp.clip(b[..., 3] - b[..., 1], 0.0)
    union = area_a + area_b - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def yolov1_targets(
    targets: Mapping[str, jax.Array], image_hw: tuple[float, float], *, grid_size: int, num_classes: int
) -> dict[str, jax.Array]:
    """Each cell's object, from padded per-image targets (see the module docstring for the rules).

    Returns a dict of arrays over the grid:
      has_object [N, S, S] bool: a valid object's centre lies in the cell.
      box [N, S, S, 4]: that object's box (x0, y0, x1, y1) relative to the image.
      xy [N, S, S, 2]: its centre's offset in the cell, in cell units.
      sqrt_wh [N, S, S, 2]: square roots of its width and height relative to the image.
      classes [N, S, S, C]: its one-hot class.
    Cells without an object hold zeros.
    """
    height, width = (jnp.asarray(v, jnp.float32) for v in image_hw)
    valid = jnp.asarray(targets["valid"], bool)
    scale = jnp.stack([width, height, width, height])
    # Padding may hold anything: zero it so no NaN leaks through the gathers below.
    boxes = jnp.where(valid[..., None], jnp.asarray(targets["boxes"], jnp.float32) / scale, 0.0)  # [N, G, 4]
    classes = jnp.where(valid, jnp.asarray(targets["classes"], jnp.int32), 0)
    cx, cy = (boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2
    col = jnp.clip(jnp.floor(cx * grid_size), 0, grid_size - 1).astype(jnp.int32)
    row = jnp.clip(jnp.floor(cy * grid_size), 0, grid_size - 1).astype(jnp.int32)
    cells = grid_size * grid_size
    # in_cell[n, g, k]: object g of image n is valid and its centre is in cell k (row-major).
    in_cell = valid[..., None] & ((row * grid_size + col)[..., None] == jnp.arange(cells))
    has_object = in_cell.any(axis=1)  # [N, S*S]
    first = jnp.argmax(in_cell, axis=1)  # [N, S*S]: the first object in each cell (0 where none).

    def per_cell(values: jax.Array) -> jax.Array:
        """values [N, G, ...] -> the cell's object's values [N, S, S, ...], zeros where the cell has none."""
        picked = jnp.take_along_axis(values, first.reshape(first.shape + (1,) * (values.ndim - 2)), axis=1)
        mask = has_object.reshape(has_object.shape + (1,) * (values.ndim - 2))
        picked = jnp.where(mask, picked, 0)
        return picked.reshape((values.shape[0], grid_size, grid_size) + values.shape[2:])

    xy = jnp.stack([cx * grid_size - col, cy * grid_size - row], axis=-1)
    sqrt_wh = jnp.sqrt(jnp.clip(jnp.stack([boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]], -1), 0.0))
    return {
        "has_object": has_object.reshape(-1, grid_size, grid_size),
        "box": per_cell(boxes),
        "xy": per_cell(xy),
        "sqrt_wh": per_cell(sqrt_wh),
        "classes": per_cell(jax.nn.one_hot(classes, num_classes, dtype=jnp.float32)),
    }


def yolov1_loss(
    outputs: jax.Array,
    targets: Mapping[str, jax.Array],
    image_hw: tuple[float, float],
    *,
    num_classes: int,
    boxes_per_cell: int,
    lambda_coord: float = 5.0,
    lambda_noobj: float = 0.5,
    confidence_target: str = "iou",
) -> tuple[jax.Array, dict[str, Any]]:
    """The paper's sum-squared loss of each image (module docstring), and its terms.

    Args:
      outputs: [N, S, S, B*5 + C] network outputs.
      targets: `boxes` [N, G, 4] (x0, y0, x1, y1) pixels, `classes` [N, G] int,
        `valid` [N, G] bool (padding False).
      image_hw: the input's (height, width) in pixels.
      num_classes, boxes_per_cell: C and B.
      lambda_coord, lambda_noobj: the paper's weights 5 and 0.5.
      confidence_target: "iou" (the paper: IoU of the responsible box with the
        truth, without gradient) or "one".

    Returns:
      (loss [N], parts) with parts {"xy", "wh", "object", "no_object", "class"},
      each [N] and already weighted by its lambda, so they sum to the loss.
    """
    if confidence_target not in CONFIDENCE_TARGETS:
        raise ValueError(
            f"confidence_target={confidence_target!r} is not valid; choose one of: {', '.join(CONFIDENCE_TARGETS)}"
        )
    predictors, class_scores = _split(outputs, num_classes, boxes_per_cell)
    truth = yolov1_targets(targets, image_hw, grid_size=outputs.shape[1], num_classes=num_classes)
    has_object = truth["has_object"].astype(jnp.float32)  # [N, S, S]

    # The responsible predictor: the highest IoU with the cell's object (no gradient through the choice).
    ious = jax.lax.stop_gradient(_iou(predicted_boxes(predictors), truth["box"][..., None, :]))  # [N, S, S, B]
    best = jax.nn.one_hot(jnp.argmax(ious, axis=-1), boxes_per_cell, dtype=jnp.float32)
    responsible = best * has_object[..., None]  # 1obj_ij [N, S, S, B]

    def total(x: jax.Array) -> jax.Array:
        return x.reshape(x.shape[0], -1).sum(axis=1)

    xy_error = ((predictors[..., :2] - truth["xy"][..., None, :]) ** 2).sum(-1)
    wh_error = ((predictors[..., 2:4] - truth["sqrt_wh"][..., None, :]) ** 2).sum(-1)
    confidence = predictors[..., 4]
    target = ious if confidence_target == "iou" else jnp.ones_like(ious)
    parts = {
        "xy": lambda_coord * total(responsible * xy_error),
        "wh": lambda_coord * total(responsible * wh_error),
        "object": total(responsible * (confidence - target) ** 2),
        "no_object": lambda_noobj * total((1.0 - responsible) * confidence**2),
        "class": total(has_object[..., None] * (class_scores - truth["classes"]) ** 2),
    }
    return sum(parts.values()), parts


def yolov1_decode(
    outputs: jax.Array,
    image_hw: tuple[float, float],
    *,
    num_classes: int,
    boxes_per_cell: int,
    clip: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Every predictor's box in pixels and its class-specific scores.

    Args:
      outputs: [N, S, S, B*5 + C] network outputs.
      image_hw: the input's (height, width) in pixels.
      num_classes, boxes_per_cell: C and B.
      clip: clip the boxes to the image (centres and sizes are not clipped otherwise).

    Returns:
      boxes [N, S*S*B, 4] (x0, y0, x1, y1) pixels, and scores [N, S*S*B, C] =
      clip(confidence, 0, 1) * clip(p(c), 0, 1). Predictor b of cell (i, j) is
      row (i * S + j) * B + b.
    """
    predictors, class_scores = _split(outputs, num_classes, boxes_per_cell)
    n = outputs.shape[0]
    height, width = (jnp.asarray(v, jnp.float32) for v in image_hw)
    boxes = predicted_boxes(predictors) * jnp.stack([width, height, width, height])
    if clip:
        boxes = jnp.clip(boxes, 0.0, jnp.stack([width, height, width, height]))
    confidence = jnp.clip(predictors[..., 4], 0.0, 1.0)  # [N, S, S, B]
    probabilities = jnp.clip(class_scores, 0.0, 1.0)[..., None, :]  # [N, S, S, 1, C]
    scores = confidence[..., None] * probabilities
    return boxes.reshape(n, -1, 4), scores.reshape(n, -1, num_classes)


__all__ = ["predicted_boxes", "yolov1_decode", "yolov1_loss", "yolov1_targets"]
