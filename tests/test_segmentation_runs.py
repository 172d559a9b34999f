"""Segmentation end to end on tiny variants: every new config, exact resume, jaxdl-predict, TrainedRun, the figure."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxdl import checkpoint, experiment, predict, tasks, train
from jaxdl.trained import TrainedRun
from tests import helpers

pytestmark = pytest.mark.slow  # End-to-end runs; `-m "not slow"` leaves them out.

SMALL = dict(
    dataset__split_sizes=(48, 16, 16),
    **helpers.SHORT_RUN,
)
TINY_UNET = "{'width': 4, 'depth': 2, 'padding': 'same', 'batch_norm': True, 'image_size': 64}"


def _shapes_unet(**overrides):
    return helpers.config("shapes_unet", **{**SMALL, "model__kwargs": TINY_UNET, **overrides})


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory):
    return helpers.shared_run(tmp_path_factory, "shapes_unet_tiny", _shapes_unet())


def test_shapes_unet_reports_the_segmentation_metrics_and_picks_by_miou(unet_run):
    workdir, results = unet_run
    assert {"loss", "pixel_accuracy", "miou", "dice", "iou_0"} <= set(results["test"])
    assert results["best_metric"] == "val/miou"
    vals = [line for line in helpers.metrics_lines(workdir) if "val/miou" in line]
    best = max(vals, key=lambda line: line["val/miou"])  # The first of equals, as the loop keeps it.
    assert results["best_step"] == best["step"] and results["best_value"] == best["val/miou"]
    assert json.loads((workdir / "results.json").read_text())["test"] == results["test"]


def _pet_records(num: int) -> list[dict]:
    """Oxford-IIIT Pet-like records: images of several sizes, trimaps [H, W, 1] of the same size."""
    rng = np.random.default_rng(0)
    records = []
    for _ in range(num):
        h, w = (int(v) for v in rng.integers(40, 90, 2))
        trimap = np.full((h, w, 1), 2, np.uint8)
        trimap[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 3
        trimap[h // 4 + 2 : 3 * h // 4 - 2, w // 4 + 2 : 3 * w // 4 - 2] = 1
        records.append({"image": rng.integers(0, 256, (h, w, 3)).astype(np.uint8), "segmentation_mask": trimap})
    return records


def test_unet_resnet_configs_run_on_the_tiny_encoder(tmp_path):
    """shapes_unet_resnet18 and pets_unet_resnet34 on unet_resnet_tiny (pets under mock_data)."""
    tiny = {**SMALL, "model__name": "unet_resnet_tiny"}
    results = train.train_and_evaluate(helpers.config("shapes_unet_resnet18", **tiny), tmp_path / "shapes")
    assert np.isfinite(results["test"]["loss"]) and 0 <= results["test"]["miou"] <= 1
    # Pets at 64 px; 4 output classes (its ids 0, 1 and the ignore id fit) share the compiled init above.
    cfg = helpers.config("pets_unet_resnet34", **tiny, task__num_classes=4)
    for key in ("train_transforms", "eval_transforms"):
        cfg.dataset[key] = cfg.dataset[key].replace("size=224", "size=64")
    cfg.model.kwargs.image_size = 64
    records = _pet_records(16)
    with tfds.testing.mock_data(num_examples=16, as_data_source_fn=lambda self, split, **kw: records):
        results = train.train_and_evaluate(cfg, tmp_path / "pets")
    assert {"miou", "iou_0", "iou_1"} <= set(results["test"]) and results["final_step"] == 4
    helpers.build_without_data(helpers.config("pets_unet_resnet34"))  # The full-size recipe builds.


def test_segmentation_resume_after_crash_equals_uninterrupted_run(tmp_path, unet_run):
    helpers.assert_resume_equals(_shapes_unet(), *unet_run, tmp_path / "resumed")


def test_predict_writes_the_mask_the_model_predicts(unet_run, tmp_path, capsys):
    workdir, _ = unet_run
    cfg = _shapes_unet()
    run = experiment.Experiment(cfg, for_training=False)
    image = np.asarray(run.splits.source("test")[0]["image"])
    path = tmp_path / "shape.png"
    Image.fromarray(image).save(path)
    assert predict.predict_cli([f"--workdir={workdir}", f"--out={tmp_path / 'out'}", str(path)]) == 0
    record = json.loads(capsys.readouterr().out)
    mask = np.asarray(Image.open(record["mask"]))
    variables, _ = checkpoint.restore_variables(workdir)
    model = experiment.build_model(cfg, tasks.build_task(cfg))
    logits = np.asarray(model.apply(variables, image[None].astype(np.float32) / 255, train=False))[0]
    np.testing.assert_array_equal(mask, np.argmax(logits, axis=-1))
    overlay = np.asarray(Image.open(record["overlay"]))
    assert overlay.shape == (64, 64, 3) and sum(record["pixels_per_class"].values()) == 64 * 64


def test_trained_run_opens_a_segmentation_workdir(unet_run):
    workdir, results = unet_run
    run = TrainedRun.open(workdir, task_type=tasks.Segmentation)
    assert run.step == results["best_step"] and not run.uses_ema
    assert run.class_names == ("background", "circle", "square", "triangle")  # Declared by the shapes builder.
    variables, _ = checkpoint.restore_variables(workdir)
    helpers.assert_trees_close(run.variables, variables, rtol=0, atol=0)
    batch = next(iter(run.eval_batches()))  # The test split after the eval transforms.
    (op,) = run.eval_transforms()
    image = np.asarray(run.experiment.splits.source("test")[0]["image"])
    np.testing.assert_allclose(op.map({"input": image[None]})["input"][0], batch["input"][0], rtol=1e-6)
    logits = run.model.apply(variables, batch["input"], train=False)
    np.testing.assert_allclose(np.asarray(run.outputs(batch["input"])), np.asarray(logits), rtol=1e-5, atol=1e-5)


def test_show_segmentation_draws_the_grid(unet_run, tmp_path):
    workdir, _ = unet_run
    show = helpers.load_experiment("show_segmentation")
    out = show.show(workdir, num=3, out=tmp_path / "grid.png")
    assert Image.open(out).size[0] > 300
