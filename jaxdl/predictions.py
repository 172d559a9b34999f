"""`jaxdl-eval --predictions=PATH`: a trained run's predictions on a split, written as files other tools read.

What PATH holds depends on the run's task:

- detection: PATH is a COCO results JSON, one entry per kept detection
  (`image_id`, `category_id`, `bbox` as x, y, w, h in the pixels of the image
  as stored, the eval transforms' resize or letterbox undone, and `score`; not
  rounded). Beside it, PATH with the suffix `.gt.json` is the split's ground
  truth as a COCO annotation file (boxes in the same pixels, `iscrowd` and
  `area` where the dataset has them, else 0 and w*h), since jaxdl's datasets
  come without one: pycocotools' `COCOeval(gt, gt.loadRes(PATH), "bbox")`
  scores the two to the numbers jaxdl-eval prints (exactly when the eval
  transforms do not scale; a resize changes which objects count as small,
  medium or large, since jaxdl evaluates in the model's pixels).
- segmentation: PATH is a folder of `<image_id>.png`, the predicted class of
  every pixel of the image as the model saw it (8-bit, or 16-bit past 255
  classes), and `iou.csv`, the per-class table (true positive, false positive
  and false negative pixels, IoU; empty where a class is in neither truth
  nor prediction) whose IoUs are jaxdl-eval's `iou_k`.
- classification: PATH is a CSV of each example's top-k classes (k = 5, or
  the number of classes) with their probabilities, most likely first, and its
  label; PATH with the suffix `.confusion.csv` is the confusion matrix (rows:
  true class, columns: predicted class).

An image's id is its record index in the split, and category ids are the
dataset's own class ids (before `dataset.box_class_offset`). The predictions
are the model's eval outputs (EMA params where the run kept an EMA), as its
evaluation makes them; written by one process. A PATH that cannot be written
is one line naming it, before anything is evaluated.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import numpy as np

from jaxdl.data import transforms
from jaxdl.detection import coco
from jaxdl.errors import UserError
from jaxdl.tasks.classification import Classification
from jaxdl.tasks.detection import Detection
from jaxdl.tasks.segmentation import Segmentation, confusion_metrics

if TYPE_CHECKING:
    from jaxdl.trained import TrainedRun

TOP_K = 5


class PredictionsError(UserError):
    """A predictions path that cannot be written, or a run whose task writes none; names the path."""

    exit_code = 2


def _companion(path: Path, suffix: str) -> Path:
    """PATH's sibling file with `suffix` in place of PATH's own (preds.json -> preds.gt.json)."""
    return path.with_name(path.stem + suffix)


def _detection_paths(path: Path) -> tuple[list[Path], list[Path]]:
    return [path, _companion(path, ".gt.json")], []


def _segmentation_paths(path: Path) -> tuple[list[Path], list[Path]]:
    return [], [path]


def _classification_paths(path: Path) -> tuple[list[Path], list[Path]]:
    return [path, _companion(path, ".confusion.csv")], []


class PredictionsWriter:
    """Writes a trained run's predictions on a split to `path` (see the module); the path is checked at once."""

    def __init__(self, run: TrainedRun, path: str | Path):
        self.run, self.path = run, Path(path)
        entry = next((entry for task_type, entry in WRITERS.items() if isinstance(run.task, task_type)), None)
        if entry is None:
            takes = ", ".join(sorted(task_type.__name__.lower() for task_type in WRITERS))
            raise PredictionsError(
                f"--predictions={self.path}: {run.workdir} was trained for task '{run.config.task.name}'; "
                f"predictions files are written for {takes}"
            )
        paths, self._write = entry
        files, folders = paths(self.path)
        for target in folders:
            self._writable(target, folder=True)
        for target in files:
            self._writable(target, folder=False)
        self.files = files + folders

    def _writable(self, target: Path, folder: bool) -> None:
        """Creates `target` (a folder, or the folder of a file that is then opened for writing) or names why not."""
        try:
            if folder:
                target.mkdir(parents=True, exist_ok=True)
                probe = target / ".jaxdl-write-check"
                probe.touch()
                probe.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.open("a").close()  # Opened for appending: created if missing, checked writable, kept.
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise PredictionsError(f"--predictions={self.path}: cannot write {target} ({reason})") from None

    def write(self, split: str | None = None) -> list[Path]:
        """Writes the predictions of `split` (default: the test split); returns the paths written."""
        if jax.process_count() > 1:
            raise PredictionsError(f"--predictions={self.path}: predictions files are written by a one-process run")
        split = split or self.run.config.dataset.test_split
        self._write(self.run, split, self.path)
        return self.files


def _batches(run: TrainedRun, split: str) -> Iterator[tuple[np.ndarray, dict, jax.Array]]:
    """(record indices, batch, model outputs) of each eval batch of `split`, padding rows dropped from the indices.

    One process reads the split in order, each batch's real rows first, so the
    n-th real example is record n.
    """
    start = 0
    for batch in run.eval_batches(split):
        real = int(np.sum(batch["mask"] > 0))
        yield np.arange(start, start + real), batch, run.outputs(batch["input"])
        start += real


def _to_image_maps(run: TrainedRun) -> Callable[[tuple[int, int]], tuple[np.ndarray, np.ndarray]]:
    """(h, w) of a stored image -> (scale, shift) as (x, y) pairs taking model-input pixels to the stored image's.

    A one-pixel box at the image's centre goes through the eval transforms with
    an image of that size; each transform scales and shifts each axis, so how
    the box moves, inverted, is the map. Cached per size.
    """
    kinds = {"input": transforms.IMAGE, "boxes": transforms.BOXES, "box_valid": transforms.BOX_VALID}
    ops = run.eval_transforms(kinds)
    channels = run.input_spec["shape"][-1] if len(run.input_spec["shape"]) == 3 else 1
    cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def to_image(hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        if hw not in cache:
            h, w = hw
            probe = np.array([[[w / 2 - 0.5, h / 2 - 0.5, w / 2 + 0.5, h / 2 + 0.5]]], np.float32)
            batch = {"input": np.zeros((1, h, w, channels), np.uint8), "boxes": probe, "box_valid": np.ones((1, 1))}
            for op in ops:
                batch = op.map(batch)
            moved = np.asarray(batch["boxes"], np.float64)[0, 0]
            scale = moved[2:] - moved[:2]
            shift = moved[:2] - probe[0, 0, :2] * scale
            cache[hw] = (1 / scale, -shift / scale)
        return cache[hw]

    return to_image


def write_detections(run: TrainedRun, split: str, path: Path) -> None:
    """The split's kept detections as a COCO results JSON at `path`, its ground truth at PATH.gt.json."""
    task: Detection = run.task
    dataset = run.config.dataset
    category_ids = np.arange(task.num_classes) + dataset.box_class_offset
    # The records as stored (original pixels, crowds, areas): the first op of the split's pipeline reads them.
    read = run.experiment.splits.operations(split, train=False)[0]
    to_image = _to_image_maps(run)
    detect = jax.jit(lambda raw, inputs: task.detections(task.transform_outputs(raw, inputs), multi_label=True))
    results, truths, ids, sizes = [], [], [], []
    for indices, batch, outputs in _batches(run, split):
        found = {k: np.asarray(v)[: len(indices)] for k, v in detect(outputs, batch["input"]).items()}
        stored = read.map(indices)
        hw = [tuple(int(n) for n in np.shape(image)[:2]) for image in stored["input"]]
        boxes = np.asarray(found["boxes"], np.float64)
        for b, (h, w) in enumerate(hw):
            scale, shift = to_image((h, w))
            boxes[b] = np.clip(boxes[b] * np.tile(scale, 2) + np.tile(shift, 2), 0, [w, h, w, h])
        results += coco.results_json({**found, "boxes": boxes}, indices, category_ids)
        truth = {"boxes": stored["boxes"], "classes": stored["target"], "valid": stored["box_valid"] > 0}
        truth.update(
            {name: stored[key] for name, key in (("crowd", "box_crowd"), ("area", "box_area")) if key in stored}
        )
        truths.append(truth)
        ids.append(indices)
        sizes += hw
    path.write_text(json.dumps(results))
    truth = {k: np.concatenate([t[k] for t in truths]) for k in truths[0]}
    annotations = coco.annotations_json(truth, np.concatenate(ids), task.num_classes, category_ids, sizes)
    _companion(path, ".gt.json").write_text(json.dumps(annotations))


def write_segmentation(run: TrainedRun, split: str, path: Path) -> None:
    """Each image's predicted mask as PATH/<image_id>.png, and the per-class IoU table as PATH/iou.csv."""
    from PIL import Image

    task: Segmentation = run.task
    k = task.num_classes
    dtype = np.uint8 if k <= 256 else np.uint16
    confusion = np.zeros((k, k), np.int64)
    for indices, batch, outputs in _batches(run, split):
        masks = np.argmax(np.asarray(outputs)[: len(indices)], axis=-1)
        truth = np.asarray(batch["target"])[: len(indices)]
        labelled = (truth >= 0) & (truth < k)  # ignore_index lies outside [0, k).
        confusion += np.bincount(truth[labelled] * k + masks[labelled], minlength=k * k).reshape(k, k)
        for index, mask in zip(indices, masks, strict=True):
            Image.fromarray(mask.astype(dtype)).save(path / f"{index}.png")
    ious = confusion_metrics(confusion)
    names = run.class_names
    with open(path / "iou.csv", "w", newline="") as file:
        out = csv.writer(file)
        out.writerow(["class", "name", "true_positive", "false_positive", "false_negative", "iou"])
        for c in range(k):
            tp = confusion[c, c]
            row = [c, names[c] if names else "", tp, confusion[:, c].sum() - tp, confusion[c].sum() - tp]
            out.writerow([*row, repr(ious[f"iou_{c}"]) if f"iou_{c}" in ious else ""])


def write_classification(run: TrainedRun, split: str, path: Path) -> None:
    """Each example's top-k classes with probabilities as the CSV at `path`; the confusion matrix beside it."""
    task: Classification = run.task
    k, top = task.num_classes, min(TOP_K, task.num_classes)
    confusion = np.zeros((k, k), np.int64)
    with open(path, "w", newline="") as file:
        out = csv.writer(file)
        ranks = range(1, top + 1)
        out.writerow(["image_id", "label", *(f"class_{r}" for r in ranks), *(f"probability_{r}" for r in ranks)])
        for indices, batch, outputs in _batches(run, split):
            outputs, labels = np.asarray(outputs), np.asarray(batch["target"])
            for index, row, label in zip(indices, outputs, labels, strict=False):
                probabilities = task.probabilities(row)
                order = np.argsort(-probabilities, kind="stable")[:top]
                out.writerow([index, int(label), *order.tolist(), *(repr(float(p)) for p in probabilities[order])])
                confusion[int(label), int(order[0])] += 1
    with open(_companion(path, ".confusion.csv"), "w", newline="") as file:
        out = csv.writer(file)
        out.writerow(["true\\predicted", *range(k)])
        out.writerows([c, *confusion[c].tolist()] for c in range(k))


# Each task type: the paths it writes for PATH (files, folders) and its writer.
WRITERS: dict[type, tuple[Callable, Callable]] = {
    Detection: (_detection_paths, write_detections),
    Segmentation: (_segmentation_paths, write_segmentation),
    Classification: (_classification_paths, write_classification),
}
