"""The interface every task implements: loss, metrics, and the decisions that belong to the task."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdl.errors import WorkdirError

Arrays = tuple[np.ndarray, np.ndarray]  # (inputs, targets) of one split, as records hold them.


@dataclasses.dataclass(frozen=True)
class ImagePrediction:
    """One image file put through a trained model: what `Task.describe_prediction` shows."""

    path: Path  # The file; its stem names the pictures written for it.
    image: np.ndarray  # [H, W, C] as read from the file, in the run's input dtype.
    model_input: np.ndarray  # [h, w, C]: the image after the eval transforms, as the model saw it.
    outputs: np.ndarray  # The model's raw outputs for this one image (no batch axis).
    # (scale, shift), each [2] as (x, y): model_input pixel p is file pixel p * scale + shift.
    to_image: tuple[np.ndarray, np.ndarray]


class Task(abc.ABC):
    """Loss and metrics of one kind of supervised problem, and what the loop asks of it.

    Metrics are per-example values (`metrics`, also logged in training). For
    evaluation a task accumulates sums over a whole split (`eval_sums`): by
    default the per-example metrics of the real examples and their count, which
    `finalize_sums` turns into example-weighted means and `finalize` into
    reported numbers (for example RMSE = sqrt(MSE)). A task may sum other
    normalisers instead (pixels, valid boxes) or states (a confusion matrix);
    sums are added on device and across processes. A task whose metric needs
    every prediction of the split at once (COCO mAP) sets `host_evaluator` and
    implements `host_values` and `host_metrics`.

    Besides loss and metrics a task declares, as class attributes the loop reads:
    - `target_kinds`: the `config.dataset.target_kind`s it takes (registered in
      jaxdl.data.targets); `jaxdl.tasks.build_task` refuses the others;
    - `metric_names`: what `finalize` reports (validation of `training.best_metric`);
    - `best_metric` and `maximized`: the validation metric that picks the best
      checkpoint unless the config names another, and which metrics grow when better;
    - `supports_soft_targets`: whether `soft_targets`/`soft_loss` exist (label
      smoothing, mixup, cutmix);
    - `has_baseline`: whether `baseline` scores a reference method;
    - `displays_predictions`: whether `describe_prediction` shows the outputs
      for one image file (jaxdl-predict).
    """

    # Plain arrays per example or per position; tasks whose targets are masks or objects override it.
    target_kinds: tuple[str, ...] = ("label", "sequence")
    metric_names: tuple[str, ...] = ("loss",)
    best_metric: str = "loss"
    maximized: frozenset[str] = frozenset()
    supports_soft_targets: bool = False
    has_baseline: bool = False
    # The metric by which results.json compares the model with the baseline (lower is better).
    baseline_metric: str = "loss"

    @classmethod
    @abc.abstractmethod
    def from_config(cls, task: ml_collections.ConfigDict, dataset: ml_collections.ConfigDict) -> Task:
        """The task of a config's `task` and `dataset` sections; bad keys raise a one-line ConfigError."""

    @property
    @abc.abstractmethod
    def num_outputs(self) -> int:
        """Size of the model's last layer."""

    @abc.abstractmethod
    def loss(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        """Per-example loss, shape [batch], in float32."""

    def loss_terms(self, outputs: jax.Array, targets: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The per-example loss and, computed with it, its named terms (logged in training; default none).

        The train step takes both from this one call, so a loss made of parts
        (detection: box, class, DFL) is computed once per step, not again for the logs.
        """
        return self.loss(outputs, targets), {}

    @abc.abstractmethod
    def metrics(self, outputs: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
        """Per-example metrics, each of shape [batch]; includes 'loss'."""

    def finalize(self, means: Mapping[str, float]) -> dict[str, float]:
        """Derived metrics from the example-weighted means."""
        return dict(means)

    def eval_sums(self, outputs: jax.Array, targets: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
        """This batch's contribution to the split's totals; `mask` [batch] is 1 for real examples, 0 for padding."""
        sums = {k: jnp.sum(v * mask) for k, v in self.metrics(outputs, targets).items()}
        sums["count"] = jnp.sum(mask)
        return sums

    def finalize_sums(self, totals: Mapping[str, np.ndarray]) -> dict[str, float]:
        """The reported metrics from the totals of a whole split (default: example-weighted means)."""
        count = float(totals["count"])
        return self.finalize({k: float(v) / count for k, v in totals.items() if k != "count"})

    host_evaluator: bool = False

    def host_values(self, outputs: jax.Array, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Per-example arrays [batch, ...] gathered on the host for `host_metrics`; only where `host_evaluator`."""
        raise NotImplementedError(f"{type(self).__name__} has no host-side evaluator")

    def host_metrics(self, values: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Metrics from the host values of every real example of the split (each once, in no set order)."""
        raise NotImplementedError(f"{type(self).__name__} has no host-side evaluator")

    def prepare_targets(self, targets: jax.Array) -> jax.Array:
        """Casts raw targets from the pipeline to what `loss` expects."""
        return jnp.asarray(targets)

    def targets(self, batch: Mapping[str, jax.Array]):
        """What `loss` and `metrics` compare outputs with, from a batch (default: its prepared `target`).

        A task whose targets span several batch keys (detection: class ids, boxes
        and their valid flags) returns them together, as a dict.
        """
        return self.prepare_targets(batch["target"])

    # The output format a model must give (the name of its `detection_head()`); None: any.
    model_output: str | None = None

    def for_model(self, model: Any) -> Task:
        """This task as it reads `model`'s outputs (detection: with the model's head); default: itself.

        The task is built before the model, so whoever builds both binds them
        (jaxdl.experiment.Experiment does).
        """
        del model
        return self

    def transform_outputs(self, outputs: jax.Array, inputs: jax.Array) -> jax.Array:
        """The model's raw outputs as the quantity loss and metrics compare with targets (default: as is)."""
        del inputs
        return outputs

    def soft_targets(self, targets: jax.Array, smoothing: float = 0.0) -> jax.Array:
        """Targets as probabilities, smoothed; only where `supports_soft_targets`."""
        raise NotImplementedError(f"{type(self).__name__} has no soft targets")

    def soft_loss(self, outputs: jax.Array, soft_targets: jax.Array) -> jax.Array:
        """Per-example loss against soft targets; only where `supports_soft_targets`."""
        raise NotImplementedError(f"{type(self).__name__} has no soft targets")

    def baseline(self, train: Arrays, test: Arrays) -> dict[str, float] | None:
        """Test metrics of a reference method fitted on `train`, scored on `test`; only where `has_baseline`."""
        del train, test
        return None

    def is_better(self, metric: str, value: float, best: float | None) -> bool:
        """Whether `value` of `metric` ('val/accuracy' or 'accuracy') improves on `best` (None: nothing yet)."""
        if best is None:
            return True
        name = metric.split("/", 1)[-1]
        return value > best if name in self.maximized else value < best

    # Whether `describe_prediction` shows this task's outputs for one image (jaxdl-predict).
    displays_predictions: bool = False

    def prediction_fit(self, height: int, width: int) -> str:
        """How jaxdl-predict brings a file of another size to the model's `height` x `width` input.

        A transform chain of `jaxdl.data.transforms` run before the eval transforms
        when they do not resize themselves; it must end at that size. "" (the
        default): such a file is refused. The transforms move a probe box with the
        pixels, so `ImagePrediction.to_image` undoes the fit too.
        """
        del height, width
        return ""

    def describe_prediction(
        self,
        prediction: ImagePrediction,
        out: Path,
        *,
        class_names: Sequence[str] | None = None,
        top: int = 5,
        score_threshold: float = 0.25,
    ) -> dict:
        """What jaxdl-predict reports for one image, as JSON fields; pictures of it are written under `out`.

        `class_names` (by class id, None when the run does not know them) label
        the classes; `top` is how many classes a classifier lists and
        `score_threshold` the lowest score of a reported box; each task uses
        what applies to it. Only where `displays_predictions`.
        """
        del prediction, out, class_names, top, score_threshold
        raise WorkdirError(f"the {type(self).__name__} task has no prediction display; jaxdl-predict cannot show it")
