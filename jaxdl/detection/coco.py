"""COCO box evaluation on the host, equal to pycocotools' `COCOeval(iouType="bbox")` with its default parameters.

The protocol is COCO's detection evaluation (cocodataset.org/#detection-eval);
pycocotools' `COCOeval.evaluate()` / `accumulate()` / `summarize()` is the
reference of behaviour reproduced here, quirks included, for all twelve numbers
`summarize()` prints (`coco_map`'s keys, `STATS`). Vectorised with numpy over
all images at once instead of pycocotools' per-image Python loops.

Inputs are the per-image arrays a detector's evaluation gathers, padded to a
fixed number of slots with a validity mask (see `coco_map`). Boxes come as
(x0, y0, x1, y1) and are turned into COCO's (x, y, w, h) in float64 first
(w = x1 - x0), as writing them to a results file would (`results_json`);
everything below uses those, in pycocotools' arithmetic.

1. IoU: w_i = min(x_d + w_d, x_g + w_g) - max(x_d, x_g), likewise h_i; 0 unless
   both are > 0; else w_i h_i / (w_d h_d + w_g h_g - w_i h_i) (no +1), or
   w_i h_i / (w_d h_d) for a crowd box (`iscrowd`): a crowd is a region a
   detection may lie inside, not one object.
2. Per image and category: the detections sorted by score, highest first,
   equal scores in slot order (a stable sort, pycocotools' mergesort), and only
   the first maxDets[-1] (100) kept. The limit is per image *and category*, as
   pycocotools applies it, not per image.
3. For each area range of `AREA_RANGES`, all [0, 1e5²], small [0, 32²], medium
   [32², 96²], large [96², 1e5²], bounds included (an area of exactly 32²
   is small and medium): ground truth is ignored when it is a crowd or its
   area lies outside the range. The area is the annotation's `area` field
   (given per box, e.g. a segment's pixel count; by default w*h of the box),
   not the box's size. Ignored boxes go after the others.
4. Matching, for each area range and IoU threshold t in .50, .55, ..., .95
   independently: in score order, each detection takes the unmatched ground
   truth of highest IoU among those with IoU >= t (t capped at 1 - 1e-10);
   equal IoUs go to the later ground truth; a regular box is preferred to any
   ignored one. A crowd box stays unmatched: any number of detections may
   match it. A detection matched to an ignored box is ignored, as is an
   unmatched detection whose area w*h lies outside the range; the others are
   true or false positives.
5. For each maxDets m in 1, 10, 100, the first m detections of each image and
   category (of step 2's order; the matches of step 4 stay as they are). Per
   category: those of all images in one list by descending score, equal scores
   in image order (ascending image id) and then their order in the image;
   cumulative TP and FP; recall = TP / (non-ignored ground truths), precision
   = TP / (TP + FP + eps), made non-increasing from the right; precision at
   the 101 recalls 0, .01, ..., 1 is that at the first position whose recall
   >= r (`searchsorted(..., side="left")`), 0 where recall never reaches r;
   the recall of the category is the last one (0 without detections).
6. A category without non-ignored ground truth in an area range has no
   entries there (pycocotools' -1; its detections count for nothing). AP is
   the mean precision over the recall points, the IoU thresholds and the
   categories that have entries; AR the mean recall over the IoU thresholds
   and those categories. A number with no entries at all is -1, as
   pycocotools reports it (e.g. map_large of a split without large objects).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # As pycocotools makes them: linspace(.5, .95, 10).
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = (1, 10, 100)
# pycocotools' areaRng: name -> [lo, hi], both bounds included.
AREA_RANGES = {"all": (0.0, 1e5**2), "small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, 1e5**2)}
# The twelve numbers of `COCOeval.summarize()`, in its order: (key, AP or AR, IoU threshold, area, maxDets index).
STATS = (
    ("map50_95", "ap", None, "all", -1),
    ("map50", "ap", 0.5, "all", -1),
    ("map75", "ap", 0.75, "all", -1),
    ("map_small", "ap", None, "small", -1),
    ("map_medium", "ap", None, "medium", -1),
    ("map_large", "ap", None, "large", -1),
    ("mar_1", "ar", None, "all", 0),
    ("mar_10", "ar", None, "all", 1),
    ("mar_100", "ar", None, "all", 2),
    ("mar_small", "ar", None, "small", -1),
    ("mar_medium", "ar", None, "medium", -1),
    ("mar_large", "ar", None, "large", -1),
)
STAT_NAMES = tuple(name for name, *_ in STATS)


def _xywh(boxes) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64)
    return np.concatenate([boxes[..., :2], boxes[..., 2:4] - boxes[..., :2]], axis=-1)


def _iou(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """Elementwise IoU of (x, y, w, h) boxes d [..., 4] and g [..., 4], as pycocotools' bbox IoU (crowd: over d)."""
    w = np.minimum(d[..., 2] + d[..., 0], g[..., 2] + g[..., 0]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 3] + d[..., 1], g[..., 3] + g[..., 1]) - np.maximum(d[..., 1], g[..., 1])
    overlap = (w > 0) & (h > 0)
    inter = np.where(overlap, w * h, 0.0)
    d_area = d[..., 2] * d[..., 3]
    union = np.where(crowd, d_area, d_area + g[..., 2] * g[..., 3] - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlap, inter / np.where(overlap, union, 1.0), 0.0)


def _outside(area: np.ndarray) -> np.ndarray:
    """[A, n]: whether each area lies outside each of `AREA_RANGES`."""
    bounds = np.array(list(AREA_RANGES.values()))
    return (area[None] < bounds[:, :1]) | (area[None] > bounds[:, 1:])


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
    """The valid entries of padded per-image arrays: (image rank, slot, xywh box, and each named field), image-major."""
    boxes = np.asarray(arrays["boxes"])
    if boxes.ndim != 3 or boxes.shape[0] != len(ranks) or boxes.shape[-1] != 4:
        raise ValueError(f"{what} boxes must be [{len(ranks)}, slots, 4], got {boxes.shape}")
    valid = arrays.get("valid")
    valid = np.ones(boxes.shape[:2], bool) if valid is None else np.asarray(valid, bool)
    fields = {name: np.asarray(arrays[name]) for name in names if name in arrays}
    for name, value in {"valid": valid, **fields}.items():
        if value.shape != boxes.shape[:2]:
            raise ValueError(f"{what} {name} must be {boxes.shape[:2]} like its boxes, got {value.shape}")
    image, slot = np.nonzero(valid)
    return (
        ranks[image],
        slot,
        _xywh(boxes[image, slot]),
        *(fields[name][image, slot] if name in fields else None for name in names),
    )


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct values of a sorted key array, where each run starts, and its length."""
    unique, start, count = np.unique(keys, return_index=True, return_counts=True)
    return unique, start, count


def _match(d_box, d_start, d_count, g_box, g_crowd, g_ignore, g_pair, thresholds):
    """Greedy matching (step 4) in every (image, category) pair that has detections and ground truth.

    Pair p's detections are d_box[d_start[p] : d_start[p] + d_count[p]] in score
    order; its ground truths are the run of `g_pair == p` (contiguous, in slot
    order). `g_ignore` [A, G] holds each area range's ignore flags: rather than
    reordering the boxes per range, the best regular box is looked for first
    and an ignored one only without it, which is pycocotools' order (regular
    before ignored, each in slot order) without moving anything. All pairs,
    ranges and thresholds advance together, one detection rank at a time.
    Returns, for each range, threshold and detection [A, T, D], whether it
    matched and whether the box it matched is an ignored one.
    """
    num_a, num_t, num_d = len(g_ignore), len(thresholds), len(d_box)
    matched = np.zeros((num_a * num_t, num_d), bool)
    matched_ignored = np.zeros((num_a * num_t, num_d), bool)
    if len(g_pair) == 0:
        return matched.reshape(num_a, num_t, num_d), matched_ignored.reshape(num_a, num_t, num_d)
    ignore = np.repeat(g_ignore, num_t, axis=0)  # [A*T, G]: rows are (range, threshold).
    threshold = np.tile(np.minimum(thresholds, 1 - 1e-10), num_a)[:, None]
    free = np.ones((num_a * num_t, len(g_pair)), bool)
    first_det, num_dets = d_start[g_pair], d_count[g_pair]
    for rank in range(int(num_dets.max())):
        # Only the pairs with a detection of this rank, whole runs of ground truth each.
        live = np.flatnonzero(num_dets > rank)
        _, start, count = _groups(g_pair[live])
        segment = np.repeat(np.arange(len(start)), count)
        det = first_det[live] + rank
        iou = _iou(d_box[det], g_box[live], g_crowd[live])
        live_ignore = ignore[:, live]
        candidate = free[:, live] & (iou >= threshold)  # [A*T, L]
        regular = np.where(candidate & ~live_ignore, iou, -1.0)
        ignored = np.where(candidate & live_ignore, iou, -1.0)
        best_regular = np.maximum.reduceat(regular, start, axis=1)  # [A*T, S]
        use_ignored = best_regular < 0
        key = np.where(use_ignored[:, segment], ignored, regular)
        best = np.where(use_ignored, np.maximum.reduceat(ignored, start, axis=1), best_regular)
        last_best = np.where((key == best[:, segment]) & (key >= 0), np.arange(len(live)), -1)
        chosen = np.maximum.reduceat(last_best, start, axis=1)  # [A*T, S]: the later of equal IoUs.
        row, run = np.nonzero(chosen >= 0)
        gt = live[chosen[row, run]]
        hit = det[start[run]]
        free[row, gt] = g_crowd[gt]  # A crowd stays free for the next detection.
        matched[row, hit] = True
        matched_ignored[row, hit] = ignore[row, gt]
    return matched.reshape(num_a, num_t, num_d), matched_ignored.reshape(num_a, num_t, num_d)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """pycocotools' `COCOeval.eval` tables: -1 where a category has no non-ignored ground truth in a range."""

    precision: np.ndarray  # [T, R, K, A, M]: IoU thresholds, recall points, categories, area ranges, maxDets.
    recall: np.ndarray  # [T, K, A, M]
    categories: np.ndarray  # [K]: the class ids of the ground truth (ascending).
    max_detections: tuple[int, ...]

    def summarize(self) -> dict[str, float]:
        """The twelve numbers of `COCOeval.summarize()` (`STATS`), -1 where nothing counts."""
        areas = list(AREA_RANGES)
        out = {}
        for name, kind, iou, area, m in STATS:
            table = self.precision if kind == "ap" else self.recall
            if iou is not None:
                table = table[np.flatnonzero(IOU_THRESHOLDS == iou)]
            table = table[..., areas.index(area), m]
            counted = table[table > -1]
            out[name] = float(np.mean(counted)) if counted.size else -1.0
        return out


def coco_evaluate(
    predictions: Mapping[str, np.ndarray],
    ground_truths: Mapping[str, np.ndarray],
    image_ids=None,
    *,
    max_detections: Sequence[int] = MAX_DETECTIONS,
) -> Evaluation:
    """pycocotools' precision and recall tables (steps 1-5 of the module docstring).

    Args: as `coco_map`.
    """
    if np.ndim(max_detections) != 1 or len(max_detections) != 3 or min(max_detections) < 1:
        raise ValueError(f"max_detections must be three limits >= 1, like (1, 10, 100); got {max_detections}")
    max_detections = tuple(int(m) for m in max_detections)
    num_images = np.asarray(predictions["boxes"]).shape[0]
    if np.asarray(ground_truths["boxes"]).shape[0] != num_images:
        raise ValueError("predictions and ground_truths must hold the same images")
    ranks = _image_ranks(num_images, image_ids)
    d_image, d_slot, d_box, d_score, d_class = _entries(predictions, ("scores", "classes"), ranks, "predicted")
    g_image, g_slot, g_box, g_class, g_crowd, g_area = _entries(
        ground_truths, ("classes", "crowd", "area"), ranks, "ground-truth"
    )
    d_score, d_class, g_class = d_score.astype(np.float64), d_class.astype(np.int64), g_class.astype(np.int64)
    g_crowd = np.zeros(len(g_class), bool) if g_crowd is None else g_crowd.astype(bool)
    g_area = g_box[:, 2] * g_box[:, 3] if g_area is None else g_area.astype(np.float64)
    g_ignore = g_crowd[None] | _outside(g_area)  # [A, G]

    # Pairs (image, category) as one sortable key.
    classes = np.unique(np.concatenate([d_class, g_class]))
    d_key = d_image * len(classes) + np.searchsorted(classes, d_class)
    g_key = g_image * len(classes) + np.searchsorted(classes, g_class)

    # Step 2: detections by pair, then score (stable), at most max_detections[-1] per pair.
    order = np.lexsort((d_slot, -d_score, d_key))
    d_key, d_image, d_box, d_score, d_class = d_key[order], d_image[order], d_box[order], d_score[order], d_class[order]
    d_pairs, d_start, d_count = _groups(d_key)
    d_rank = np.arange(len(d_key)) - np.repeat(d_start, d_count)
    kept = d_rank < max_detections[-1]
    d_key, d_image, d_box, d_score, d_class, d_rank = (
        x[kept] for x in (d_key, d_image, d_box, d_score, d_class, d_rank)
    )
    d_pairs, d_start, d_count = _groups(d_key)

    # Steps 3-4: ground truth by pair in slot order; match where a pair has both, for every range at once.
    order = np.lexsort((g_slot, g_key))
    g_key, g_box, g_crowd, g_ignore, g_class = (
        g_key[order],
        g_box[order],
        g_crowd[order],
        g_ignore[:, order],
        g_class[order],
    )
    both = np.isin(g_key, d_pairs)
    g_pair = np.searchsorted(d_pairs, g_key[both])
    matched, matched_ignored = _match(
        d_box, d_start, d_count, g_box[both], g_crowd[both], g_ignore[:, both], g_pair, IOU_THRESHOLDS
    )
    d_ignore = matched_ignored | (~matched & _outside(d_box[:, 2] * d_box[:, 3])[:, None, :])  # [A, T, D]
    true_positive, false_positive = matched & ~d_ignore, ~matched & ~d_ignore

    # Step 5: per category, all images' detections by score, then image, then rank in the image.
    categories = np.unique(g_class)
    order = np.lexsort((d_rank, d_image, -d_score, d_class))
    d_class, d_rank = d_class[order], d_rank[order]
    true_positive, false_positive = true_positive[..., order], false_positive[..., order]
    num_t, num_r, num_k = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(categories)
    precision = -np.ones((num_t, num_r, num_k, len(AREA_RANGES), len(max_detections)))
    recall = -np.ones((num_t, num_k, len(AREA_RANGES), len(max_detections)))
    bounds = np.searchsorted(d_class, np.stack([categories, categories + 1])).T
    for a in range(len(AREA_RANGES)):
        num_regular = np.bincount(
            np.searchsorted(categories, g_class[~g_ignore[a]]), minlength=num_k
        )  # Non-ignored ground truths per category.
        for m, limit in enumerate(max_detections):
            for k, (lo, hi) in enumerate(bounds):
                if num_regular[k] == 0:
                    continue
                within = lo + np.flatnonzero(d_rank[lo:hi] < limit)
                precision[:, :, k, a, m], recall[:, k, a, m] = _curve(
                    true_positive[a][:, within], false_positive[a][:, within], num_regular[k]
                )
    return Evaluation(precision, recall, categories, max_detections)


def _curve(true_positive: np.ndarray, false_positive: np.ndarray, num_regular: int) -> tuple[np.ndarray, np.ndarray]:
    """One category's precision at the recall points [T, R] and its final recall [T] (step 5)."""
    num_t, num_d = true_positive.shape
    precision = np.zeros((num_t, len(RECALL_THRESHOLDS)))
    if num_d == 0:
        return precision, np.zeros(num_t)
    tp = np.cumsum(true_positive, axis=1).astype(float)
    fp = np.cumsum(false_positive, axis=1).astype(float)
    recall = tp / num_regular
    curve = tp / (fp + tp + np.spacing(1))
    curve = np.maximum.accumulate(curve[:, ::-1], axis=1)[:, ::-1]
    for t in range(num_t):
        at = np.searchsorted(recall[t], RECALL_THRESHOLDS, side="left")
        reached = at < num_d
        precision[t, reached] = curve[t, at[reached]]
    return precision, recall[:, -1]


def coco_map(
    predictions: Mapping[str, np.ndarray],
    ground_truths: Mapping[str, np.ndarray],
    image_ids=None,
    *,
    max_detections: Sequence[int] = MAX_DETECTIONS,
) -> dict[str, float]:
    """COCO box AP and AR of a split: the twelve numbers of pycocotools' `COCOeval(iouType="bbox")`.

    Args:
      predictions: per image, padded: boxes [N, M, 4] (x0, y0, x1, y1), scores
        [N, M], classes [N, M] int, and optionally valid [N, M] bool (default
        all); a slot's position is its order among equal scores in its image.
      ground_truths: boxes [N, G, 4] (x0, y0, x1, y1), classes [N, G], and
        optionally valid [N, G] (default all), crowd [N, G] bool (COCO's
        `iscrowd`; default none) and area [N, G] (the annotation's `area` that
        decides small / medium / large; default w*h of the box); the same N
        images in the same order.
      image_ids: [N] distinct ids of the images, which may come in any order:
        images are taken in ascending id, as pycocotools takes them (this only
        decides equal scores across images). Without ids, in the given order.
      max_detections: pycocotools' maxDets, the limits per image and category
        of mar_1, mar_10 and mar_100; the last one also of every AP and of the
        per-area recalls.

    Returns:
      `STAT_NAMES` -> value: map50_95, map50, map75, map_small, map_medium,
      map_large (AP), mar_1, mar_10, mar_100, mar_small, mar_medium, mar_large
      (AR); -1.0 where no category has ground truth to count (see the module).
    """
    return coco_evaluate(predictions, ground_truths, image_ids, max_detections=max_detections).summarize()


def results_json(predictions: Mapping[str, np.ndarray], image_ids, category_ids=None) -> list[dict]:
    """The valid detections as a COCO results list: image_id, category_id, bbox (x, y, w, h), score; not rounded.

    `category_ids` maps class c to its COCO id (default c itself); boxes are
    written in the pixels they are given in.
    """
    image, slot = np.nonzero(_valid(predictions))
    boxes = _xywh(np.asarray(predictions["boxes"])[image, slot])
    scores = np.asarray(predictions["scores"], np.float64)[image, slot]
    classes = np.asarray(predictions["classes"])[image, slot]
    ids = np.asarray(image_ids)
    return [
        {"image_id": _id(ids[i]), "category_id": _category(c, category_ids), "bbox": box.tolist(), "score": float(s)}
        for i, box, s, c in zip(image, boxes, scores, classes, strict=True)
    ]


def annotations_json(
    ground_truths: Mapping[str, np.ndarray], image_ids, num_classes: int, category_ids=None, image_sizes=None
) -> dict:
    """The ground truth as a COCO annotation file (images, annotations, categories) that pycocotools reads.

    Annotation ids start at 1 (pycocotools reads id 0 as "unmatched");
    `iscrowd` and `area` come from the `crowd` and `area` arrays where given
    (else 0 and w*h). `image_sizes` [N, 2] (height, width) fill the images'
    height and width where given.
    """
    image, slot = np.nonzero(_valid(ground_truths))
    boxes = _xywh(np.asarray(ground_truths["boxes"])[image, slot])
    classes = np.asarray(ground_truths["classes"])[image, slot]
    crowd = np.asarray(ground_truths["crowd"])[image, slot] if "crowd" in ground_truths else np.zeros(len(image))
    area = np.asarray(ground_truths["area"], np.float64)[image, slot] if "area" in ground_truths else None
    ids = np.asarray(image_ids)
    images = [{"id": _id(i)} for i in ids]
    if image_sizes is not None:
        for entry, (h, w) in zip(images, np.asarray(image_sizes), strict=True):
            entry.update(height=int(h), width=int(w))
    annotations = [
        {
            "id": n + 1,
            "image_id": _id(ids[i]),
            "category_id": _category(c, category_ids),
            "bbox": box.tolist(),
            "area": float(box[2] * box[3] if area is None else area[n]),
            "iscrowd": int(bool(crowd[n])),
        }
        for n, (i, box, c) in enumerate(zip(image, boxes, classes, strict=True))
    ]
    categories = [{"id": _category(c, category_ids), "name": str(c)} for c in range(num_classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _valid(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    valid = arrays.get("valid")
    return np.ones(np.asarray(arrays["boxes"]).shape[:2], bool) if valid is None else np.asarray(valid, bool)


def _id(value) -> int | str:
    return value.item() if isinstance(value, np.generic) else value


def _category(c, category_ids) -> int:
    return int(c) if category_ids is None else int(category_ids[int(c)])
