"""Forecasting: the next `horizon` values of a scaled time series from its `lookback` past values.

The model sees and predicts scaled values (x - mean) / std, with mean and std
fitted on the training part of the series only (`jaxdl.data.timeseries`); the
loss is the mean squared error on that scale. The task is built with those
statistics, so it reports its metrics in the series' original units:

- rmse = sqrt(mean of squared errors), mae = mean of absolute errors;
- mape = 100 * mean(|error| / max(|y|, eps)) in percent, eps the float64 machine
  epsilon as in scikit-learn (meaningless for series that reach zero);
- mase = mae / q, q = mean |y_t - y_{t-1}| over the training values: the
  in-sample MAE of the naive one-step forecast y_t = y_{t-1}. Below 1 beats the
  naive forecast's training error.

Every mean runs over all windows and all `horizon` steps of each window.

With `task.predict_change`, the model's output is read as the change from the
window's last observed value, which is added back: y = x_T + output. A
trending series then extrapolates past the range seen in training, which a
bounded (tanh) recurrent state cannot do on its own. Any model can be used so.

The baseline is AR(p = lookback) fitted by least squares on the training windows and
scored on exactly the test windows with the same metrics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdl.errors import ConfigError
from jaxdl.tasks.base import Arrays, Task

_EPS = float(np.finfo(np.float64).eps)  # scikit-learn's floor on |y| in MAPE.


class Forecasting(Task):
    """Multi-step forecasting with MSE on the scaled values; metrics in original units."""

    metric_names = ("loss", "mse", "mae", "mape", "mase", "rmse")
    has_baseline = True
    baseline_metric = "rmse"

    def __init__(self, horizon: int, mean: float, std: float, naive_mae: float, predict_change: bool = False):
        """Args:
        horizon: values predicted per window (the model's outputs).
        mean, std: the scaler fitted on the training values.
        naive_mae: mean |y_t - y_{t-1}| over the training values (the MASE scale).
        predict_change: outputs are changes from the window's last value (see the module docstring).
        """
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if std <= 0 or naive_mae <= 0:
            raise ValueError(f"std and naive_mae must be > 0, got {std} and {naive_mae}")
        self.horizon = int(horizon)
        self.mean, self.std, self.naive_mae = float(mean), float(std), float(naive_mae)
        self.predict_change = bool(predict_change)

    @classmethod
    def from_config(cls, task: ml_collections.ConfigDict, dataset: ml_collections.ConfigDict) -> Forecasting:
        """The task of a time-series dataset config, with the statistics of its training part."""
        from jaxdl.data import timeseries

        if not timeseries.is_series(dataset.name):
            raise ConfigError(
                f"config.task.name='forecasting' needs a time series, not config.dataset.name='{dataset.name}'; "
                "choose sunspots, co2 or csv"
            )
        if dataset.horizon < 1:
            raise ConfigError(f"config.dataset.horizon={dataset.horizon} is not valid; it must be >= 1")
        statistics = timeseries.load_series(dataset).statistics()
        predict_change = task.get("predict_change", False)
        return cls(dataset.horizon, statistics.mean, statistics.std, statistics.naive_mae, predict_change)

    def transform_outputs(self, outputs: jax.Array, inputs: jax.Array) -> jax.Array:
        if not self.predict_change:
            return outputs
        # inputs [B, lookback, 1] (or [B, lookback]) of scaled values: the last one is the origin.
        last = jnp.reshape(jnp.asarray(inputs), (inputs.shape[0], inputs.shape[1], -1))[:, -1, :1]
        return outputs + last.astype(outputs.dtype)

    @property
    def num_outputs(self) -> int:
        return self.horizon

    def prepare_targets(self, targets: jax.Array) -> jax.Array:
        return jnp.asarray(targets).astype(jnp.float32).reshape(-1, self.horizon)

    def loss(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        return jnp.mean(jnp.square(outputs.astype(jnp.float32) - targets), axis=-1)

    def metrics(self, outputs: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
        outputs = outputs.astype(jnp.float32)
        error = (outputs - targets) * self.std  # In original units: the mean cancels.
        actual = targets * self.std + self.mean
        absolute = jnp.abs(error)
        mae = jnp.mean(absolute, axis=-1)
        return {
            "loss": self.loss(outputs, targets),
            "mse": jnp.mean(jnp.square(error), axis=-1),
            "mae": mae,
            "mape": 100.0 * jnp.mean(absolute / jnp.maximum(jnp.abs(actual), _EPS), axis=-1),
            "mase": mae / self.naive_mae,
        }

    def finalize(self, means: Mapping[str, float]) -> dict[str, float]:
        # RMSE is the root of the mean over all windows and steps, not a mean of roots.
        return {**means, "rmse": math.sqrt(means["mse"])}

    def evaluate_predictions(self, predictions: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """The reported metrics of scaled `predictions` against scaled `targets`, both [N, horizon]."""
        per_example = self.metrics(jnp.asarray(predictions, jnp.float32), self.prepare_targets(targets))
        return self.finalize({k: float(np.mean(np.asarray(v, np.float64))) for k, v in per_example.items()})

    def baseline(self, train: Arrays, test: Arrays) -> dict[str, float]:
        """AR(p = lookback) by least squares on the training windows, scored on the test windows.

        Fitted on the scaled values: least squares with an intercept commutes with
        the affine scaler, so this is the same model as one fitted in original
        units. Horizons above one are forecast recursively (see jaxdl.models.ar).
        """
        from jaxdl.models import ar

        def windows(arrays: Arrays) -> tuple[np.ndarray, np.ndarray]:
            inputs, targets = (np.asarray(a) for a in arrays)
            return inputs.reshape(len(inputs), -1).astype(np.float64), targets.reshape(len(targets), -1)

        train_inputs, train_targets = windows(train)
        test_inputs, test_targets = windows(test)
        c, phi = ar.fit_ar(train_inputs, train_targets.astype(np.float64))
        predictions = ar.predict_ar(c, phi, test_inputs, self.horizon)
        return self.evaluate_predictions(np.asarray(predictions).reshape(-1, self.horizon), test_targets)
