"""The interface every task implements."""

from __future__ import annotations

import abc
from collections.abc import Mapping

import jax
import jax.numpy as jnp


class Task(abc.ABC):
    """Loss and metrics of one kind of supervised problem.

    Metrics are per-example values; the loop sums them with the batch mask and
    divides by the number of real examples, so padding never counts. `finalize`
    turns those means into reported numbers (for example RMSE = sqrt(MSE)).
    """

    @property
    @abc.abstractmethod
    def num_outputs(self) -> int:
        """Size of the model's last layer."""

    @abc.abstractmethod
    def loss(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        """Per-example loss, shape [batch], in float32."""

    @abc.abstractmethod
    def metrics(self, outputs: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
        """Per-example metrics, each of shape [batch]; includes 'loss'."""

    def finalize(self, means: Mapping[str, float]) -> dict[str, float]:
        """Derived metrics from the example-weighted means."""
        return dict(means)

    def baseline(self, experiment) -> dict | None:
        """Test metrics of a reference method on the same test examples, or None.

        `experiment` is the run's `jaxdl.train.Experiment`; the result is written to
        results.json as "baseline".
        """
        del experiment
        return None

    def prepare_targets(self, targets: jax.Array) -> jax.Array:
        """Casts raw targets from the pipeline to what `loss` expects."""
        return jnp.asarray(targets)
