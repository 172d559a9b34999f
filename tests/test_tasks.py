"""Loss and metric maths of the tasks on fixed outputs, against scikit-learn."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from jaxdl import steps, tasks
from jaxdl.errors import ConfigError
from jaxdl.steps import make_eval_step
from tests import helpers


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_multiclass_cross_entropy_and_accuracy_match_sklearn():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 4)).astype(np.float32) * 3
    labels = rng.integers(0, 4, size=50)
    task = tasks.Classification(num_classes=4)
    assert task.num_outputs == 4
    out = task.metrics(jnp.asarray(logits), task.prepare_targets(labels))
    np.testing.assert_allclose(
        float(jnp.mean(out["loss"])), skm.log_loss(labels, _softmax(logits), labels=range(4)), rtol=1e-5
    )
    assert float(jnp.mean(out["accuracy"])) == pytest.approx(skm.accuracy_score(labels, logits.argmax(1)))


def test_binary_uses_one_logit_and_matches_logistic_loss():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(40, 1)).astype(np.float32) * 2
    labels = rng.integers(0, 2, size=40)
    task = tasks.Classification(num_classes=2)
    assert task.num_outputs == 1
    out = task.metrics(jnp.asarray(logits), task.prepare_targets(labels))
    p = 1 / (1 + np.exp(-logits[:, 0]))
    np.testing.assert_allclose(float(jnp.mean(out["loss"])), skm.log_loss(labels, p), rtol=1e-5)
    assert float(jnp.mean(out["accuracy"])) == pytest.approx(skm.accuracy_score(labels, p > 0.5))


def test_course_logistic_example_probability():
    # Logit 4.71 -> probability 0.9911 -> "Yes": the loss of label 1 is -log(0.9911).
    task = tasks.Classification(num_classes=2)
    loss = task.loss(jnp.array([[4.71]]), jnp.array([1]))
    assert math.exp(-float(loss[0])) == pytest.approx(0.9911, abs=5e-5)
    assert int(task.predictions(jnp.array([[4.71]]))[0]) == 1


def test_regression_metrics_match_sklearn():
    rng = np.random.default_rng(2)
    preds = rng.normal(size=(30, 1)).astype(np.float32)
    targets = rng.normal(size=30).astype(np.float32)
    task = tasks.Regression(num_targets=1)
    out = task.metrics(jnp.asarray(preds), task.prepare_targets(targets))
    means = task.finalize({k: float(jnp.mean(v)) for k, v in out.items()})
    np.testing.assert_allclose(means["mse"], skm.mean_squared_error(targets, preds[:, 0]), rtol=1e-5)
    np.testing.assert_allclose(means["mae"], skm.mean_absolute_error(targets, preds[:, 0]), rtol=1e-5)
    np.testing.assert_allclose(means["rmse"], math.sqrt(skm.mean_squared_error(targets, preds[:, 0])), rtol=1e-5)
    assert means["loss"] == means["mse"]


def test_eval_step_ignores_padding():
    """Masked rows change neither the sums nor the count."""
    task = tasks.Classification(num_classes=3)

    class _State:
        def apply_fn(self, variables, x, train):
            return x

        def variables(self):
            return {}

        def eval_variables(self):
            return {}

    logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [9.0, 0.0, 0.0], [0.0, 0.0, 9.0]])
    batch = {"input": logits, "target": jnp.array([0, 2, 1, 1]), "mask": jnp.array([1.0, 1.0, 0.0, 0.0])}
    sums = make_eval_step(task)(_State(), batch)
    assert float(sums["count"]) == 2
    assert float(sums["accuracy"]) == 1  # Only the first real row is right.
    expected = skm.log_loss([0, 2], _softmax(np.asarray(logits[:2])), labels=range(3), normalize=False)
    np.testing.assert_allclose(float(sums["loss"]), expected, rtol=1e-5)


def test_build_task_and_errors():
    assert tasks.list_tasks() == ["classification", "detection", "forecasting", "regression", "segmentation", "tagging"]
    assert tasks.build_task(helpers.config("digits_cnn", task__name="regression", task__num_targets=3)).num_outputs == 3
    with pytest.raises(ConfigError, match="config.task.name='ranking' is not valid; choose one of: classification, de"):
        tasks.build_task(helpers.config("digits_cnn", task__name="ranking"))
    with pytest.raises(ConfigError, match="config.task.num_classes=1 is not valid; it must be >= 2"):
        tasks.build_task(helpers.config("digits_cnn", task__num_classes=1))
    with pytest.raises(ValueError):
        tasks.Classification(num_classes=1)


def test_a_task_constructor_is_one_table_entry():
    """A task added to the table is built by name, with nothing else to edit."""

    class Doubling(tasks.Regression):
        @classmethod
        def from_config(cls, task, dataset):
            return cls(num_targets=2 * task.num_targets)

    tasks.TASKS["doubling"] = Doubling
    try:
        assert tasks.build_task(helpers.config("digits_cnn", task__name="doubling")).num_outputs == 2
    finally:
        del tasks.TASKS["doubling"]


def test_soft_targets_are_declared_by_the_task():
    """Label smoothing and mixing need a task that declares soft targets; the base class has none."""
    assert tasks.Classification.supports_soft_targets and not tasks.Regression.supports_soft_targets
    with pytest.raises(NotImplementedError):
        tasks.Regression().soft_targets(jnp.zeros((2, 1)))
    cfg = helpers.config("diabetes_linear", task__label_smoothing=0.1)
    with pytest.raises(
        ConfigError, match=r"need a task with soft targets \(classification\), not config.task.name='regression'"
    ):
        steps.StepOptions.from_config(cfg, tasks.build_task(cfg))
    cfg = helpers.config("digits_cnn", augment__mixup_alpha=0.2)
    assert steps.StepOptions.from_config(cfg, tasks.build_task(cfg)).soft


def test_the_task_names_the_best_metric_and_its_direction():
    from jaxdl import experiment

    classification, regression = tasks.Classification(num_classes=3), tasks.Regression()
    assert experiment.best_metric(helpers.config("digits_cnn"), classification) == "val/loss"
    cfg = helpers.config("digits_cnn", training__best_metric="val/accuracy")
    assert experiment.best_metric(cfg, classification) == "val/accuracy"
    assert classification.is_better("val/accuracy", 0.9, 0.8) and not classification.is_better("val/loss", 0.9, 0.8)
    assert regression.is_better("val/rmse", 0.5, 0.6) and regression.is_better("val/loss", 3.0, None)
    with pytest.raises(ConfigError, match="best_metric='val/accuracy' is not valid; choose one of: val/loss, val/mse"):
        experiment.best_metric(cfg, regression)


def test_baselines_take_explicit_arrays():
    """A task's baseline sees (inputs, targets) arrays, never the run; tasks without one return None."""
    assert tasks.Classification(num_classes=3).baseline((np.zeros(2), np.zeros(2)), (np.zeros(2), np.zeros(2))) is None
    task = tasks.Forecasting(horizon=1, mean=0.0, std=1.0, naive_mae=1.0)
    series = 0.9 ** np.arange(40.0)  # y_t = 0.9 y_{t-1}: AR(2) recovers it exactly.
    windows = np.stack([series[t - 2 : t] for t in range(2, 40)])[..., None], series[2:40, None]
    train, test = tuple(a[:30] for a in windows), tuple(a[30:] for a in windows)
    assert task.baseline(train, test)["rmse"] < 1e-9
