"""Detection end to end on tiny variants: configs, exact resume, jaxdl-predict, TrainedRun, the figure, wrong heads."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxdl import checkpoint, experiment, predict, tasks, train
from jaxdl.errors import ConfigError
from jaxdl.tasks.detection import Outputs
from jaxdl.trained import TrainedRun
from tests import helpers

pytestmark = pytest.mark.slow  # End-to-end runs; `-m "not slow"` leaves them out.

SMALL = dict(
    dataset__split_sizes=(48, 16, 16),
    # letterbox is the identity on the 64 px shapes images; it lets jaxdl-predict take other sizes.
    dataset__eval_transforms=f"letterbox(size=64)|rescale(scale={1 / 255})",
    schedule__warmup_steps=0,
    **helpers.SHORT_RUN,
)


def _yolov8(**overrides):
    return helpers.config("shapes_yolov8n", **{**SMALL, "model__name": "yolov8_tiny", **overrides})


@pytest.fixture(scope="module")
def yolo_run(tmp_path_factory):
    return helpers.shared_run(tmp_path_factory, "shapes_yolov8_tiny", _yolov8())


def test_shapes_yolov8_reports_coco_metrics_and_picks_by_map(yolo_run):
    workdir, results = yolo_run
    assert {"loss", "map50_95", "map50", "map75"} <= set(results["test"])
    assert all(0 <= results["test"][k] <= 1 for k in ("map50_95", "map50", "map75"))
    assert results["best_metric"] == "val/map50_95"
    lines = helpers.metrics_lines(workdir)
    train_lines = [line for line in lines if "train/box_loss" in line]
    assert len(train_lines) == 4 and all(np.isfinite(line["train/dfl_loss"]) for line in train_lines)
    vals = [line for line in lines if "val/map50_95" in line]
    best = max(vals, key=lambda line: line["val/map50_95"])
    assert results["best_step"] == best["step"]


def _yolov1(**overrides):
    return helpers.config(
        "shapes_yolov1", **{**SMALL, "model__name": "yolov1_tiny", "model__kwargs": "{}", **overrides}
    )


@pytest.fixture(scope="module")
def yolov1_run(tmp_path_factory):
    return helpers.shared_run(tmp_path_factory, "shapes_yolov1_tiny", _yolov1())


def test_shapes_yolov1_runs_on_the_tiny_variant(yolov1_run):
    workdir, results = yolov1_run
    assert np.isfinite(results["test"]["loss"]) and 0 <= results["test"]["map50"] <= 1
    lines = [line for line in helpers.metrics_lines(workdir) if "train/no_object_loss" in line]
    assert lines and np.isfinite(lines[-1]["train/xy_loss"])


def test_map_on_8_devices_equals_one_device(yolo_run, tmp_path, strategy="pmap"):
    """The host evaluator gathers every image's detections from all 8 devices (pmap, whose per-device outputs are
    reshaped on the host; jit's are global arrays): the same mAP as on one."""
    workdir, results = yolo_run
    config = json.loads((workdir / "config.json").read_text())
    config["parallel"].update(num_devices=8, strategy=strategy)
    copy = tmp_path / "eight"
    shutil.copytree(workdir, copy)
    (copy / "config.json").write_text(json.dumps(config))
    metrics = train.evaluate_workdir(copy)
    for key in ("map50_95", "map50", "map75"):
        assert metrics[key] == pytest.approx(results["test"][key], abs=1e-6), key


def test_detection_resume_after_crash_equals_uninterrupted_run(tmp_path, yolov1_run):
    """On yolov1_tiny: compiling yolov8's many convolutions twice more would double this file's time."""
    helpers.assert_resume_equals(_yolov1(), *yolov1_run, tmp_path / "resumed")


def test_predict_reports_the_task_detections_in_the_file_pixels(yolo_run, tmp_path, capsys):
    """A 64 px test image and the same image at 128 px (pixels doubled): the same detections, boxes x2."""
    workdir, _ = yolo_run
    cfg = _yolov8()
    run = experiment.Experiment(cfg, for_training=False)
    image = np.asarray(run.splits.source("test")[0]["image"])
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    Image.fromarray(image).save(small)
    Image.fromarray(image).resize((128, 128), Image.NEAREST).save(large)
    argv = [f"--workdir={workdir}", f"--out={tmp_path / 'out'}", "--score_threshold=0.0", str(small), str(large)]
    assert predict.predict_cli(argv) == 0
    first, second = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    # What the task keeps for this image, computed here from the checkpoint.
    variables, _ = checkpoint.restore_variables(workdir)
    model = experiment.build_model(cfg, tasks.build_task(cfg))
    raw = model.apply(variables, image[None].astype(np.float32) / 255, train=False)
    found = {k: np.asarray(v)[0] for k, v in run.task.detections(Outputs(jnp.asarray(raw), (64, 64))).items()}
    valid = found["valid"]
    assert len(first["detections"]) == int(valid.sum()) > 0
    np.testing.assert_allclose([d["box"] for d in first["detections"]], found["boxes"][valid], atol=0.01)
    assert [d["class"] for d in first["detections"]] == found["classes"][valid].tolist()
    np.testing.assert_allclose([d["score"] for d in first["detections"]], found["scores"][valid], atol=1e-4)
    assert [d["class"] for d in second["detections"]] == [d["class"] for d in first["detections"]]
    np.testing.assert_allclose(
        [d["box"] for d in second["detections"]], 2 * np.array([d["box"] for d in first["detections"]]), atol=0.02
    )
    assert Image.open(second["boxes_image"]).size == (128, 128)
    names = ("circle", "square", "triangle")
    assert [d["name"] for d in first["detections"]] == [names[c] for c in found["classes"][valid]]


def test_trained_run_opens_a_detection_workdir(yolo_run):
    """The shapes builder's names less box_class_offset; the best variables; the task's detections of its outputs."""
    workdir, results = yolo_run
    run = TrainedRun.open(workdir, task_type=tasks.Detection)
    assert run.step == results["best_step"] and run.class_names == ("circle", "square", "triangle")
    variables, _ = checkpoint.restore_variables(workdir)
    helpers.assert_trees_close(run.variables, variables, rtol=0, atol=0)
    batch = next(iter(run.eval_batches()))
    raw = run.model.apply(variables, batch["input"], train=False)
    np.testing.assert_allclose(np.asarray(run.outputs(batch["input"])), np.asarray(raw), rtol=1e-4, atol=1e-4)
    assert len(run.eval_transforms()) == 2  # letterbox, rescale


def test_show_detections_draws_the_grid(yolo_run, tmp_path):
    workdir, _ = yolo_run
    show = helpers.load_experiment("show_detections")
    out = show.show(workdir, num=3, score=0.0, out=tmp_path / "grid.png")
    assert Image.open(out).size[0] > 300


def test_full_size_detection_configs_build():
    for name in ("shapes_yolov8n", "shapes_yolov1", "coco_yolov8n"):
        helpers.build_without_data(helpers.config(name))


def test_a_model_without_the_task_head_is_one_line():
    with pytest.raises(ConfigError, match=r"model.name='yolov8n' does not give the 'yolov1' outputs"):
        helpers.build_without_data(helpers.config("shapes_yolov8n", task__head="yolov1"))
    with pytest.raises(ConfigError, match=r"model.name='resnet18' does not give the 'yolov8' outputs .*not a detector"):
        helpers.build_without_data(helpers.config("shapes_yolov8n", model__name="resnet18"))
    with pytest.raises(ConfigError, match="needs objects as targets"):
        helpers.build_without_data(helpers.config("shapes_unet", task__name="detection"))


# A few steps, evaluated once at the end: enough to show the option reaches the loss, NMS and mAP.
FEW_STEPS = dict(training__num_steps=2, training__eval_every_steps=0, training__checkpoint_every_steps=2)


def test_reg_max_8_from_the_command_line_trains(tmp_path):
    """yolov8_tiny with 8 DFL bins a side: the task's loss and decoding are the model's head's, not 16 bins'."""
    results = train.train_and_evaluate(_yolov8(model__kwargs__reg_max=8, **FEW_STEPS), tmp_path / "run")
    assert results["final_step"] == 2 and np.isfinite(results["test"]["loss"])
    assert 0 <= results["test"]["map50_95"] <= 1
    params, _ = helpers.saved_params(tmp_path / "run")
    assert params["head"]["box_0_2"]["kernel"].shape[-1] == 4 * 8 and params["head"]["dfl"].shape == (1, 1, 8, 1)
    lines = [line for line in helpers.metrics_lines(tmp_path / "run") if "train/dfl_loss" in line]
    assert len(lines) == 2 and all(np.isfinite(line["train/dfl_loss"]) for line in lines)


def test_three_boxes_per_cell_from_the_command_line_trains(tmp_path):
    """yolov1_tiny with B=3: 3 * 5 + C channels a cell, read by the model's head in the loss and the decoding."""
    results = train.train_and_evaluate(_yolov1(model__kwargs__boxes_per_cell=3, **FEW_STEPS), tmp_path / "run")
    assert results["final_step"] == 2 and np.isfinite(results["test"]["loss"])
    assert 0 <= results["test"]["map50"] <= 1
    params, _ = helpers.saved_params(tmp_path / "run")
    assert params["fc2"]["kernel"].shape[-1] == 4 * 4 * (3 * 5 + 3)  # yolov1_tiny's 4 x 4 grid, 3 classes.


def test_a_head_option_the_head_cannot_use_is_one_line():
    with pytest.raises(ConfigError, match=r"^config.model.kwargs.reg_max=0 is not valid; it must be >= 1$"):
        helpers.build_without_data(helpers.config("shapes_yolov8n", model__kwargs__reg_max=0))
    with pytest.raises(ConfigError, match=r"^config.model.kwargs.boxes_per_cell=0 is not valid; it must be >= 1$"):
        helpers.build_without_data(helpers.config("shapes_yolov1", model__kwargs__boxes_per_cell=0))


def test_an_input_size_the_model_cannot_take_is_one_line_before_compiling():
    """Sizes the transforms make, and (without a resize) the records' own size, are checked as the run is built."""
    letterbox = f"letterbox(size=100)|rescale(scale={1 / 255})"
    made = r"^config.dataset.eval_transforms='letterbox\(size=100\).*' makes inputs of 100x100, "
    refused = made + r"which config.model.name='yolov8_tiny' cannot take: .*multiples of 32"
    with pytest.raises(ConfigError, match=refused):
        experiment.Experiment(_yolov8(dataset__eval_transforms=letterbox))
    kept = r"^config.dataset.train_transforms has no resize or letterbox, so the shapes images stay at 64x64, "
    refused = kept + r"which config.model.name='unet_tiny' cannot take: .*divisible by 128"
    with pytest.raises(ConfigError, match=refused):
        unet = {"model__name": "unet_tiny", "model__kwargs__depth": 7, "dataset__eval_transforms": "rescale(scale=1)"}
        experiment.Experiment(helpers.config("shapes_unet", **{**SMALL, **unet}))


def test_fine_tuning_starts_from_an_ultralytics_file_with_new_classes(tmp_path):
    """`init_from` an 80-class ultralytics yolov8n: everything but the class logits loads into the 3-class model."""
    pytest.importorskip("ultralytics")
    from safetensors.numpy import save_file
    from ultralytics.nn.tasks import DetectionModel

    reference = DetectionModel("yolov8n.yaml", nc=80, verbose=False)
    path = tmp_path / "yolov8n_coco.safetensors"
    save_file({k: v.numpy() for k, v in reference.state_dict().items()}, str(path))
    cfg = _yolov8(model__name="yolov8n", model__kwargs="{'class_channels': 80}", init_from=str(path))
    run = experiment.Experiment(cfg)
    loaded = _flat(run.pretrained)
    kernel = reference.state_dict()["model.0.conv.weight"].numpy().transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(loaded["params/model_0/conv/kernel"], kernel)
    assert "params/head/cls_0_1/conv/kernel" in loaded  # The hidden class layers, as wide as the source's.
    assert not any(k.startswith("params/head/cls_0_2/") for k in loaded)  # 80 logits do not fit 3: fresh init.


def _flat(tree) -> dict:
    from flax import traverse_util

    return traverse_util.flatten_dict(tree, sep="/")


def test_coco_recipe_runs_under_mock_data(tmp_path):
    """coco_yolov8n's data path and loss on yolov8_tiny at 64 px: COCO-like records through tfds, two steps."""
    import tensorflow_datasets as tfds

    from tests.test_detection_data import _tfds_records

    records = _tfds_records(12, seed=5, crowd=True, num_classes=3)  # yolov8_tiny at 3 classes: a cached init.
    size = "size=64, fill=114"
    cfg = helpers.config(
        "coco_yolov8n",
        **{
            **SMALL,
            "model__name": "yolov8_tiny",
            "dtype": "float32",
            "task__num_classes": 3,
            "dataset__max_boxes": 5,
            "dataset__worker_count": 0,
            "dataset__train_transforms": f"letterbox({size})|rescale(scale={1 / 255})|mosaic(p=1.0)|random_flip()",
            "dataset__eval_transforms": f"letterbox({size})|rescale(scale={1 / 255})",
            "training__batch_size": 4,
            "training__num_steps": 2,
            "training__eval_every_steps": 0,
        },
    )
    with tfds.testing.mock_data(num_examples=12, as_data_source_fn=lambda self, split, **kw: records):
        results = train.train_and_evaluate(cfg, tmp_path / "coco")
    assert results["final_step"] == 2 and np.isfinite(results["test"]["loss"])
    assert 0 <= results["test"]["map50_95"] <= 1
