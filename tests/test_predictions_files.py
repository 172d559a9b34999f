"""`jaxdl-eval --predictions`: files pycocotools scores to jaxdl's numbers, mask PNGs with IoUs, top-k CSVs."""

import contextlib
import csv
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from jaxdl import main
from jaxdl.detection import coco
from tests import helpers
from tests.test_detection_runs import _yolov8
from tests.test_segmentation_runs import _shapes_unet

pytestmark = pytest.mark.slow  # End-to-end runs; `-m "not slow"` leaves them out.


def _eval(capsys, workdir, path) -> dict:
    """jaxdl-eval's printed metrics with --predictions=path."""
    capsys.readouterr()  # Whatever training a shared run printed.
    assert main.eval_cli([f"--workdir={workdir}", f"--predictions={path}"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.reference
def test_detections_file_scored_by_pycocotools_equals_jaxdl(tmp_path_factory, tmp_path, capsys):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    workdir, _ = helpers.shared_run(tmp_path_factory, "shapes_yolov8_tiny", _yolov8())
    # Every candidate box counts (score >= 0): the 4-step model's scores are low.
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["task"]["score_threshold"] = 0.0
    (copy / "config.json").write_text(json.dumps(config))
    path = tmp_path / "out" / "test.json"
    metrics = _eval(capsys, copy, path)
    results = json.loads(path.read_text())
    assert len(results) >= 16 and set(results[0]) == {"image_id", "category_id", "bbox", "score"}
    assert {r["category_id"] for r in results} <= {1, 2, 3}  # The dataset's own ids (box_class_offset 1).
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(path.with_name("test.gt.json")))
        evaluation = COCOeval(truth, truth.loadRes(str(path)), iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert len(truth.getImgIds()) == 16 and truth.getAnnIds()
    np.testing.assert_allclose(evaluation.stats, [metrics[k] for k in coco.STAT_NAMES], atol=1e-12)


def test_segmentation_masks_and_iou_table(tmp_path_factory, tmp_path, capsys):
    workdir, _ = helpers.shared_run(tmp_path_factory, "shapes_unet_tiny", _shapes_unet())
    folder = tmp_path / "masks"
    metrics = _eval(capsys, workdir, folder)
    pngs = sorted(folder.glob("*.png"), key=lambda p: int(p.stem))
    assert [p.stem for p in pngs] == [str(i) for i in range(16)]
    mask = np.asarray(Image.open(pngs[0]))
    assert mask.shape == (64, 64) and mask.max() < 4
    rows = list(csv.DictReader((folder / "iou.csv").open()))
    assert [int(r["class"]) for r in rows] == [0, 1, 2, 3]
    for row in rows:
        key = f"iou_{row['class']}"
        assert (row["iou"] == "") == (key not in metrics)
        if row["iou"]:
            assert float(row["iou"]) == pytest.approx(metrics[key], abs=1e-12)
    tp = sum(int(r["true_positive"]) for r in rows)
    assert tp / (tp + sum(int(r["false_negative"]) for r in rows)) == pytest.approx(metrics["pixel_accuracy"])


def _digits_run(tmp_path_factory):
    return helpers.shared_run(tmp_path_factory, "digits_tiny_cnn_4_steps", helpers.tiny_cnn(training__num_steps=4))[0]


def test_classification_top_k_and_confusion_matrix(tmp_path_factory, tmp_path, capsys):
    path = tmp_path / "digits.csv"
    metrics = _eval(capsys, _digits_run(tmp_path_factory), path)
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == [
        "image_id", "label", *(f"class_{r}" for r in range(1, 6)), *(f"probability_{r}" for r in range(1, 6))
    ]  # fmt: skip
    probabilities = np.array([[float(r[f"probability_{k}"]) for k in range(1, 6)] for r in rows])
    assert (np.diff(probabilities, axis=1) <= 0).all() and (probabilities.sum(axis=1) <= 1 + 1e-9).all()
    with (tmp_path / "digits.confusion.csv").open() as file:
        confusion = np.array([row[1:] for row in list(csv.reader(file))[1:]], int)
    assert confusion.shape == (10, 10) and confusion.sum() == len(rows)
    assert np.trace(confusion) / len(rows) == pytest.approx(metrics["accuracy"], abs=1e-6)
    labels = np.array([int(r["label"]) for r in rows])
    np.testing.assert_array_equal(confusion.sum(axis=1), np.bincount(labels, minlength=10))


def test_a_predictions_path_that_cannot_be_written_is_one_line(tmp_path_factory, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    path = blocker / "preds.csv"
    workdir = _digits_run(tmp_path_factory)
    capsys.readouterr()
    assert main.eval_cli([f"--workdir={workdir}", f"--predictions={path}"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"jaxdl-eval: error: --predictions={path}: cannot write")
    assert captured.out == ""  # Refused before evaluating.
