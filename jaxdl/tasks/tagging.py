"""Sequence tagging: one softmax over `num_classes` tags at every position.

Targets are integer tags [batch, time]; a negative tag marks padding, which
never counts: the per-example loss is the mean cross-entropy over the example's
real positions, and its accuracy the fraction of real positions tagged right.
Character-level word segmentation (`word_segmentation` dataset) tags each
character 1 where a word starts and 0 elsewhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxdl.errors import check_at_least
from jaxdl.tasks.base import Task


class Tagging(Task):
    """Per-position classification into `num_classes` tags, padding (tag < 0) masked."""

    metric_names = ("loss", "accuracy")
    maximized = frozenset({"accuracy"})

    @classmethod
    def from_config(cls, task: ml_collections.ConfigDict, dataset: ml_collections.ConfigDict) -> Tagging:
        del dataset
        check_at_least("task.num_classes", task.num_classes, 2)
        return cls(num_classes=task.num_classes)

    def __init__(self, num_classes: int):
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes

    @property
    def num_outputs(self) -> int:
        # Always one logit per tag (also for 2 tags): the model outputs [batch, time, num_classes].
        return self.num_classes

    def prepare_targets(self, targets: jax.Array) -> jax.Array:
        return jnp.asarray(targets).astype(jnp.int32)

    @staticmethod
    def valid(targets: jax.Array) -> jax.Array:
        """1.0 at real positions, 0.0 at padding, shape [batch, time]."""
        return (targets >= 0).astype(jnp.float32)

    @staticmethod
    def _per_example_mean(values: jax.Array, valid: jax.Array) -> jax.Array:
        # An example without a real position (a zero row) gives 0, not NaN.
        return jnp.sum(values * valid, axis=-1) / jnp.maximum(jnp.sum(valid, axis=-1), 1.0)

    def loss(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        valid = self.valid(targets)
        # Padding positions get a dummy label 0; their loss is multiplied by 0.
        ce = optax.softmax_cross_entropy_with_integer_labels(outputs.astype(jnp.float32), jnp.maximum(targets, 0))
        return self._per_example_mean(ce, valid)

    def predictions(self, outputs: jax.Array) -> jax.Array:
        """The predicted tag at every position, [batch, time]."""
        return jnp.argmax(outputs, axis=-1)

    def metrics(self, outputs: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
        valid = self.valid(targets)
        correct = (self.predictions(outputs) == targets).astype(jnp.float32)
        return {"loss": self.loss(outputs, targets), "accuracy": self._per_example_mean(correct, valid)}
