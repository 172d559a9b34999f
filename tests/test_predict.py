"""jaxdl-predict on image files (classification top-k, one-line errors per bad file) and TrainedRun on a classifier."""

import json

import numpy as np
import pytest
from PIL import Image

from jaxdl import checkpoint, experiment, predict, tasks
from jaxdl.data import datasets
from jaxdl.errors import WorkdirError
from jaxdl.trained import TrainedRun
from tests import helpers


@pytest.fixture(scope="module")
def digits_workdir(tmp_path_factory):
    return helpers.shared_run(tmp_path_factory, "digits_tiny_cnn_4_steps", helpers.tiny_cnn(training__num_steps=4))[0]


def test_classification_top5_are_the_model_probabilities(digits_workdir, tmp_path, capsys):
    source = datasets.load_source("digits", "test")
    images = [np.asarray(source[i]["image"]) for i in range(2)]
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"digit{i}.png")
        Image.fromarray(image[..., 0]).save(paths[-1])  # Raw values 0..16, as the records hold them.
    assert predict.predict_cli([f"--workdir={digits_workdir}", f"--out={tmp_path / 'out'}", *map(str, paths)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["file"] for line in lines] == list(map(str, paths))
    assert (tmp_path / "out" / "predictions.jsonl").read_text().count("\n") == 2
    cfg = helpers.tiny_cnn(training__num_steps=4)
    model = experiment.build_model(cfg, tasks.build_task(cfg))
    variables, _ = checkpoint.restore_variables(digits_workdir)
    for line, image in zip(lines, images, strict=True):
        logits = np.asarray(model.apply(variables, image[None].astype(np.float32) / 16, train=False))[0]
        expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert len(line["top"]) == 5
        assert [p["class"] for p in line["top"]] == list(np.argsort(-expected)[:5])
        assert [p["name"] for p in line["top"]] == [str(p["class"]) for p in line["top"]]  # digits' ClassLabel.
        np.testing.assert_allclose([p["probability"] for p in line["top"]], np.sort(expected)[::-1][:5], rtol=1e-5)


def test_bad_files_are_one_line_each_and_the_rest_are_predicted(digits_workdir, tmp_path, capsys):
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(good)
    Image.fromarray(np.zeros((12, 9, 3), np.uint8)).save(tmp_path / "large.png")
    (tmp_path / "text.png").write_text("not an image")
    files = [tmp_path / "missing.png", tmp_path / "text.png", good, tmp_path / "large.png"]
    assert predict.predict_cli([f"--workdir={digits_workdir}", "--fit=none", *map(str, files)]) == 1
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 3 and "Traceback" not in captured.err
    assert errors[0] == f"jaxdl-predict: error: {files[0]}: no such file"
    assert errors[1].startswith(f"jaxdl-predict: error: {files[1]}: not a readable image")
    assert errors[2] == f"jaxdl-predict: error: {files[3]}: 9x12 pixels, but the model takes 8x8 " + (
        "(its eval transforms do not resize)"
    )
    assert [json.loads(line)["file"] for line in captured.out.splitlines()] == [str(good)]


def test_workdir_of_another_task_is_a_one_line_error(tmp_path, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps(helpers.config("sunspots_lstm").to_dict()))
    assert predict.predict_cli([f"--workdir={workdir}", "x.png"]) == 2
    err = capsys.readouterr().err
    assert "trained for task 'forecasting'; jaxdl-predict takes classification, detection, segmentation" in err


def test_trained_run_opens_a_classification_workdir(digits_workdir):
    """Config, task, model, the best variables (no EMA), eval transforms and class names of the digits run."""
    run = TrainedRun.open(digits_workdir)
    cfg = helpers.tiny_cnn(training__num_steps=4)
    assert run.config.model.kwargs.to_dict() == cfg.model.kwargs.to_dict() and run.which == "best"
    assert isinstance(run.task, tasks.Classification) and run.task.num_classes == 10
    variables, step = checkpoint.restore_variables(digits_workdir, kinds=("best",))
    assert run.step == step and not run.uses_ema
    helpers.assert_trees_close(run.variables, variables, rtol=0, atol=0)
    assert run.class_names == tuple(str(k) for k in range(10))
    image = np.asarray(datasets.load_source("digits", "test")[0]["image"])
    (op,) = run.eval_transforms()
    model_input = op.map({"input": image[None]})["input"]
    np.testing.assert_allclose(model_input, image[None] / 16, rtol=1e-6)
    logits = run.model.apply(variables, model_input, train=False)
    np.testing.assert_allclose(np.asarray(run.outputs(model_input)), np.asarray(logits), rtol=1e-5, atol=1e-6)
    assert run.input_spec == {"shape": [8, 8, 1], "dtype": "uint8", "key": "image"}


def test_trained_run_refuses_another_task_and_a_workdir_without_checkpoints(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps(helpers.tiny_cnn().to_dict()))
    with pytest.raises(WorkdirError, match=r"was trained for task 'classification', not 'segmentation'$"):
        TrainedRun.open(workdir, task_type=tasks.Segmentation)
    run = TrainedRun.open(workdir, "latest")  # Opening reads the config only; the restore comes on first use.
    with pytest.raises(WorkdirError, match="holds no checkpoint"):
        _ = run.variables
    with pytest.raises(WorkdirError, match="holds no inputs.json"):
        _ = run.input_spec
    with pytest.raises(ValueError, match="which='newest' is not valid"):
        TrainedRun.open(workdir, "newest")
