"""Times jaxdl's COCO evaluator against pycocotools (and faster-coco-eval where installed) on one random split.

  python experiments/benchmark_coco.py [--images 5000] [--detections 100] [--classes 80]

The split is COCO-like: up to 15 objects per image of 80 classes in all three
size ranges, 5% crowds; each image has `--detections` detections, jittered
copies of its objects and background boxes. Each evaluator gets the same
arrays (the references through COCO's JSON structures, built before the clock
starts) and reports its twelve numbers; the script prints each one's seconds
and the largest difference of its numbers from pycocotools'.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxdl.detection import coco  # noqa: E402


def make_split(num_images: int, num_detections: int, num_classes: int, seed: int = 0) -> tuple[dict, dict, np.ndarray]:
    """Padded ground truths, predictions and image ids of a random COCO-like split."""
    rng = np.random.default_rng(seed)
    slots = 15
    num_gt = rng.integers(0, slots + 1, num_images)
    xy = rng.uniform(0, 500, (num_images, slots, 2))
    wh = np.exp(rng.uniform(np.log(4), np.log(300), (num_images, slots, 2)))  # Small, medium and large.
    truth = {
        "boxes": np.concatenate([xy, xy + wh], -1).astype(np.float32),
        "classes": rng.integers(0, num_classes, (num_images, slots)),
        "valid": np.arange(slots) < num_gt[:, None],
        "crowd": rng.random((num_images, slots)) < 0.05,
    }
    truth["area"] = np.prod(wh, -1) * rng.uniform(0.5, 1.0, (num_images, slots))  # Segment areas: under the box's.
    # Detections: jittered objects (cycled), then background boxes.
    source = np.minimum(np.arange(num_detections)[None, :] % np.maximum(num_gt, 1)[:, None], slots - 1)
    jitter = rng.normal(0, 0.1, (num_images, num_detections, 4)) * np.tile(
        np.take_along_axis(wh, source[..., None], 1), 2
    )
    boxes = np.take_along_axis(truth["boxes"], source[..., None], 1) + jitter
    background = rng.random((num_images, num_detections)) < np.where(num_gt[:, None] > 0, 0.5, 1.0)
    bxy = rng.uniform(0, 500, (num_images, num_detections, 2))
    bwh = np.exp(rng.uniform(np.log(4), np.log(300), (num_images, num_detections, 2)))
    boxes = np.where(background[..., None], np.concatenate([bxy, bxy + bwh], -1), boxes)
    boxes[..., 2:] = np.maximum(boxes[..., 2:], boxes[..., :2] + 1)
    classes = np.take_along_axis(truth["classes"], source, 1)
    classes = np.where(
        background | (rng.random(classes.shape) < 0.1), rng.integers(0, num_classes, classes.shape), classes
    )
    predictions = {
        "boxes": boxes.astype(np.float32),
        "scores": rng.random((num_images, num_detections)).astype(np.float32),
        "classes": classes,
        "valid": np.ones((num_images, num_detections), bool),
    }
    return truth, predictions, np.arange(1, num_images + 1)


def reference(module: str, annotations: dict, results: list) -> tuple[np.ndarray, float]:
    """The twelve stats of pycocotools' or faster-coco-eval's COCOeval and the seconds they took."""
    if module == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    else:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = annotations
        truth.createIndex()
        detections = truth.loadRes(results)
        start = time.perf_counter()
        evaluation = COCOeval(truth, detections, iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        seconds = time.perf_counter() - start
    return np.asarray(evaluation.stats[:12]), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--skip_pycocotools", action="store_true")
    args = parser.parse_args()
    truth, predictions, ids = make_split(args.images, args.detections, args.classes)
    print(f"{args.images} images, {int(truth['valid'].sum())} objects, {int(predictions['valid'].sum())} detections")
    start = time.perf_counter()
    ours = np.array(list(coco.coco_map(predictions, truth, ids).values()))
    rows = [("jaxdl", time.perf_counter() - start, ours)]
    annotations = coco.annotations_json(truth, ids, args.classes)
    results = coco.results_json(predictions, ids)
    modules = [] if args.skip_pycocotools else ["pycocotools"]
    try:
        import faster_coco_eval  # noqa: F401

        modules.append("faster_coco_eval")
    except ImportError:
        print("faster-coco-eval is not installed: skipped")
    for module in modules:
        stats, seconds = reference(module, annotations, results)
        rows.append((module, seconds, stats))
    base = rows[1][2] if len(rows) > 1 and rows[1][0] == "pycocotools" else None
    for name, seconds, stats in rows:
        difference = "" if base is None else f"  max |diff| vs pycocotools {np.abs(stats - base).max():.1e}"
        print(f"{name:>18}: {seconds:7.2f} s  map50_95 {stats[0]:.6f}{difference}")


if __name__ == "__main__":
    main()
