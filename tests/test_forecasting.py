"""Time-series forecasting: datasets, windows without leakage, the train-only scaler, metrics, AR baseline, runs."""

import json
import re

import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import mean_absolute_error, mean_absolute_percentage_error, mean_squared_error
from statsmodels.datasets import co2 as sm_co2
from statsmodels.datasets import sunspots as sm_sunspots
from statsmodels.tsa.ar_model import AutoReg

from jaxdl import configuration, main, tasks, train
from jaxdl.data import pipeline, timeseries
from jaxdl.models import ar
from tests import helpers


def _dataset(name="sunspots", lookback=9, horizon=1, **extra) -> ml_collections.ConfigDict:
    """The dataset section of configs/sunspots_lstm.py with other series settings."""
    cfg = helpers.config("sunspots_lstm").dataset
    cfg.update(dict(name=name, lookback=lookback, horizon=horizon, **extra))
    return cfg


def _write_csv(path, values, column="value"):
    """A CSV with a date column and one value column, one row per day."""
    dates = pd.date_range("2000-01-01", periods=len(values), freq="D").strftime("%Y-%m-%d")
    pd.DataFrame({"date": dates, column: values}).to_csv(path, index=False)
    return path


def _reference_windows(n, lookback, horizon):
    """Independent loop: every (inputs, targets) index window per split under the documented rule."""
    a = int(round(0.7 * n))
    b = a + int(round(0.15 * n))
    parts = {"train": (0, a), "validation": (a, b), "test": (b, n)}
    out = {}
    for split, (lo, hi) in parts.items():
        rows = []
        for t in range(n):
            targets = list(range(t, t + horizon))
            if t - lookback >= 0 and all(lo <= i < hi for i in targets):
                rows.append((list(range(t - lookback, t)), targets))
        out[split] = rows
    return out, parts


@pytest.mark.parametrize("n,lookback,horizon", [(309, 9, 1), (100, 5, 3), (41, 2, 4)])
def test_windows_and_chronological_split_match_reference_without_leakage(n, lookback, horizon):
    reference, parts = _reference_windows(n, lookback, horizon)
    index = np.arange(n)
    bounds = (parts["train"][1], parts["validation"][1])
    for split, rows in reference.items():
        starts = timeseries.window_starts(n, bounds, split, lookback, horizon)
        inputs, targets = timeseries.make_windows(index, starts, lookback, horizon)
        np.testing.assert_array_equal(inputs, np.array([r[0] for r in rows]).reshape(-1, lookback))
        np.testing.assert_array_equal(targets, np.array([r[1] for r in rows]).reshape(-1, horizon))
        lo, hi = parts[split]
        # Targets lie entirely in their split; inputs lie strictly before the targets (the past).
        assert targets.min() >= lo and targets.max() < hi
        assert np.all(inputs.max(axis=1) < targets.min(axis=1))
        if split == "train":
            assert inputs.max() < hi  # Training windows never see a validation or test value.
        assert np.all(np.diff(starts) == 1)  # In time order, no gap inside a split.


def test_window_source_records_and_train_batches_come_from_the_train_part(tmp_path):
    n = 60
    path = _write_csv(tmp_path / "ramp.csv", np.arange(n, dtype=float) * 2.0 + 1.0)
    cfg = _dataset("csv", lookback=4, horizon=2, path=str(path), column="value")
    series = timeseries.load_series(cfg)
    assert series.bounds == (42, 51)
    statistics = series.statistics()
    reference, _ = _reference_windows(n, 4, 2)
    for split in timeseries.SPLITS:
        source = timeseries.window_source(cfg, split)
        assert len(source) == len(reference[split])
        record = source[0]
        assert record["input"].shape == (4, 1) and record["target"].shape == (2,)
        assert record["input"].dtype == np.float32 and record["target"].dtype == np.float32
        first_inputs, first_targets = reference[split][0]
        np.testing.assert_allclose(statistics.unscale(record["input"][:, 0]), np.array(first_inputs) * 2 + 1, rtol=1e-5)
        np.testing.assert_allclose(statistics.unscale(record["target"]), np.array(first_targets) * 2 + 1, rtol=1e-5)
        assert repr(source) == repr(timeseries.window_source(cfg, split)) and "0x" not in repr(source)
    # Shuffled training batches hold training windows only (targets before index 42).
    splits = pipeline.Splits(cfg)
    loader = iter(pipeline.train_loader(splits, global_batch_size=8, seed=0))
    seen = np.concatenate([statistics.unscale(next(loader)["target"]).ravel() for _ in range(20)])
    assert seen.max() < 42 * 2 + 1 and len(np.unique(seen)) > 8


def test_scaler_is_fitted_on_the_train_part_only(tmp_path):
    values = np.sin(np.arange(100) / 3.0) * 5 + 20
    cfg_a = _dataset("csv", lookback=3, path=str(_write_csv(tmp_path / "a.csv", values)), column="value")
    changed = values.copy()
    changed[70:] = 1e6  # Validation and test values far away: nothing fitted may move.
    cfg_b = _dataset("csv", lookback=3, path=str(_write_csv(tmp_path / "b.csv", changed)), column="value")
    a, b = timeseries.load_series(cfg_a).statistics(), timeseries.load_series(cfg_b).statistics()
    assert a == b
    np.testing.assert_allclose(a.mean, values[:70].mean(), rtol=1e-12)
    np.testing.assert_allclose(a.std, values[:70].std(), rtol=1e-12)
    np.testing.assert_allclose(a.naive_mae, np.abs(np.diff(values[:70])).mean(), rtol=1e-12)
    np.testing.assert_array_equal(
        timeseries.window_source(cfg_a, "train").column("input"),
        timeseries.window_source(cfg_b, "train").column("input"),
    )


def test_sunspots_builder_is_the_statsmodels_series_in_time_order():
    series = timeseries.load_series(_dataset())
    expected = sm_sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()
    np.testing.assert_array_equal(series.values, expected)
    assert series.bounds == (216, 262)
    assert series.statistics().mean == pytest.approx(expected[:216].mean())


def test_co2_missing_weeks_are_interpolated_linearly_in_time():
    series = timeseries.load_series(_dataset("co2", lookback=52))
    raw = sm_co2.load_pandas().data["co2"]
    assert raw.isna().sum() > 0 and len(series.values) == len(raw)
    assert not np.any(np.isnan(series.values))
    np.testing.assert_allclose(series.values, raw.interpolate(method="time").to_numpy(), rtol=1e-12)
    observed = ~raw.isna().to_numpy()
    np.testing.assert_array_equal(series.values[observed], raw.to_numpy()[observed])


def test_metrics_match_sklearn_and_hand_computed_mase():
    train_values = np.array([10.0, 13.0, 12.0, 16.0])  # Naive one-step MAE: (3 + 1 + 4) / 3.
    statistics = timeseries.fit_statistics(train_values)
    assert statistics.naive_mae == pytest.approx(8 / 3)
    task = tasks.Forecasting(3, statistics.mean, statistics.std, statistics.naive_mae)
    rng = np.random.default_rng(0)
    actual = rng.uniform(5, 30, size=(50, 3))
    predicted = actual + rng.normal(0, 2, size=(50, 3))
    got = task.evaluate_predictions(statistics.scale(predicted), statistics.scale(actual))
    assert got["rmse"] == pytest.approx(np.sqrt(mean_squared_error(actual, predicted)), rel=1e-5)
    assert got["mae"] == pytest.approx(mean_absolute_error(actual, predicted), rel=1e-5)
    assert got["mape"] == pytest.approx(100 * mean_absolute_percentage_error(actual, predicted), rel=1e-5)
    assert got["mase"] == pytest.approx(np.abs(actual - predicted).mean() / (8 / 3), rel=1e-5)
    scaled_mse = np.mean((statistics.scale(predicted) - statistics.scale(actual)) ** 2)
    assert got["loss"] == pytest.approx(scaled_mse, rel=1e-5)


def test_ar_baseline_matches_statsmodels_autoreg_on_sunspots():
    cfg = helpers.config("sunspots_lstm")
    p = cfg.dataset.lookback
    series = timeseries.load_series(cfg.dataset)
    a, b = series.bounds
    fitted = AutoReg(series.values[:a], lags=p, trend="c").fit()
    # The least-squares fit on scaled training windows is AutoReg's fit, rescaled.
    statistics = series.statistics()
    inputs, targets = timeseries.split_windows(cfg.dataset, "train")
    c, phi = ar.fit_ar(inputs, targets)
    np.testing.assert_allclose(phi, fitted.params[1:], rtol=1e-6)
    np.testing.assert_allclose(statistics.mean * (1 - phi.sum()) + statistics.std * c, fitted.params[0], rtol=1e-6)
    # Test windows: forecasts of y_b .. y_{n-1} from the p values before each.
    actual = series.values[b:]
    lags = np.stack([series.values[t - p : t][::-1] for t in range(b, len(series.values))])
    forecast = fitted.params[0] + lags @ fitted.params[1:]
    splits = pipeline.Splits(cfg.dataset)
    baseline = tasks.build_task(cfg).baseline(splits.arrays("train"), splits.arrays("test"))
    assert baseline["rmse"] == pytest.approx(np.sqrt(mean_squared_error(actual, forecast)), rel=1e-4)
    assert baseline["mae"] == pytest.approx(mean_absolute_error(actual, forecast), rel=1e-4)
    assert baseline["mape"] == pytest.approx(100 * mean_absolute_percentage_error(actual, forecast), rel=1e-4)


def _tiny(name="sunspots_lstm", **overrides):
    """A few steps of a 4-unit recurrent net."""
    return helpers.config(
        name,
        model__kwargs="{'hidden_size': 4, 'num_layers': 1, 'output': 'last'}",
        training__batch_size=8,
        training__num_steps=4,
        training__eval_every_steps=0,
        training__checkpoint_every_steps=0,
        parallel__num_devices=1,
        **overrides,
    )


METRICS = {"loss", "mse", "rmse", "mae", "mape", "mase"}


def test_short_sunspots_run_writes_test_metrics_and_the_ar_baseline(tmp_path):
    results = train.train_and_evaluate(_tiny(), tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["test"]) == METRICS and set(saved["baseline"]) == METRICS
    assert saved["beats_baseline"] == (saved["test"]["rmse"] <= saved["baseline"]["rmse"])
    assert saved["test"] == results["test"]
    assert all(np.isfinite(v) for v in [*saved["test"].values(), *saved["baseline"].values()])


def test_csv_dataset_end_to_end(tmp_path):
    t = np.arange(120)
    path = _write_csv(tmp_path / "wave.csv", 50 + 10 * np.sin(2 * np.pi * t / 12) + t * 0.1, column="sales")
    cfg = _tiny(
        dataset__name="csv",
        dataset__path=str(path),
        dataset__column="sales",
        dataset__lookback=6,
        dataset__horizon=2,
        model__name="gru",
    )
    results = train.train_and_evaluate(cfg, tmp_path / "run")
    assert set(results["test"]) == METRICS and set(results["baseline"]) == METRICS
    # A linear trend plus a 12-step cycle obeys a linear recurrence of order 4: AR(6) is exact.
    assert results["baseline"]["rmse"] < 1e-2


@pytest.mark.parametrize(
    "content,overrides,message",
    [
        (None, {}, "config.dataset.path='.*missing.csv' is not a file"),
        ("date,sales\n2000,1\n", {"dataset__column": "price"}, "column='price' is not a column .* date, sales"),
        ("sales\n1\n2\nabc\n4\n", {}, "non-numeric value 'abc' at data row 3"),
        ("date,sales\n1,1\n2,\n3,3\n", {}, "non-numeric value '' at data row 2"),  # Empty is not a number.
        ("sales\n1\n2\n3\n", {"dataset__lookback": 0}, "config.dataset.lookback=0 is not valid"),
        ("sales\n" + "1\n" * 30, {"dataset__lookback": 21}, "leave 0 train windows"),
        ("sales\n" + "1\n" * 30, {"dataset__val_split": "train[:5]"}, "val_split='train\\[:5\\]'"),
    ],
)
def test_csv_config_errors_are_one_line(tmp_path, capsys, content, overrides, message):
    path = tmp_path / "missing.csv"
    if content is not None:
        path = tmp_path / "data.csv"
        path.write_text(content)
    settings = {"dataset.name": "csv", "dataset.path": path, "dataset.column": "sales", "training.batch_size": 2}
    settings["parallel.num_devices"] = 1
    settings.update({k.replace("__", "."): v for k, v in overrides.items()})
    argv = [f"--config={helpers.ROOT / 'configs' / 'sunspots_lstm.py'}", f"--workdir={tmp_path / 'run'}"]
    code = main.train_cli(argv + [f"--config.{k}={v}" for k, v in settings.items()])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("jaxdl-train: error: ")
    assert re.search(message, err), err


def test_forecasting_needs_a_series_and_windows_are_ordinary_records():
    with pytest.raises(configuration.ConfigError, match="task.name='forecasting' needs a time series"):
        train.Experiment(helpers.config("digits_cnn", task__name="forecasting"))
    # The windows of a series are records like any other: plain regression may use them.
    run = train.Experiment(_tiny(task__name="regression"))
    assert run.task.num_outputs == 1 and not run.task.has_baseline


def test_predict_change_adds_the_last_observed_value():
    """task.predict_change reads outputs as changes from the window's last value, for any model."""
    task = tasks.build_task(_tiny(task__predict_change=True, dataset__horizon=3))
    inputs = jnp.asarray(np.arange(2 * 5, dtype=np.float32).reshape(2, 5, 1))
    outputs = jnp.asarray([[0.5, 1.0, -1.0], [0.0, 0.0, 2.0]])
    np.testing.assert_allclose(task.transform_outputs(outputs, inputs), [[4.5, 5.0, 3.0], [9.0, 9.0, 11.0]])
    plain = tasks.build_task(_tiny(dataset__horizon=3))
    np.testing.assert_array_equal(plain.transform_outputs(outputs, inputs), outputs)
