"""COCO box mAP on the host, equal to pycocotools' `COCOeval(iouType="bbox")` with its default parameters.

The protocol is COCO's detection evaluation (cocodataset.org/#detection-eval);
pycocotools' `COCOeval.evaluate()` / `accumulate()` / `summarize()` is the
reference of behaviour reproduced here, quirks included, for the three numbers
it reports first: AP at IoU .50:.05:.95 (stats[0]), at .50 (stats[1]) and at
.75 (stats[2]), area range 'all', at most 100 detections. Vectorised with numpy
over all images at once instead of pycocotools' per-image Python loops.

Inputs are the per-image arrays a detector's evaluation gathers, padded to a
fixed number of slots with a validity mask (see `coco_map`). Boxes come as
(x0, y0, x1, y1) and are turned into COCO's (x, y, w, h) in float64 first
(w = x1 - x0), as writing them to a results file would; everything below uses
those, in pycocotools' arithmetic.

1. IoU: w_i = min(x_d + w_d, x_g + w_g) - max(x_d, x_g), likewise h_i; 0 unless
   both are > 0; else w_i h_i / (w_d h_d + w_g h_g - w_i h_i) (no +1). Every
   ground-truth box is a regular one (iscrowd 0).
2. Per image and category: the detections sorted by score, highest first,
   equal scores in slot order (a stable sort, pycocotools' mergesort), and only
   the first 100 kept. The 100 limit is per image *and category*, as
   pycocotools applies it, not per image.
3. Ground truth is ignored when its area w*h is outside the range 'all',
   [0, 1e10] (pycocotools reads the annotation's 'area' field: equal when the
   field holds w*h of the box); ignored boxes go after the others.
4. Matching, for each IoU threshold t in .50, .55, ..., .95 independently: in
   score order, each detection takes the unmatched ground truth of highest IoU
   among those with IoU >= t (t capped at 1 - 1e-10); equal IoUs go to the later
   ground truth; a regular box is preferred to any ignored one. A detection
   matched to an ignored box is ignored, as is an unmatched detection whose area
   is outside the range; the others are true or false positives.
5. Per category: the kept detections of all images in one list by descending
   score, equal scores in image order (ascending image id) and then their order
   in the image; cumulative TP and FP; recall = TP / (non-ignored ground
   truths), precision = TP / (TP + FP + eps), made non-increasing from the
   right; precision at the 101 recalls 0, .01, ..., 1 is that at the first
   position whose recall >= r (`searchsorted(..., side="left")`), 0 where
   recall never reaches r. A category with no detections has precision 0.
6. AP = the mean of those precisions over the recall points, the IoU thresholds
   and the categories with at least one non-ignored ground-truth box in the
   split (categories without any are left out, pycocotools' -1 entries; their
   detections count for nothing). With no such category at all it is -1, as
   pycocotools reports.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # As pycocotools makes them: linspace(.5, .95, 10).
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = 100
AREA_RANGE = (0.0, 1e10)  # 'all': [0 ** 2, 1e5 ** 2].


def _xywh(boxes) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64)
    return np.concatenate([boxes[..., :2], boxes[..., 2:4] - boxes[..., :2]], axis=-1)


def _iou(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Elementwise IoU of (x, y, w, h) boxes d [..., 4] and g [..., 4], as pycocotools' bbox IoU."""
    w = np.minimum(d[..., 2] + d[..., 0], g[..., 2] + g[..., 0]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 3] + d[..., 1], g[..., 3] + g[..., 1]) - np.maximum(d[..., 1], g[..., 1])
    overlap = (w > 0) & (h > 0)
    inter = np.where(overlap, w * h, 0.0)
    union = d[..., 2] * d[..., 3] + g[..., 2] * g[..., 3] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlap, inter / np.where(overlap, union, 1.0), 0.0)


def _outside_area(area: np.ndarray) -> np.ndarray:
    return (area < AREA_RANGE[0]) | (area > AREA_RANGE[1])


def _image_ranks(num_images: int, image_ids) -> np.ndarray:
    """Each image's position in ascending image id (pycocotools' image order); the given order without ids."""
    if image_ids is None:
        return np.arange(num_images)
    image_ids = np.asarray(image_ids).reshape(-1)
    if image_ids.shape != (num_images,):
        raise ValueError(f"image_ids must have one id per image ({num_images}), got shape {image_ids.shape}")
    if len(np.unique(image_ids)) != num_images:
        raise ValueError("image_ids must be unique: each image must come once")
    ranks = np.empty(num_images, np.int64)
    ranks[np.argsort(image_ids, kind="stable")] = np.arange(num_images)
    return ranks


def _entries(arrays: Mapping[str, np.ndarray], names: tuple[str, ...], ranks: np.ndarray, what: str):
    """The valid entries of padded per-image arrays: (image rank, slot, and each named field), image-major."""
    boxes = np.asarray(arrays["boxes"])
    if boxes.ndim != 3 or boxes.shape[0] != len(ranks) or boxes.shape[-1] != 4:
        raise ValueError(f"{what} boxes must be [{len(ranks)}, slots, 4], got {boxes.shape}")
    valid = arrays.get("valid")
    valid = np.ones(boxes.shape[:2], bool) if valid is None else np.asarray(valid, bool)
    fields = {name: np.asarray(arrays[name]) for name in names}
    for name, value in {"valid": valid, **fields}.items():
        if value.shape != boxes.shape[:2]:
            raise ValueError(f"{what} {name} must be {boxes.shape[:2]} like its boxes, got {value.shape}")
    image, slot = np.nonzero(valid)
    return (
        ranks[image],
        slot,
        _xywh(boxes[image, slot]),
        *(fields[name][image, slot] for name in names),
    )


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct values of a sorted key array, where each run starts, and its length."""
    unique, start, count = np.unique(keys, return_index=True, return_counts=True)
    return unique, start, count


def _match(d_box, d_start, d_count, g_box, g_ignore, g_pair, thresholds):
    """Greedy matching (step 4) in every (image, category) pair that has detections and ground truth.

    Pair p's detections are d_box[d_start[p] : d_start[p] + d_count[p]] in score
    order; its ground truths are the run of `g_pair == p` (contiguous, regular
    before ignored). All pairs and thresholds advance together, one detection
    rank at a time. Returns, for each detection and threshold [T, D], whether it
    matched and whether the box it matched is an ignored one.
    """
    num_t, num_d = len(thresholds), len(d_box)
    matched = np.zeros((num_t, num_d), bool)
    matched_ignored = np.zeros((num_t, num_d), bool)
    if len(g_pair) == 0:
        return matched, matched_ignored
    pairs, g_start, g_count = _groups(g_pair)
    segment = np.repeat(np.arange(len(pairs)), g_count)  # Each ground truth's run, 0..S-1.
    position = np.arange(len(g_pair))
    free = np.ones((num_t, len(g_pair)), bool)
    threshold = np.minimum(thresholds, 1 - 1e-10)[:, None]
    first_det, num_dets = d_start[g_pair], d_count[g_pair]
    for rank in range(int(num_dets.max())):
        active = num_dets > rank
        det = np.where(active, first_det + rank, 0)
        iou = _iou(d_box[det], g_box)
        candidate = free & (active & (iou >= threshold))  # [T, G]
        regular = np.where(candidate & ~g_ignore, iou, -1.0)
        ignored = np.where(candidate & g_ignore, iou, -1.0)
        best_regular = np.maximum.reduceat(regular, g_start, axis=1)  # [T, S]
        use_ignored = best_regular < 0
        key = np.where(use_ignored[:, segment], ignored, regular)
        best = np.where(use_ignored, np.maximum.reduceat(ignored, g_start, axis=1), best_regular)
        last_best = np.where((key == best[:, segment]) & (key >= 0), position, -1)
        chosen = np.maximum.reduceat(last_best, g_start, axis=1)  # [T, S]: the later of equal IoUs.
        t, run = np.nonzero(chosen >= 0)
        gt = chosen[t, run]
        det = d_start[pairs[run]] + rank
        free[t, gt] = False
        matched[t, det] = True
        matched_ignored[t, det] = g_ignore[gt]
    return matched, matched_ignored


def coco_precision(
    predictions: Mapping[str, np.ndarray],
    ground_truths: Mapping[str, np.ndarray],
    image_ids=None,
    *,
    max_detections: int = MAX_DETECTIONS,
) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools' precision table for area 'all' (steps 1-5 of the module docstring).

    Args: as `coco_map`.

    Returns:
      precision [T=10, R=101, K] for the IoU thresholds `IOU_THRESHOLDS`, the
      recall points `RECALL_THRESHOLDS` and the K categories that have
      non-ignored ground truth, and those K class ids (ascending).
    """
    num_images = np.asarray(predictions["boxes"]).shape[0]
    if np.asarray(ground_truths["boxes"]).shape[0] != num_images:
        raise ValueError("predictions and ground_truths must hold the same images")
    ranks = _image_ranks(num_images, image_ids)
    d_image, d_slot, d_box, d_score, d_class = _entries(predictions, ("scores", "classes"), ranks, "predicted")
    g_image, g_slot, g_box, g_class = _entries(ground_truths, ("classes",), ranks, "ground-truth")
    d_score, d_class, g_class = d_score.astype(np.float64), d_class.astype(np.int64), g_class.astype(np.int64)
    g_ignore = _outside_area(g_box[:, 2] * g_box[:, 3])

    # Pairs (image, category) as one sortable key.
    classes = np.unique(np.concatenate([d_class, g_class]))
    d_key = d_image * len(classes) + np.searchsorted(classes, d_class)
    g_key = g_image * len(classes) + np.searchsorted(classes, g_class)

    # Step 2: detections by pair, then score (stable), at most max_detections per pair.
    order = np.lexsort((d_slot, -d_score, d_key))
    d_key, d_image, d_box, d_score, d_class = d_key[order], d_image[order], d_box[order], d_score[order], d_class[order]
    d_pairs, d_start, d_count = _groups(d_key)
    d_rank = np.arange(len(d_key)) - np.repeat(d_start, d_count)
    kept = d_rank < max_detections
    d_key, d_image, d_box, d_score, d_class, d_rank = (
        x[kept] for x in (d_key, d_image, d_box, d_score, d_class, d_rank)
    )
    d_pairs, d_start, d_count = _groups(d_key)

    # Steps 3-4: ground truth by pair, regular before ignored; match where a pair has both.
    order = np.lexsort((g_slot, g_ignore, g_key))
    g_key, g_box, g_ignore, g_class = g_key[order], g_box[order], g_ignore[order], g_class[order]
    both = np.isin(g_key, d_pairs)
    g_pair = np.searchsorted(d_pairs, g_key[both])
    matched, matched_ignored = _match(d_box, d_start, d_count, g_box[both], g_ignore[both], g_pair, IOU_THRESHOLDS)
    d_ignore = matched_ignored | (~matched & _outside_area(d_box[:, 2] * d_box[:, 3]))
    true_positive, false_positive = matched & ~d_ignore, ~matched & ~d_ignore

    # Step 5: per category, all images' detections by score, then image, then rank in the image.
    categories = np.unique(g_class[~g_ignore])
    num_regular = np.bincount(np.searchsorted(categories, g_class[~g_ignore]), minlength=len(categories))
    order = np.lexsort((d_rank, d_image, -d_score, d_class))
    d_class, true_positive, false_positive = d_class[order], true_positive[:, order], false_positive[:, order]
    bounds = np.searchsorted(d_class, np.stack([categories, categories + 1]))
    precision = np.zeros((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(categories)))
    for k, (lo, hi) in enumerate(bounds.T):
        if hi == lo:
            continue
        tp = np.cumsum(true_positive[:, lo:hi], axis=1).astype(float)
        fp = np.cumsum(false_positive[:, lo:hi], axis=1).astype(float)
        recall = tp / num_regular[k]
        curve = tp / (fp + tp + np.spacing(1))
        curve = np.maximum.accumulate(curve[:, ::-1], axis=1)[:, ::-1]
        for t in range(len(IOU_THRESHOLDS)):
            at = np.searchsorted(recall[t], RECALL_THRESHOLDS, side="left")
            reached = at < hi - lo
            precision[t, reached, k] = curve[t, at[reached]]
    return precision, categories


def coco_map(
    predictions: Mapping[str, np.ndarray],
    ground_truths: Mapping[str, np.ndarray],
    image_ids=None,
    *,
    max_detections: int = MAX_DETECTIONS,
) -> dict[str, float]:
    """COCO box AP of a split, as pycocotools' `COCOeval(iouType="bbox")` stats[0:3].

    Args:
      predictions: per image, padded: boxes [N, M, 4] (x0, y0, x1, y1), scores
        [N, M], classes [N, M] int, and optionally valid [N, M] bool (default
        all); a slot's position is its order among equal scores in its image.
      ground_truths: boxes [N, G, 4] (x0, y0, x1, y1), classes [N, G], and
        optionally valid [N, G]; the same N images in the same order.
      image_ids: [N] distinct ids of the images, which may come in any order:
        images are taken in ascending id, as pycocotools takes them (this only
        decides equal scores across images). Without ids, in the given order.
      max_detections: the limit per image and category (pycocotools' 100).

    Returns:
      {"map50_95": AP at IoU .50:.05:.95, "map50": at .50, "map75": at .75},
      -1.0 each when no ground truth at all (see the module docstring).
    """
    precision, _ = coco_precision(predictions, ground_truths, image_ids, max_detections=max_detections)

    def mean(p: np.ndarray) -> float:
        return float(np.mean(p)) if p.size else -1.0

    return {
        "map50_95": mean(precision),
        "map50": mean(precision[np.flatnonzero(IOU_THRESHOLDS == 0.5)]),
        "map75": mean(precision[np.flatnonzero(IOU_THRESHOLDS == 0.75)]),
    }
