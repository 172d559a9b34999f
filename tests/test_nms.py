"""Greedy NMS against torchvision's `batched_nms`: kept set and order, jit, vmap, padding, postprocess."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from jaxdl.detection import nms as nms_lib

N = 160  # Boxes per case: <= 1000 keeps torchvision on its coordinate-trick path, whose order is nms's.
_nms = jax.jit(nms_lib.nms, static_argnames=("iou_threshold", "max_detections", "max_candidates"))


def _case(rng: np.random.Generator, num_classes: int, grid: bool):
    """Boxes crowded around a few centres (many overlaps), scores with ties, classes, a validity mask.

    On the integer grid every IoU is computed exactly in float32, so IoUs equal to the threshold occur and
    both sides must agree on them; off the grid the coordinates are arbitrary floats.
    """
    centres = rng.uniform(20, 100, size=(6, 2))[rng.integers(0, 6, size=N)]
    half = rng.uniform(3, 15, size=(N, 2))
    boxes = np.concatenate([centres - half, centres + half], axis=1) + rng.normal(0, 3, size=(N, 4))
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])  # Some boxes may be empty (zero width).
    if grid:
        boxes = np.round(boxes)
    boxes = boxes.astype(np.float32)
    scores = (rng.integers(0, 12, size=N) / 12 if rng.random() < 0.5 else rng.random(N)).astype(np.float32)
    classes = rng.integers(0, num_classes, size=N).astype(np.int32)
    valid = rng.random(N) < 0.9
    return boxes, scores, classes, valid


def _torchvision(boxes, scores, classes, valid, iou_threshold, max_detections):
    """Indices kept by torchvision's batched_nms among the valid boxes, the first `max_detections`."""
    index = np.flatnonzero(valid)
    kept = torchvision.ops.batched_nms(
        torch.from_numpy(boxes[index]), torch.from_numpy(scores[index]), torch.from_numpy(classes[index]), iou_threshold
    )
    return index[kept.numpy()][:max_detections]


def _kept(indices, keep):
    indices, keep = np.asarray(indices), np.asarray(keep)
    assert not np.any(keep[np.argmin(keep) :]) or keep.all(), "kept slots must come first"
    assert np.all(indices[~keep] == 0)
    return indices[keep]


@pytest.mark.parametrize("grid", [True, False])
def test_matches_torchvision_batched_nms(grid):
    rng = np.random.default_rng(1 + grid)
    for case in range(40):
        num_classes = [1, 2, 5][case // 2 % 3]
        boxes, scores, classes, valid = _case(rng, num_classes, grid)
        threshold, max_det = [(0.3, N), (0.5, 5), (0.7, 30)][case % 3]  # Few shapes to compile.
        expected = _torchvision(boxes, scores, classes, valid, threshold, max_det)
        indices, keep = _nms(boxes, scores, threshold, max_detections=max_det, valid=valid, classes=classes)
        np.testing.assert_array_equal(_kept(indices, keep), expected, err_msg=f"case {case}")
        if num_classes == 1:  # Without classes every box is one class.
            indices, keep = _nms(boxes, scores, threshold, max_detections=max_det, valid=valid)
            np.testing.assert_array_equal(_kept(indices, keep), expected)


def test_jit_and_vmap_match_torchvision():
    rng = np.random.default_rng(3)
    cases = [_case(rng, 3, grid=bool(i % 2)) for i in range(8)]
    boxes, scores, classes, valid = (np.stack(x) for x in zip(*cases, strict=True))
    max_det = 40
    run = jax.jit(functools.partial(nms_lib.nms, max_detections=max_det))
    one = lambda b, s, t, v, c: nms_lib.nms(b, s, t, max_det, valid=v, classes=c)
    b_indices, b_keep = jax.jit(jax.vmap(one, in_axes=(0, 0, None, 0, 0)))(boxes, scores, 0.5, valid, classes)
    for i in range(len(cases)):
        expected = _torchvision(boxes[i], scores[i], classes[i], valid[i], 0.5, max_det)
        indices, keep = run(boxes[i], scores[i], 0.5, valid=valid[i], classes=classes[i])
        np.testing.assert_array_equal(_kept(indices, keep), expected)
        np.testing.assert_array_equal(_kept(b_indices[i], b_keep[i]), expected)


def test_threshold_is_strict_and_ties_go_to_the_lower_index():
    # IoU of the first two boxes is 50 / 100 = 0.5 exactly; the third is a copy of the first.
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.5, 0.9, 0.5, 0.5], np.float32)
    classes = np.zeros(4, np.int32)
    for threshold, expected in [(0.5, [1, 0, 3]), (0.4999, [1, 3])]:
        indices, keep = nms_lib.nms(boxes, scores, threshold, 4)
        assert _kept(indices, keep).tolist() == expected  # Box 2 ties with box 0 and comes after it.
        assert _torchvision(boxes, scores, classes, np.ones(4, bool), threshold, 4).tolist() == expected
    indices, keep = nms_lib.nms(boxes, scores, 0.4999, 4, classes=np.array([0, 1, 0, 0]))
    assert _kept(indices, keep).tolist() == [1, 0, 3]
    # A float32 IoU of 1/3 is 0.33333334 > 1/3: torchvision compares it with its double threshold and suppresses.
    boxes[1] = [5, 0, 15, 10]
    assert _torchvision(boxes, scores, classes, np.ones(4, bool), 1 / 3, 4).tolist() == [1, 3]
    indices, keep = nms_lib.nms(boxes, scores, 1 / 3, 4)
    assert _kept(indices, keep).tolist() == [1, 3]


def test_padding_invalid_boxes_and_max_candidates():
    rng = np.random.default_rng(4)
    boxes, scores, classes, valid = _case(rng, 2, grid=True)
    # Invalid boxes neither survive nor suppress, even with the top score.
    scores = scores.copy()
    scores[~valid] = 2.0
    indices, keep = nms_lib.nms(boxes, scores, 0.5, 2 * N, valid=valid, classes=classes)
    kept = _kept(indices, keep)
    assert keep.shape == (2 * N,) and indices.dtype == jnp.int32 and not keep[-N:].any()
    np.testing.assert_array_equal(kept, _torchvision(boxes, scores, classes, valid, 0.5, N))
    # max_candidates: only the K best valid boxes (stable order) take part.
    top = np.flatnonzero(valid)[np.argsort(-scores[valid], kind="stable")][:50]
    only_top = np.zeros(N, bool)
    only_top[top] = True
    indices, keep = nms_lib.nms(boxes, scores, 0.5, 20, valid=valid, classes=classes, max_candidates=50)
    np.testing.assert_array_equal(_kept(indices, keep), _torchvision(boxes, scores, classes, only_top, 0.5, 20))
    # Nothing valid, and no boxes at all.
    indices, keep = nms_lib.nms(boxes, scores, 0.5, 7, valid=np.zeros(N, bool))
    assert not keep.any() and not indices.any()
    indices, keep = nms_lib.nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5, 3)
    assert indices.shape == keep.shape == (3,) and not keep.any()


def test_postprocess_hand_case():
    boxes = np.array(
        [
            [
                [0, 0, 10, 10],  # Class 0 at 0.9.
                [1, 0, 11, 10],  # Overlaps anchor 0 (IoU 0.82), class 0 at 0.8: suppressed; class 1 at 0.7.
                [30, 30, 40, 40],  # Class 1 at 0.6.
                [30, 30, 40, 40],  # Below the score threshold everywhere.
            ],
            [[0, 0, 5, 5], [0, 0, 5, 5], [20, 20, 30, 30], [0, 0, 1, 1]],
        ],
        np.float32,
    )
    scores = np.zeros((2, 4, 3), np.float32)
    scores[0, 0, 0], scores[0, 1, 0], scores[0, 1, 1], scores[0, 2, 1] = 0.9, 0.8, 0.7, 0.6
    scores[0, 3] = 0.0005
    scores[1, 0, 2], scores[1, 1, 2], scores[1, 2, 0] = 0.5, 0.5, 0.4  # Anchors 0 and 1 tie: 0 wins.
    out = jax.jit(functools.partial(nms_lib.postprocess, max_detections=4))(boxes, scores)
    assert set(out) == {"boxes", "scores", "classes", "valid"}
    np.testing.assert_array_equal(out["valid"], [[True, True, False, False], [True, True, False, False]])
    np.testing.assert_array_equal(out["classes"], [[0, 1, 0, 0], [2, 0, 0, 0]])
    np.testing.assert_allclose(out["scores"], [[0.9, 0.6, 0, 0], [0.5, 0.4, 0, 0]])
    np.testing.assert_array_equal(out["boxes"][0, :2], boxes[0, [0, 2]])
    np.testing.assert_array_equal(out["boxes"][1, :2], boxes[1, [0, 2]])
    assert not out["boxes"][:, 2:].any()

    # multi_label: anchor 1's class-1 score is a candidate of its own, not suppressed by class 0.
    out = nms_lib.postprocess(boxes, scores, max_detections=4, multi_label=True)
    np.testing.assert_array_equal(out["valid"][0], [True, True, True, False])
    np.testing.assert_array_equal(out["classes"][0, :3], [0, 1, 1])
    np.testing.assert_allclose(out["scores"][0, :3], [0.9, 0.7, 0.6])
    np.testing.assert_array_equal(out["boxes"][0, :3], boxes[0, [0, 1, 2]])
    # A higher threshold and fewer slots.
    out = nms_lib.postprocess(boxes, scores, score_threshold=0.65, max_detections=1, multi_label=True)
    np.testing.assert_array_equal(out["valid"], [[True], [False]])
    np.testing.assert_allclose(out["scores"], [[0.9], [0.0]])
