"""CSV tables (`dataset.name="csv"` with `dataset.label`): the shipped tables' split, train-only standardisation."""

import json

import numpy as np
import pandas as pd
import pytest

from jaxdl import experiment, predict, train
from jaxdl.data import datasets, pipeline, sources, tables
from jaxdl.errors import ConfigError
from tests import helpers


def _table_config(path, label, **overrides):
    cfg = helpers.config("my_table", dataset__path=str(path), dataset__label=label, parallel__num_devices=1)
    for key, value in overrides.items():
        node, *_, leaf = [cfg, *key.split("__")]
        for part in key.split("__")[:-1]:
            node = node[part]
        node[leaf] = value
    return cfg


def _breast_cancer_csv(path):
    """scikit-learn's breast-cancer table as a CSV file: the builder's float32 values, written exactly."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    frame = pd.DataFrame(data.data.astype(np.float32).astype(np.float64), columns=data.feature_names)
    frame["diagnosis"] = data.target
    frame.to_csv(path, index=False)
    return path


def test_split_rule_is_shared_and_cuts_70_15_15():
    parts = datasets.split_rows(20)
    assert [len(parts[s]) for s in ("train", "validation", "test")] == [14, 3, 3]
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(20))


def test_breast_cancer_from_a_csv_file_equals_the_builder_and_trains(tmp_path, capsys):
    """Same split rule, same rows in each split, same train statistics; my_table.py trains on it."""
    cfg = _table_config(_breast_cancer_csv(tmp_path / "bc.csv"), "diagnosis")
    shipped = helpers.config("breast_cancer_logreg")
    mine, theirs = pipeline.Splits(cfg.dataset), pipeline.Splits(shipped.dataset)
    for split in ("train", "validation", "test"):
        a, b = mine.source(split), theirs.source(split)
        assert len(a) == len(b)
        # tfds stores a split's records in its own (hashed) order: compare the rows as sorted sets.
        rows_a, rows_b = (np.column_stack([s.column("features"), s.column("label")]) for s in (a, b))
        np.testing.assert_array_equal(*(r[np.lexsort(r.T[::-1])] for r in (rows_a, rows_b)))
    for key in ("mean", "std"):  # Summed in another order: equal up to float64 rounding.
        np.testing.assert_allclose(mine.statistics()[key], theirs.statistics()[key], rtol=1e-12)
    assert sources.class_names(cfg.dataset) == ("0", "1")
    cfg.training.num_steps = 3
    cfg.training.eval_every_steps = 0
    results = train.train_and_evaluate(cfg, tmp_path / "run")
    assert results["final_step"] == 3 and 0.0 <= results["test"]["accuracy"] <= 1.0
    assert json.loads((tmp_path / "run" / "class_names.json").read_text()) == ["0", "1"]
    capsys.readouterr()
    assert predict.predict_cli([f"--workdir={tmp_path / 'run'}", "photo.png"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"jaxdl-predict: error: {tmp_path / 'run'} was trained on inputs of shape (30,), not images; "
        "jaxdl-predict takes image files"
    )


def test_standardisation_is_fitted_on_the_train_rows_only(tmp_path):
    """Feature x_i = i^2 of row i: the scaler is the mean and population std of the train rows' values."""
    n = 20
    x = np.arange(n, dtype=np.float64) ** 2
    pd.DataFrame({"x": x, "y": np.arange(n) % 2}).to_csv(tmp_path / "t.csv", index=False)
    cfg = _table_config(tmp_path / "t.csv", "y", training__batch_size=4)
    train_rows = datasets.split_rows(n)["train"]
    mean = np.mean(train_rows.astype(np.float64) ** 2)
    std = np.sqrt(np.mean(train_rows.astype(np.float64) ** 4) - mean**2)
    assert not np.isclose(mean, x.mean())  # The whole table's mean would differ.
    run = experiment.Experiment(cfg)
    np.testing.assert_allclose(run.splits.statistics()["mean"], [mean])
    np.testing.assert_allclose(run.splits.statistics()["std"], [std])
    test_rows = datasets.split_rows(n)["test"]
    batch = next(iter(run.eval_batches("test")))
    got = batch["input"][batch["mask"].astype(bool)][:, 0]
    np.testing.assert_allclose(got, (x[test_rows] - mean) / std, rtol=1e-6)
    np.testing.assert_array_equal(batch["target"][: len(test_rows)], test_rows % 2)


def test_text_labels_become_sorted_classes_and_numbers_a_regression_target(tmp_path):
    frame = pd.DataFrame({"a": [1.0, 2, 3, 4, 5, 6, 7, 8, 9, 10], "kind": list("bcab" * 2 + "ca")})
    frame["size"] = frame["a"] * 1.5
    frame.to_csv(tmp_path / "t.csv", index=False)
    table = tables.read_table(str(tmp_path / "t.csv"), "kind")
    assert table.class_names == ("a", "b", "c") and table.feature_names == ("a", "size")
    np.testing.assert_array_equal(table.class_ids(), [1, 2, 0, 1, 1, 2, 0, 1, 2, 0])
    cfg = _table_config(tmp_path / "t.csv", "kind", task__num_classes=3)
    rows = datasets.split_rows(10)["train"]
    source = sources.open_split(cfg.dataset, "train")
    np.testing.assert_array_equal(source.column("label"), table.class_ids()[rows])
    assert sources.class_names(cfg.dataset) == ("a", "b", "c")
    frame.drop(columns="kind").to_csv(tmp_path / "numbers.csv", index=False)
    cfg = _table_config(tmp_path / "numbers.csv", "size", task__name="regression", dataset__target_key="target")
    source = sources.open_split(cfg.dataset, "train")
    assert set(source[0]) == {"features", "target"}
    np.testing.assert_array_equal(source.column("target"), frame["size"].to_numpy(np.float32)[rows])
    np.testing.assert_array_equal(source.column("features"), frame[["a"]].to_numpy(np.float32)[rows])
    assert sources.class_names(cfg.dataset) is None


def _bad_csv(tmp_path):
    frame = pd.DataFrame({"age": range(20), "city": ["x", "y"] * 10, "sex": ["f", "m"] * 10, "y": [0, 1] * 10})
    frame.to_csv(tmp_path / "text.csv", index=False)
    frame.drop(columns=["city", "sex"]).to_csv(tmp_path / "ok.csv", index=False)
    frame.assign(y=["p", "q"] * 10).drop(columns=["city", "sex"]).to_csv(tmp_path / "words.csv", index=False)
    return tmp_path


@pytest.mark.parametrize(
    ("file", "overrides", "message"),
    [
        (
            "ok.csv",
            {"dataset__label": "outcome"},
            "config.dataset.label='outcome' is not a column of .*ok.csv; choose one of: age, y$",
        ),
        (
            "text.csv",
            {},
            "text.csv: feature column\\(s\\) 'city', 'sex' are not numeric; encode them as numbers or remove them",
        ),
        (
            "ok.csv",
            {"task__num_classes": 3},
            "config.task.num_classes=3 but column 'y' of .*ok.csv holds 2 classes "
            "\\(0, 1\\); set config.task.num_classes=2$",
        ),
        (
            "words.csv",
            {"task__name": "regression", "dataset__target_key": "target"},
            "config.dataset.label='y' of .*words.csv is not numeric, so it cannot be a regression target",
        ),
        (
            "ok.csv",
            {"task__name": "regression"},
            "config.task.name='regression' reads the float target of a csv table: set config.dataset.target_key=target",
        ),
        (
            "ok.csv",
            {"dataset__label": ""},
            "config.task.name='classification' on a csv file reads a table: set config.dataset.label",
        ),
    ],
)
def test_bad_tables_are_one_line_config_errors(tmp_path, file, overrides, message):
    path = _bad_csv(tmp_path) / file
    cfg = _table_config(path, "y", training__batch_size=4, **overrides)
    with pytest.raises(ConfigError, match=message) as error:
        experiment.Experiment(cfg)
    assert "\n" not in str(error.value)


def test_the_template_builds_without_a_file_and_names_the_missing_path():
    cfg = helpers.config("my_table")
    helpers.build_without_data(cfg)
    with pytest.raises(ConfigError, match="config.dataset.path is empty"):
        experiment.Experiment(cfg)
