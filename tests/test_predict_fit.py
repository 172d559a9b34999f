"""jaxdl-predict on any photo: scikit-learn's china.jpg (640x427) through runs trained on 64 px and 8 px images.

Detection letterboxes the file and reports boxes in its pixels, segmentation
resizes it and writes a 640x427 mask, classification crops the centre square;
the fit is printed once, and `--fit=none` keeps the strict size check.
"""

import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.datasets
from PIL import Image

from jaxdl import checkpoint, experiment, predict, tasks
from jaxdl.data import images, transforms
from jaxdl.tasks.detection import Outputs
from tests import helpers
from tests.test_detection_runs import _yolov8
from tests.test_segmentation_runs import _shapes_unet

pytestmark = pytest.mark.slow  # End-to-end runs (shared with the detection and segmentation tests).

CHINA = Path(sklearn.datasets.__file__).parent / "images" / "china.jpg"
FLOWER = CHINA.with_name("flower.jpg")
WIDTH, HEIGHT = 640, 427


def _model_outputs(cfg, workdir, model_input: np.ndarray) -> np.ndarray:
    """The checkpoint's eval outputs for one model input [h, w, C] (float, already scaled)."""
    variables, _ = checkpoint.restore_variables(workdir)
    model = experiment.build_model(cfg, tasks.build_task(cfg))
    return np.asarray(model.apply(variables, model_input[None].astype(np.float32), train=False))


def _predict(capsys, workdir, out, *argv) -> tuple[int, list[dict], list[str]]:
    capsys.readouterr()  # Whatever training a shared run printed.
    code = predict.predict_cli([f"--workdir={workdir}", f"--out={out}", *map(str, argv)])
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err.strip().splitlines()


@pytest.fixture(scope="module")
def yolo_rescale_only(tmp_path_factory):
    """The shared tiny shapes_yolov8 run with the shipped config's eval transforms: rescale only (no resize)."""
    workdir, _ = helpers.shared_run(tmp_path_factory, "shapes_yolov8_tiny", _yolov8())
    copy = tmp_path_factory.mktemp("yolo") / "run"
    shutil.copytree(workdir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["dataset"]["eval_transforms"] = f"rescale(scale={1 / 255})"
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def test_detection_letterboxes_the_photo_and_maps_boxes_to_its_pixels(yolo_rescale_only, tmp_path, capsys):
    code, records, err = _predict(capsys, yolo_rescale_only, tmp_path, "--score_threshold=0.0", CHINA, FLOWER)
    assert code == 0 and len(records) == 2
    notices = [line for line in err if "fitted with" in line]
    assert notices == [
        f"jaxdl-predict: {CHINA}: 640x427 pixels, but the model takes 64x64: fitted with letterbox(size=64) "
        "before the eval transforms (--fit=none refuses)"
    ]
    # By hand: s = 64 / 640 = 0.1 makes the photo 64 x round(42.7) = 43 rows, pasted at row (64 - 43) // 2 = 10.
    photo = images.decode(CHINA)
    canvas = np.zeros((64, 64, 3), np.float32)
    canvas[10:53] = transforms.resized_crop(photo, (0, 0, HEIGHT, WIDTH), (43, 64))
    cfg = _yolov8()
    raw = _model_outputs(cfg, yolo_rescale_only, canvas / 255)
    task = experiment.Experiment(cfg, for_training=False).task
    found = {k: np.asarray(v)[0] for k, v in task.detections(Outputs(jnp.asarray(raw), (64, 64))).items()}
    valid = found["valid"]
    x0, y0, x1, y1 = found["boxes"][valid].T
    by_hand = np.stack([x0 * 10, (y0 - 10) * HEIGHT / 43, x1 * 10, (y1 - 10) * HEIGHT / 43], axis=1)
    by_hand = np.clip(by_hand, 0, [WIDTH, HEIGHT, WIDTH, HEIGHT])
    detections = records[0]["detections"]
    assert len(detections) == int(valid.sum()) > 0
    np.testing.assert_allclose([d["box"] for d in detections], by_hand, atol=0.02)
    assert [d["class"] for d in detections] == found["classes"][valid].tolist()
    assert Image.open(records[0]["boxes_image"]).size == (WIDTH, HEIGHT)


def test_segmentation_resizes_the_photo_and_writes_a_mask_of_its_size(tmp_path_factory, tmp_path, capsys):
    workdir, _ = helpers.shared_run(tmp_path_factory, "shapes_unet_tiny", _shapes_unet())
    code, [record], err = _predict(capsys, workdir, tmp_path, CHINA)
    assert code == 0 and any("fitted with resize(size=(64, 64))" in line for line in err)
    mask = np.asarray(Image.open(record["mask"]))
    assert mask.shape == (HEIGHT, WIDTH) and np.asarray(Image.open(record["overlay"])).shape == (HEIGHT, WIDTH, 3)
    assert sum(record["pixels_per_class"].values()) == HEIGHT * WIDTH
    model_input = transforms.resized_crop(images.decode(CHINA), (0, 0, HEIGHT, WIDTH), (64, 64)) / 255
    small = np.argmax(_model_outputs(_shapes_unet(), workdir, model_input)[0], axis=-1)
    # File pixel (y, x) has its centre in model pixel floor((y + 0.5) * 64 / 427), floor((x + 0.5) * 64 / 640).
    rows = np.floor((np.arange(HEIGHT) + 0.5) * 64 / HEIGHT).astype(int)
    cols = np.floor((np.arange(WIDTH) + 0.5) * 64 / WIDTH).astype(int)
    np.testing.assert_array_equal(mask, small[rows[:, None], cols[None, :]])


def test_fit_none_keeps_the_strict_size_check(tmp_path_factory, tmp_path, capsys):
    workdir, _ = helpers.shared_run(tmp_path_factory, "shapes_unet_tiny", _shapes_unet())
    code, records, err = _predict(capsys, workdir, tmp_path, "--fit=none", CHINA)
    assert code == 1 and records == []
    assert err == [
        f"jaxdl-predict: error: {CHINA}: 640x427 pixels, but the model takes 64x64 (its eval transforms do not resize)"
    ]


def test_classification_crops_the_centre_of_a_big_photo(tmp_path_factory, tmp_path, capsys):
    cfg = helpers.tiny_cnn(training__num_steps=4)
    workdir = helpers.shared_run(tmp_path_factory, "digits_tiny_cnn_4_steps", cfg)[0]
    code, [record], err = _predict(capsys, workdir, tmp_path, CHINA)
    assert code == 0 and any("fitted with center_crop(size=8, fraction=1.0)" in line for line in err)
    # The central 427 x 427 square (columns 106 .. 532) of the grey photo, resized to 8 x 8, scaled as digits are.
    grey = images.decode(CHINA, channels=1)
    model_input = transforms.resized_crop(grey, (0, (WIDTH - HEIGHT) // 2, HEIGHT, HEIGHT), (8, 8)) * 0.0625
    logits = _model_outputs(cfg, workdir, model_input)[0]
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert [p["class"] for p in record["top"]] == list(np.argsort(-expected)[:5])
    np.testing.assert_allclose([p["probability"] for p in record["top"]], np.sort(expected)[::-1][:5], rtol=1e-4)
