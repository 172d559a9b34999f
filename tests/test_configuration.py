"""Config loading, command-line overrides and the one-line errors of bad configs."""

import json

import ml_collections
import pytest

from jaxdl import configuration, main
from tests import helpers

CONFIG = str(helpers.ROOT / "configs" / "digits_cnn.py")


def _train(tmp_path, capsys, *overrides):
    workdir = tmp_path / "run"
    code = main.train_cli([f"--config={CONFIG}", f"--workdir={workdir}", *overrides])
    err = capsys.readouterr().err.strip()
    return code, err, workdir


@pytest.mark.parametrize(
    "override,expected",
    [
        ("--config.optimizer.lrate=0.1", "unknown config key 'optimizer.lrate'; keys of optimizer: "),
        ("--config.seed=abc", "config.seed expects int, got 'abc'"),
        ("--config.training.progress_bar=maybe", "config.training.progress_bar expects a bool"),
        ("--config.model.name=resnet9000", "config.model.name='resnet9000' is not valid; choose one of: ar,"),
        ("--config.dataset.name=nope", "config.dataset.name='nope' is not a known dataset; choose one of: digits,"),
        ("--config.training.batch_size=12", "config.training.batch_size=12 is not divisible by the 8 devices"),
        ("--config.optimizer.learning_rate=-0.1", "config.optimizer.learning_rate=-0.1 is not valid; it must be > 0"),
        (
            "--config.optimizer.name=lbfgs",
            "config.optimizer.name='lbfgs' is not valid; choose one of: sgd, momentum,",
        ),
        ("--config.schedule.name=linear", "config.schedule.name='linear' is not valid; choose one of: constant,"),
        ("--config.parallel.strategy=pjit", "config.parallel.strategy='pjit' is not valid; choose one of: jit, pmap"),
        (
            "--config.dataset.train_transforms=blur()",
            "unknown transform 'blur'; choose one of: center_crop, letterbox,",
        ),
        ("--config.dataset.train_transforms=random_crop(pad=1)", "transform 'random_crop': "),
        ("--config.model.kwargs={'widht': 3}", "config.model.kwargs: "),
        ("--config.task.num_classes=1", "config.task.num_classes=1 is not valid; it must be >= 2"),
        ("--config.training.num_epochs=0", "config.training.num_epochs=0.0 is not valid; it must be > 0"),
    ],
)
def test_bad_config_stops_before_compute_with_one_line(tmp_path, capsys, override, expected):
    code, err, workdir = _train(tmp_path, capsys, override)
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("jaxdl-train: error: ")
    assert expected in err
    assert not workdir.exists()  # Nothing was started.


def test_missing_config_file(tmp_path, capsys):
    code = main.train_cli([f"--config={tmp_path / 'nope.py'}", f"--workdir={tmp_path / 'w'}"])
    assert code == 2
    assert "no such config file" in capsys.readouterr().err


def test_unprepared_tfds_dataset_gives_clear_error(tmp_path, capsys):
    code, err, _ = _train(
        tmp_path, capsys, "--config.dataset.name=mnist", f"--config.dataset.data_dir={tmp_path / 'empty'}"
    )
    assert code == 1
    assert "tfds dataset 'mnist'" in err and "tfds build mnist --file_format=array_record" in err


def test_overrides_are_typed():
    cfg = helpers.config("digits_cnn")
    configuration.apply_overrides(
        cfg,
        [
            "optimizer.learning_rate=1",  # An int where a float is expected stays a float.
            "training.progress_bar=true",
            "schedule.decay_boundaries=(0.3, 0.6)",
            "dataset.name=breast_cancer",
            "model.kwargs={'features': (8,), 'dropout_rate': 0.0}",
        ],
    )
    assert cfg.optimizer.learning_rate == 1.0 and isinstance(cfg.optimizer.learning_rate, float)
    assert cfg.training.progress_bar is True
    assert cfg.schedule.decay_boundaries == (0.3, 0.6)
    assert cfg.dataset.name == "breast_cancer"
    assert cfg.model.kwargs.to_dict() == {"features": (8,), "dropout_rate": 0.0}


def test_model_kwargs_take_every_field_of_the_model_parsed_by_its_type():
    """Fields shapes_yolov8n leaves at the model's defaults, as the README's fine-tuning advice sets them."""
    cfg = helpers.config("shapes_yolov8n")
    assert "class_channels" not in cfg.model.kwargs
    configuration.apply_overrides(cfg, ["model.kwargs.class_channels=80", "model.kwargs.reg_max=8"])
    assert cfg.model.kwargs.to_dict() == {"class_channels": 80, "reg_max": 8}
    configuration.apply_overrides(cfg, ["model.kwargs.class_channels=None", "model.kwargs.width_multiple=1"])
    assert cfg.model.kwargs.class_channels is None and cfg.model.kwargs.width_multiple == 1.0
    assert isinstance(cfg.model.kwargs.width_multiple, float)  # By the field's annotation: float.
    with pytest.raises(configuration.ConfigError, match=r"^config.model.kwargs.reg_max expects int, got '8.5'$"):
        configuration.apply_overrides(cfg, ["model.kwargs.reg_max=8.5"])
    with pytest.raises(configuration.ConfigError, match=r"^config.model.kwargs.class_channels expects int, got 'x'$"):
        configuration.apply_overrides(cfg, ["model.kwargs.class_channels=x"])
    # The kwargs are checked against the model the command line finally names, wherever model.name comes.
    cfg = helpers.config("shapes_yolov8n")
    overrides = ["model.kwargs.boxes_per_cell=3", "model.kwargs.grid_size=None", "model.name=yolov1_tiny"]
    configuration.apply_overrides(cfg, [*overrides, "model.kwargs.backbone_kwargs={'width': 8}"])
    assert cfg.model.kwargs.to_dict() == {"boxes_per_cell": 3, "grid_size": None, "backbone_kwargs": {"width": 8}}


@pytest.mark.parametrize(
    "override,expected",
    [
        (
            "model.kwargs.bogus=1",
            "unknown config key 'model.kwargs.bogus'; fields of model 'yolov8n': class_channels, depth_multiple, "
            "image_size, max_channels, reg_max, width_multiple",
        ),
        ("model.kwargs.num_outputs=3", "config.model.kwargs.num_outputs is set by the task; remove it"),
        ("model.kwargs.dtype=bfloat16", "config.model.kwargs.dtype is set from config.dtype; set that instead"),
        ("optimizer.bogus=1", "unknown config key 'optimizer.bogus'; keys of optimizer: b1, b2, eps,"),
        ("task.bogus=1", "unknown config key 'task.bogus'; keys of task: "),
    ],
)
def test_unknown_model_fields_and_other_sections_stay_strict(override, expected):
    cfg = helpers.config("shapes_yolov8n")
    with pytest.raises(configuration.ConfigError) as error:
        configuration.apply_overrides(cfg, [override])
    assert str(error.value).startswith(expected) and "\n" not in str(error.value)


def test_saved_config_round_trips_and_hash_is_stable(tmp_path):
    cfg = helpers.config("digits_cnn")
    configuration.save_config(cfg, tmp_path / "config.json")
    back = configuration.read_config(tmp_path / "config.json")
    assert configuration.config_hash(back) == configuration.config_hash(cfg)
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 0
    other = helpers.config("digits_cnn", seed=1)
    assert configuration.config_hash(other) != configuration.config_hash(cfg)


def test_config_saved_before_a_key_existed_reads_with_the_value_of_those_runs(tmp_path):
    """config.json of an older workdir lacks later keys; read_config fills them so old runs evaluate as they trained."""
    cfg = helpers.config("digits_cnn")
    configuration.save_config(cfg, tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())
    for key in ("remat", "fast_init", "ema", "mesh", "profile_steps", "transfer"):
        del saved[key]
    del saved["dataset"]["repeated_augmentations"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    back = configuration.read_config(tmp_path / "config.json")
    assert back.fast_init is False  # Those runs were initialised with threefry keys.
    assert (back.remat, back.ema.decay, back.mesh.fsdp, back.dataset.repeated_augmentations) == ("none", 0.0, 1, 1)
    assert back.transfer.freeze == "" and back.profile_steps == ()
    # Every filled key is a key of today's configs.
    base = helpers.config("digits_cnn")
    for dotted in configuration.ADDED_LATER:
        node = base
        for part in dotted.split("."):
            node = node[part]


@pytest.mark.slow
def test_every_shipped_config_builds():
    """Every shipped config builds; those on shipped data build whole, data and mesh included."""
    from jaxdl import experiment
    from jaxdl.data import datasets

    for path in sorted((helpers.ROOT / "configs").glob("*.py")):
        if path.stem in ("__init__", "base", "vision", "shapes"):  # Shared settings, not experiments.
            continue
        cfg = configuration.load_config(path)
        assert isinstance(cfg, ml_collections.ConfigDict)
        if cfg.task.num_classes == 0:  # Templates for a dataset on disk: counted when the run reads it.
            cfg.task.num_classes = 3
        helpers.build_without_data(cfg)
        if cfg.dataset.name in datasets.LOCAL_BUILDERS:
            experiment.Experiment(cfg)


def test_cli_trains_and_eval_cli_reports_the_same_test_metrics(tmp_path, capsys):
    code, _, workdir = _train(
        tmp_path,
        capsys,
        "--config.training.num_steps=3",
        "--config.parallel.num_devices=1",
        "--config.training.batch_size=16",
    )
    assert code == 0
    results = json.loads((workdir / "results.json").read_text())
    assert main.eval_cli([f"--workdir={workdir}"]) == 0
    assert json.loads(capsys.readouterr().out) == results["test"]


def test_eval_cli_on_a_folder_that_is_no_workdir(tmp_path, capsys):
    assert main.eval_cli([f"--workdir={tmp_path}"]) == 2
    assert "holds no config.json" in capsys.readouterr().err


def test_an_older_runs_box_ignore_key_is_read_as_its_crowd_key(tmp_path):
    """Renamed when crowds became ignore regions: an older COCO run's crowds stay crowds, not objects."""
    saved = json.loads(helpers.config("coco_yolov8n").to_json())
    saved["dataset"]["box_ignore_key"] = saved["dataset"].pop("box_crowd_key")
    del saved["dataset"]["box_area_key"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    dataset = configuration.read_config(tmp_path / "config.json").dataset
    assert (dataset.box_crowd_key, dataset.box_area_key) == ("objects/is_crowd", "")
    assert "box_ignore_key" not in dataset
