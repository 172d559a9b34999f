"""Regression: mean squared error; reports MSE, MAE and RMSE."""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections

from jaxdl.errors import check_at_least
from jaxdl.tasks.base import Task


class Regression(Task):
    """Predicts `num_targets` real values per example."""

    metric_names = ("loss", "mse", "mae", "rmse")

    @classmethod
    def from_config(cls, task: ml_collections.ConfigDict, dataset: ml_collections.ConfigDict) -> Regression:
        from jaxdl.data import tables

        check_at_least("task.num_targets", task.num_targets, 1)
        tables.check_task(dataset, task="regression", target_key="target")  # A csv table: a numeric target column.
        return cls(num_targets=task.num_targets)

    def __init__(self, num_targets: int = 1):
        if num_targets < 1:
            raise ValueError(f"num_targets must be >= 1, got {num_targets}")
        self.num_targets = num_targets

    @property
    def num_outputs(self) -> int:
        return self.num_targets

    def prepare_targets(self, targets: jax.Array) -> jax.Array:
        return jnp.asarray(targets).astype(jnp.float32).reshape(-1, self.num_targets)

    def loss(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        return jnp.mean(jnp.square(outputs.astype(jnp.float32) - targets), axis=-1)

    def metrics(self, outputs: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
        error = outputs.astype(jnp.float32) - targets
        mse = jnp.mean(jnp.square(error), axis=-1)
        return {"loss": mse, "mse": mse, "mae": jnp.mean(jnp.abs(error), axis=-1)}

    def finalize(self, means: Mapping[str, float]) -> dict[str, float]:
        # RMSE is the root of the mean over all examples, not a mean of roots.
        return {**means, "rmse": math.sqrt(means["mse"])}
