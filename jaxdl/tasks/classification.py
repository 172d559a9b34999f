"""Classification: softmax cross-entropy, or one logit and a sigmoid for 2 classes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxdl.errors import check_at_least, check_fraction
from jaxdl.tasks.base import ImagePrediction, Task


class Classification(Task):
    """Multi-class softmax; binary logistic when num_classes == 2."""

    metric_names = ("loss", "accuracy")
    maximized = frozenset({"accuracy"})
    supports_soft_targets = True

    @classmethod
    def from_config(cls, task: ml_collections.ConfigDict, dataset: ml_collections.ConfigDict) -> Classification:
        from jaxdl.data import tables

        check_at_least("task.num_classes", task.num_classes, 2)
        check_fraction("task.label_smoothing", task.label_smoothing)
        # A csv table: its label column holds num_classes classes.
        tables.check_task(dataset, task="classification", target_key="label", num_classes=task.num_classes)
        return cls(num_classes=task.num_classes)

    def __init__(self, num_classes: int):
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes

    @property
    def binary(self) -> bool:
        """Two classes are modelled by one logit, as in logistic regression."""
        return self.num_classes == 2

    @property
    def num_outputs(self) -> int:
        return 1 if self.binary else self.num_classes

    def prepare_targets(self, targets: jax.Array) -> jax.Array:
        return jnp.asarray(targets).astype(jnp.int32).reshape(-1)

    def loss(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        outputs = outputs.astype(jnp.float32)
        if self.binary:
            return optax.sigmoid_binary_cross_entropy(outputs[:, 0], targets.astype(jnp.float32))
        return optax.softmax_cross_entropy_with_integer_labels(outputs, targets)

    def soft_targets(self, targets: jax.Array, smoothing: float = 0.0) -> jax.Array:
        """Integer labels as probabilities, smoothed: (1 - s) * one_hot + s / K.

        Binary tasks give the probability of class 1, shape [batch]; others [batch, K].
        """
        if self.binary:
            return targets.astype(jnp.float32) * (1.0 - smoothing) + smoothing / 2
        return optax.smooth_labels(jax.nn.one_hot(targets, self.num_classes), smoothing)

    def soft_loss(self, outputs: jax.Array, soft_targets: jax.Array) -> jax.Array:
        """Per-example cross-entropy against probabilities (smoothed or mixed labels)."""
        outputs = outputs.astype(jnp.float32)
        if self.binary:
            return optax.sigmoid_binary_cross_entropy(outputs[:, 0], soft_targets)
        return optax.softmax_cross_entropy(outputs, soft_targets)

    def predictions(self, outputs: jax.Array) -> jax.Array:
        """The predicted class of each example."""
        if self.binary:
            return (outputs[:, 0] > 0).astype(jnp.int32)
        return jnp.argmax(outputs, axis=-1)

    def metrics(self, outputs: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
        accuracy = (self.predictions(outputs) == targets).astype(jnp.float32)
        return {"loss": self.loss(outputs, targets), "accuracy": accuracy}

    displays_predictions = True

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """The class probabilities [K] of one example's outputs (float64; one logit gives P(class 1))."""
        if self.binary:
            p1 = float(1 / (1 + np.exp(-np.asarray(outputs, np.float64)[0])))
            return np.array([1 - p1, p1])
        logits = np.asarray(outputs, np.float64)
        probabilities = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return probabilities / probabilities.sum(axis=-1, keepdims=True)

    def prediction_fit(self, height: int, width: int) -> str:
        """The shorter side resized to the model's and the centre cropped (any aspect: a squeeze)."""
        if height == width:
            return f"center_crop(size={height}, fraction=1.0)"
        return f"resize(size=({height}, {width}))"

    def describe_prediction(
        self,
        prediction: ImagePrediction,
        out: Path,
        *,
        class_names: Sequence[str] | None = None,
        top: int = 5,
        score_threshold: float = 0.25,
    ) -> dict:
        """The `top` classes with their probabilities, most likely first (and their names where known)."""
        del out, score_threshold
        probabilities = self.probabilities(prediction.outputs)
        order = np.argsort(-probabilities, kind="stable")[:top]
        ranked = []
        for k in order:
            entry = {"class": int(k), "probability": float(probabilities[k])}
            if class_names is not None:
                entry["name"] = class_names[k]
            ranked.append(entry)
        return {"top": ranked}
