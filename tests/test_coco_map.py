"""COCO's twelve box numbers against pycocotools' COCOeval (and faster-coco-eval) on random and hand-made splits."""

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jaxdl.detection import coco


def _split(rng: np.random.Generator, num_images: int, num_classes: int, crowded: bool = False, extras: bool = False):
    """A random split: padded ground truths and predictions, image ids, in shuffled image order.

    Detections jitter around the objects (IoUs across all thresholds), duplicate them, take wrong classes, or
    are background; scores may tie. Some images have no objects or no detections, some classes occur in few
    images or only as false detections; on the integer grid IoUs hit the thresholds exactly. Objects and
    detections fall in every size range (small, medium, large). Rarely a box is larger than COCO's area range
    (ignored ground truth, ignored unmatched detections). With `extras`, some objects are crowds (with
    detections inside them) and some carry an explicit area unlike w*h, sometimes exactly on a range's bound.
    """
    present = rng.choice(num_classes, size=rng.integers(1, num_classes + 1), replace=False)
    grid = rng.random() < 0.3
    largest = rng.choice([150, 60, 25])  # Sometimes no large, or only small objects: those ranges are -1.
    gts, dets = [], []
    for _ in range(num_images):
        num_gt = 0 if rng.random() < 0.2 else rng.integers(1, 9)
        xy = rng.uniform(0, 500, size=(num_gt, 2))
        wh = rng.uniform(4, largest, size=(num_gt, 2))
        g_boxes = np.concatenate([xy, xy + wh], axis=1)
        g_classes = rng.choice(present, size=num_gt)
        if num_gt and rng.random() < 0.05:
            g_boxes[0] = [0, 0, 2e5, 1e5]  # Area 2e10 > 1e10: ignored.
        d_boxes, d_classes = [], []
        if rng.random() > 0.15:
            for box, cls in zip(g_boxes, g_classes, strict=True):
                for _ in range(rng.choice(4, p=[0.2, 0.5, 0.2, 0.1])):
                    size = np.tile(box[2:] - box[:2], 2)
                    d_boxes.append(box + rng.normal(0, rng.choice([0.02, 0.08, 0.2]), 4) * size)
                    d_classes.append(cls if rng.random() < 0.85 else rng.integers(num_classes))
            for _ in range(rng.integers(0, 6 if not crowded else 150)):
                xy, wh = rng.uniform(0, 500, 2), rng.uniform(4, 150, 2)
                d_boxes.append(np.concatenate([xy, xy + wh]))
                d_classes.append(rng.integers(num_classes) if not crowded else present[0])
            if rng.random() < 0.05:
                d_boxes.append(np.array([0, 0, 3e5, 1e5]))  # Outside the area range.
                d_classes.append(present[0])
            if rng.random() < 0.2:
                d_boxes.append(np.array([100, 100, 132, 132]))  # Area exactly 32**2: small and medium.
                d_classes.append(present[-1])
        crowd = np.zeros(num_gt, bool)
        area = (g_boxes[:, 2] - g_boxes[:, 0]) * (g_boxes[:, 3] - g_boxes[:, 1])
        if extras and num_gt:
            crowd = rng.random(num_gt) < 0.15
            for box, cls in zip(g_boxes[crowd], g_classes[crowd], strict=True):
                for _ in range(rng.integers(0, 4)):  # Detections inside a crowd, matched by it any number of times.
                    lo = box[:2] + rng.uniform(0, 0.5, 2) * (box[2:] - box[:2])
                    d_boxes.append(np.concatenate([lo, lo + rng.uniform(0.2, 0.6, 2) * (box[2:] - box[:2])]))
                    d_classes.append(cls)
            area = area * np.where(rng.random(num_gt) < 0.5, rng.uniform(0.3, 1.2, num_gt), 1.0)
            area = np.where(rng.random(num_gt) < 0.1, rng.choice([32.0**2, 96.0**2], num_gt), area)
        d_boxes = np.reshape(d_boxes, (-1, 4))
        if grid:
            g_boxes, d_boxes = np.round(g_boxes / 2) * 2, np.round(d_boxes)
        d_boxes[:, 2:] = np.maximum(d_boxes[:, 2:], d_boxes[:, :2] + 0.5)
        ties = rng.random() < 0.5
        scores = rng.integers(1, 6, len(d_boxes)) / 5 if ties else rng.random(len(d_boxes))
        gts.append((g_boxes.astype(np.float32), np.array(g_classes, np.int64), crowd, area))
        dets.append((d_boxes.astype(np.float32), scores.astype(np.float32), np.array(d_classes, np.int64)))
    truth = _pad(gts, ("boxes", "classes", "crowd", "area"))
    if not extras:
        del truth["crowd"], truth["area"]  # The defaults: no crowds, area w*h.
    return truth, _pad(dets, ("boxes", "scores", "classes")), rng.permutation(10**6)[:num_images] + 1


def _pad(per_image, names):
    """Per-image arrays stacked with padding slots of random content, plus valid masks."""
    rng = np.random.default_rng(0)
    slots = max(1, max(len(x[0]) for x in per_image)) + 2
    out = {name: [] for name in (*names, "valid")}
    for arrays in per_image:
        n = len(arrays[0])
        for name, value in zip(names, arrays, strict=True):
            padding = rng.uniform(0, 50, (slots - n, *value.shape[1:])).astype(value.dtype)
            out[name].append(np.concatenate([value, padding]))
        out["valid"].append(np.arange(slots) < n)
    return {name: np.stack(value) for name, value in out.items()}


def _reference(predictions, ground_truths, image_ids, num_classes, faster=False):
    """The twelve stats of COCOeval(iouType="bbox") (or faster-coco-eval's) on the same split, through COCO's JSON."""
    truth = coco.annotations_json(ground_truths, image_ids, num_classes)
    results = coco.results_json(predictions, image_ids)
    if faster:
        faster_coco_eval = pytest.importorskip("faster_coco_eval")
        ground, evaluator = faster_coco_eval.COCO, faster_coco_eval.COCOeval_faster
    else:
        ground, evaluator = COCO, COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        gt = ground()
        gt.dataset = truth
        gt.createIndex()
        evaluation = evaluator(gt, gt.loadRes(results), iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return np.asarray(evaluation.stats[:12])


def _pycocotools(predictions, ground_truths, image_ids, num_classes):
    return _reference(predictions, ground_truths, image_ids, num_classes)


def _ours(predictions, ground_truths, image_ids, **kwargs):
    result = coco.coco_map(predictions, ground_truths, image_ids, **kwargs)
    assert tuple(result) == coco.STAT_NAMES
    return np.array(list(result.values()))


def test_matches_pycocotools_on_random_splits():
    differences = []
    for seed in range(30):
        rng = np.random.default_rng(seed)
        num_classes = int(rng.integers(1, 7))
        truth, predictions, ids = _split(rng, int(rng.integers(5, 21)), num_classes)
        if not predictions["valid"].any():
            continue
        expected = _pycocotools(predictions, truth, ids, num_classes)
        differences.append(np.abs(_ours(predictions, truth, ids) - expected).max())
        assert differences[-1] < 1e-12, f"seed {seed}: {_ours(predictions, truth, ids)} != {expected}"
    assert len(differences) >= 25


@pytest.mark.reference
@pytest.mark.parametrize("faster", [False, True], ids=["pycocotools", "faster-coco-eval"])
def test_crowds_areas_and_every_range_match_the_references(faster):
    """Crowds, explicit areas, areas on the bounds, empty ranges (-1): all twelve numbers equal the reference's."""
    empty_ranges = 0
    for seed in range(24):
        rng = np.random.default_rng(1000 + seed)
        num_classes = int(rng.integers(1, 6))
        truth, predictions, ids = _split(rng, int(rng.integers(4, 16)), num_classes, extras=True)
        ours, expected = _ours(predictions, truth, ids), _reference(predictions, truth, ids, num_classes, faster)
        np.testing.assert_allclose(ours, expected, atol=1e-12, err_msg=f"seed {seed}")
        empty_ranges += int((ours == -1).any())
    assert empty_ranges >= 2  # Splits without large (or medium) objects were among them.


def test_crowd_regions_and_areas_by_hand():
    """A crowd is matched by intersection over the detection's area, by any number of detections, and counts for
    nothing; the annotation's area, not the box's, decides the range."""
    truth = {
        "boxes": np.array([[[0, 0, 100, 100], [200, 200, 210, 210]]], np.float32),
        "classes": np.zeros((1, 2), np.int64),
        "crowd": np.array([[True, False]]),
        "area": np.array([[5000.0, 2000.0]]),  # The 10x10 box is medium by its area.
    }
    predictions = {
        # Two detections inside the crowd (IoU over their own area: 1), one on the object.
        "boxes": np.array([[[10, 10, 30, 30], [50, 50, 60, 60], [200, 200, 210, 210]]], np.float32),
        "scores": np.array([[0.9, 0.8, 0.7]], np.float32),
        "classes": np.zeros((1, 3), np.int64),
    }
    result = coco.coco_map(predictions, truth, [1])
    np.testing.assert_allclose([result[k] for k in ("map50_95", "map_medium", "mar_100", "mar_medium")], 1.0)
    assert result["map_small"] == result["map_large"] == result["mar_small"] == -1.0
    assert result["mar_1"] == 0.0  # The first detection per image and category lies in the crowd.
    np.testing.assert_allclose(_ours(predictions, truth, [1]), _pycocotools(predictions, truth, [1], 1), atol=1e-12)


def test_more_than_100_detections_per_image_and_category():
    rng = np.random.default_rng(100)
    truth, predictions, ids = _split(rng, 6, 3, crowded=True)
    assert predictions["valid"].sum(axis=1).max() > 100
    np.testing.assert_allclose(_ours(predictions, truth, ids), _pycocotools(predictions, truth, ids, 3), atol=1e-12)
    # The limit matters here.
    assert (
        coco.coco_map(predictions, truth, ids, max_detections=(1, 10, 10))["map50"] != _ours(predictions, truth, ids)[1]
    )
    with pytest.raises(ValueError, match="three limits"):
        coco.coco_map(predictions, truth, ids, max_detections=10)


def test_image_order_and_ids():
    rng = np.random.default_rng(7)
    truth, predictions, ids = _split(rng, 12, 4)
    predictions["scores"] = np.full_like(predictions["scores"], 0.5)  # The image order decides equal scores.
    expected = _ours(predictions, truth, ids)
    np.testing.assert_allclose(expected, _pycocotools(predictions, truth, ids, 4), atol=1e-12)
    order = rng.permutation(12)
    shuffled = _ours({k: v[order] for k, v in predictions.items()}, {k: v[order] for k, v in truth.items()}, ids[order])
    np.testing.assert_array_equal(shuffled, expected)
    # Without ids the given order is the image order: ids in that order give the same.
    in_order = np.argsort(ids)
    pred_sorted, truth_sorted = ({k: v[in_order] for k, v in d.items()} for d in (predictions, truth))
    np.testing.assert_array_equal(_ours(pred_sorted, truth_sorted, None), expected)
    with pytest.raises(ValueError, match="unique"):
        coco.coco_map(predictions, truth, np.zeros(12, int))
    with pytest.raises(ValueError, match="one id per image"):
        coco.coco_map(predictions, truth, ids[:3])


def test_hand_cases():
    boxes = np.array([[[10, 10, 50, 60], [70, 20, 90, 40], [0, 0, 0, 0]], [[5, 5, 25, 25], [0, 0, 0, 0], [0, 0, 0, 0]]])
    truth = {"boxes": boxes, "classes": np.array([[0, 1, 0], [1, 0, 0]]), "valid": np.array([[1, 1, 0], [1, 0, 0]])}
    perfect = {"boxes": boxes, "scores": np.array([[0.9, 0.8, 0.7], [0.6, 0.5, 0.4]]), "classes": truth["classes"]}
    perfect["valid"] = truth["valid"]
    # The 40x50 object is medium, the 20x20 ones small; none is large.
    expected = {**{name: 1.0 for name in coco.STAT_NAMES}, "map_large": -1.0, "mar_large": -1.0}
    assert coco.coco_map(perfect, truth) == pytest.approx(expected, abs=1e-15)  # Precision 1 is 1 / (1 + eps).
    nothing = {**perfect, "valid": np.zeros((2, 3), bool)}
    assert set(coco.coco_map(nothing, truth).values()) == {0.0, -1.0}
    # One of the two class-1 objects found, the other missed: recall reaches 0.5 at precision 1.
    half = {**perfect, "valid": np.array([[1, 1, 0], [0, 0, 0]])}
    np.testing.assert_allclose(coco.coco_map(half, truth)["map50"], (1.0 + 51 / 101) / 2)
    # A box shifted to IoU 0.58 matches at .50 and .55 only, else it is a false positive after the class-1 hit;
    # detections of a class with no objects count for nothing.
    shifted = {k: v.astype(float) for k, v in perfect.items()}
    shifted["boxes"][1, 0] = [5, 5, 25, 5 + 20 / 0.58]
    shifted["classes"][0, 2], shifted["valid"][0, 2] = 3, True
    result = coco.coco_map(shifted, truth)
    half_ap = 51 / 101
    np.testing.assert_allclose([result["map50"], result["map75"]], [1.0, (1 + half_ap) / 2])
    np.testing.assert_allclose(result["map50_95"], (1.0 + (2 + 8 * half_ap) / 10) / 2)
    assert set(coco.coco_map(perfect, {**truth, "valid": np.zeros((2, 3), bool)}).values()) == {-1.0}


def test_ignored_ground_truth_like_pycocotools():
    """Boxes larger than the area range 'all' (1e10): ignored objects, ignored detections on them."""
    big = [0, 0, 1e5, 0.99e5]  # Area 9.9e9: a regular object.
    huge = [0, 0, 1e5, 1.02e5]  # Area 1.02e10: ignored.
    truth = {
        "boxes": np.array([[big, huge, [10, 10, 50, 50]], [huge, [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32),
        "classes": np.zeros((2, 3), np.int64),
        "valid": np.array([[1, 1, 1], [1, 0, 0]], bool),
    }
    predictions = {
        # A regular object wins over an ignored one of higher IoU; the next detection (area 7e9) matches the
        # ignored one up to IoU .686; in image 2 the best-scored detection only matches an ignored object, and a
        # huge one matches nothing.
        "boxes": np.array(
            [[[0, 0, 1e5, 1.01e5], [0, 0, 1e5, 0.7e5], [10, 10, 50, 50]], [huge, [0, 0, 2e5, 2e5], [10, 10, 50, 50]]],
            np.float32,
        ),
        "scores": np.array([[0.95, 0.9, 0.5], [0.99, 0.8, 0.6]], np.float32),
        "classes": np.zeros((2, 3), np.int64),
        "valid": np.ones((2, 3), bool),
    }
    ids = np.array([3, 8])
    expected = _pycocotools(predictions, truth, ids, 1)
    np.testing.assert_allclose(_ours(predictions, truth, ids), expected, atol=1e-12)
    assert 0 < expected[0] < 1


def test_equal_ious_go_to_the_later_object():
    # The first detection overlaps both objects at IoU 90/110; pycocotools gives it the later one, so the second
    # detection (the later object itself, IoU 80/120 with the first) misses at thresholds .70-.80.
    truth = {"boxes": np.array([[[0, 0, 10, 10], [2, 0, 12, 10]]], np.float32), "classes": np.zeros((1, 2), int)}
    predictions = {
        "boxes": np.array([[[1, 0, 11, 10], [2, 0, 12, 10]]], np.float32),
        "scores": np.array([[0.9, 0.8]], np.float32),
        "classes": np.zeros((1, 2), int),
        "valid": np.ones((1, 2), bool),
    }
    truth["valid"] = np.ones((1, 2), bool)
    expected = _pycocotools(predictions, truth, [1], 1)
    np.testing.assert_allclose(_ours(predictions, truth, [1]), expected, atol=1e-12)
    assert expected[2] < 1.0
