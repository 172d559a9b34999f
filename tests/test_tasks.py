"""Loss and metric maths of the tasks on fixed outputs, against scikit-learn."""

import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from sklearn import metrics as skm

from jaxdl import tasks
from jaxdl.train import make_eval_step


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

    logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [9.0, 0.0, 0.0], [0.0, 0.0, 9.0]])
    batch = {"input": logits, "target": jnp.array([0, 2, 1, 1]), "mask": jnp.array([1.0, 1.0, 0.0, 0.0])}
    sums = make_eval_step(task)(_State(), batch)
    assert float(sums["count"]) == 2
    assert float(sums["accuracy"]) == 1  # Only the first real row is right.
    expected = skm.log_loss([0, 2], _softmax(np.asarray(logits[:2])), labels=range(3), normalize=False)
    np.testing.assert_allclose(float(sums["loss"]), expected, rtol=1e-5)


def test_get_task_and_errors():
    assert tasks.list_tasks() == ["classification", "forecasting", "regression", "tagging"]
    cfg = ml_collections.ConfigDict({"name": "regression", "num_classes": 10, "num_targets": 3})
    assert tasks.get_task(cfg).num_outputs == 3
    with pytest.raises(ValueError, match="choose one of: classification, forecasting, regression, tagging"):
        tasks.get_task(ml_collections.ConfigDict({"name": "ranking", "num_classes": 2, "num_targets": 1}))
    with pytest.raises(ValueError):
        tasks.Classification(num_classes=1)
