"""End-to-end runs of the training loop on tiny variants."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxdl import train
from tests import helpers


def test_epochs_to_steps_matches_course_example():
    # Course: 2,000 samples, mini-batch 4, 10 epochs -> 5,000 updates (500 per epoch).
    assert train.num_train_steps(2000, 4, 10) == 5000
    assert train.num_train_steps(2000, 4, 1) == 500
    assert train.num_train_steps(10, 4, 1) == 3


def test_one_step_on_mock_tfds_mnist(tmp_path):
    cfg = helpers.config(
        "mnist_cnn",
        model__kwargs="{'features': (4,), 'dense_features': 8}",
        training__batch_size=8,
        training__num_steps=1,
        parallel__num_devices=1,
    )
    with tfds.testing.mock_data(num_examples=16):
        results = train.train_and_evaluate(cfg, tmp_path)
    assert results["final_step"] == 1
    assert set(results["test"]) == {"loss", "accuracy"}
    assert np.isfinite(results["test"]["loss"])


@pytest.mark.slow
def test_digits_default_reaches_97_percent(tmp_path):
    cfg = helpers.config("digits_cnn", parallel__num_devices=1)
    results = train.train_and_evaluate(cfg, tmp_path)
    assert results["test"]["accuracy"] >= 0.97
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["test"] == results["test"]
    assert saved["num_params"] == 53_002
    assert {"best_step", "wall_time_s", "config_hash", "versions", "time_to_first_step_s"} <= set(saved)
    lines = helpers.metrics_lines(tmp_path)
    assert any("val/accuracy" in line for line in lines)
    assert any("train/loss" in line and "lr" in line for line in lines)
    assert list((tmp_path / "tensorboard").iterdir())
    assert json.loads((tmp_path / "config.json").read_text())["model"]["name"] == "cnn"


def test_breast_cancer_logistic_regression_reaches_93_percent(tmp_path):
    cfg = helpers.config("breast_cancer_logreg", parallel__num_devices=1)
    results = train.train_and_evaluate(cfg, tmp_path)
    assert results["test"]["accuracy"] >= 0.93
    assert results["num_params"] == 31  # 30 weights and a bias: one logit for 2 classes.


def test_same_seed_same_numbers_and_other_seed_differs(tmp_path):
    a = train.train_and_evaluate(helpers.tiny_cnn(), tmp_path / "a")
    b = train.train_and_evaluate(helpers.tiny_cnn(), tmp_path / "b")
    c = train.train_and_evaluate(helpers.tiny_cnn(seed=1), tmp_path / "c")
    assert helpers.metrics_lines(tmp_path / "a") == helpers.metrics_lines(tmp_path / "b")
    assert a["test"] == b["test"]
    assert a["test"] != c["test"]


def test_resume_after_crash_equals_uninterrupted_run(tmp_path):
    full = train.train_and_evaluate(helpers.tiny_cnn(), tmp_path / "full")
    helpers.assert_resume_equals(helpers.tiny_cnn(), tmp_path / "full", full, tmp_path / "resumed", step=7)


def test_sigterm_saves_and_stops_cleanly_then_resumes(tmp_path):
    def terminate_at_3(step, state):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    full = train.train_and_evaluate(helpers.tiny_cnn(), tmp_path / "full")
    stopped = train.train_and_evaluate(helpers.tiny_cnn(), tmp_path / "run", hooks=[terminate_at_3])
    # The signal lands after step 3's checks; the run stops at the next step boundary.
    assert stopped == {"preempted": True, "step": 4}
    _, step = helpers.saved_params(tmp_path / "run")
    assert step == 4
    assert not (tmp_path / "run" / "results.json").exists()
    resumed = train.train_and_evaluate(helpers.tiny_cnn(), tmp_path / "run")
    assert resumed["test"] == full["test"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.parametrize("first,second", [(8, 1), (1, 8)])
def test_checkpoint_restores_across_device_counts(tmp_path, first, second):
    reference = train.train_and_evaluate(helpers.tiny_cnn(parallel__num_devices=first), tmp_path / "ref")
    with pytest.raises(helpers.Crash):
        train.train_and_evaluate(
            helpers.tiny_cnn(parallel__num_devices=first), tmp_path / "run", hooks=[helpers.crash_at(6)]
        )
    resumed = train.train_and_evaluate(helpers.tiny_cnn(parallel__num_devices=second), tmp_path / "run")
    assert resumed["num_devices"] == second
    np.testing.assert_allclose(resumed["test"]["loss"], reference["test"]["loss"], rtol=1e-4)
    helpers.assert_trees_close(
        helpers.saved_params(tmp_path / "ref")[0], helpers.saved_params(tmp_path / "run")[0], rtol=1e-4, atol=1e-5
    )


def test_jit_sharded_over_8_devices_matches_single_device(tmp_path):
    one = train.train_and_evaluate(helpers.tiny_cnn(parallel__num_devices=1), tmp_path / "one")
    eight = train.train_and_evaluate(helpers.tiny_cnn(parallel__num_devices=8), tmp_path / "eight")
    assert eight["num_devices"] == 8
    np.testing.assert_allclose(eight["test"]["loss"], one["test"]["loss"], rtol=1e-4)
    helpers.assert_trees_close(
        helpers.saved_params(tmp_path / "one")[0], helpers.saved_params(tmp_path / "eight")[0], rtol=1e-4, atol=1e-5
    )


@pytest.mark.slow
def test_pmap_matches_jit(tmp_path):
    # Dropout off: pmap draws one mask per device, jit one for the global batch.
    kwargs = "{'features': (4, 8), 'dense_features': 16, 'dropout_rate': 0.0, 'use_batch_norm': True}"
    jit = train.train_and_evaluate(helpers.tiny_cnn(model__kwargs=kwargs, parallel__num_devices=4), tmp_path / "jit")
    pmap = train.train_and_evaluate(
        helpers.tiny_cnn(model__kwargs=kwargs, parallel__num_devices=4, parallel__strategy="pmap"), tmp_path / "pmap"
    )
    np.testing.assert_allclose(pmap["test"]["loss"], jit["test"]["loss"], rtol=1e-4)
    helpers.assert_trees_close(
        helpers.saved_params(tmp_path / "jit")[0], helpers.saved_params(tmp_path / "pmap")[0], rtol=1e-4, atol=1e-5
    )


def test_corrupt_latest_checkpoint_is_skipped(tmp_path, caplog):
    cfg = helpers.tiny_cnn()
    train.train_and_evaluate(cfg, tmp_path)
    latest = tmp_path / "checkpoints" / "10"
    for path in (latest / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    cfg.training.num_steps = 12
    with caplog.at_level("WARNING"):
        results = train.train_and_evaluate(cfg, tmp_path)
    assert "checkpoint at step 10 is unreadable" in caplog.text
    assert results["final_step"] == 12
    steps = [line["step"] for line in helpers.metrics_lines(tmp_path) if "train/loss" in line]
    assert steps == sorted(set(steps))  # Resumed from 5: steps 6..10 logged once, not twice.


def _diverging(learning_rate: float, num_steps: int):
    """Plain SGD on raw diabetes features with a step size that blows up, saving every step."""
    return helpers.config(
        "diabetes_linear",
        optimizer__name="sgd",
        optimizer__learning_rate=learning_rate,
        training__num_steps=num_steps,
        training__checkpoint_every_steps=1,
        training__log_every_steps=1,
        parallel__num_devices=1,
    )


def test_nan_loss_stops_the_run_and_is_never_checkpointed(tmp_path):
    with pytest.raises(train.NonFiniteLossError, match="NaN or inf|training loss is"):
        train.train_and_evaluate(_diverging(1e6, 50), tmp_path)
    params, step = helpers.saved_params(tmp_path)
    assert step >= 1  # The run got going before it diverged ...
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))  # ... and saved nothing non-finite.
    assert not (tmp_path / "results.json").exists()


def test_non_finite_params_are_never_checkpointed(tmp_path):
    """Params can overflow in the very update whose loss was still finite."""
    with pytest.raises(train.NonFiniteLossError, match="parameters became NaN or inf at step 1"):
        train.train_and_evaluate(_diverging(1e38, 5), tmp_path)
    assert not list((tmp_path / "checkpoints").glob("[0-9]*"))


def test_early_stopping_on_validation_loss(tmp_path):
    # A learning rate too small to change float32 params (and no BatchNorm statistics
    # to drift): validation loss never improves after the first evaluation.
    cfg = helpers.tiny_cnn(
        model__kwargs="{'features': (4,), 'dense_features': 8}",
        optimizer__name="sgd",
        optimizer__learning_rate=1e-30,
        training__num_steps=40,
        training__eval_every_steps=2,
        training__early_stopping_patience=3,
    )
    results = train.train_and_evaluate(cfg, tmp_path)
    assert results["stopped_early"]
    assert results["final_step"] == 8  # Best at step 2, then 3 evaluations without improvement.
    assert results["best_step"] == 2


def test_gradient_accumulation_equals_larger_batch(tmp_path):
    common = dict(
        optimizer__name="sgd",
        optimizer__learning_rate=0.1,
        training__eval_every_steps=0,
        parallel__num_devices=1,
        dataset__train_transforms="standardize()",
    )
    big = train.train_and_evaluate(
        helpers.config("breast_cancer_logreg", training__batch_size=32, training__num_steps=4, **common),
        tmp_path / "big",
    )
    accumulated = train.train_and_evaluate(
        helpers.config(
            "breast_cancer_logreg",
            training__batch_size=16,
            training__num_steps=8,
            optimizer__grad_accum_steps=2,
            **common,
        ),
        tmp_path / "accumulated",
    )
    # The 16-example micro-batches are the halves of the 32-example batches (one record stream).
    np.testing.assert_allclose(accumulated["test"]["loss"], big["test"]["loss"], rtol=1e-5)


def test_jaxdl_eval_reports_the_best_checkpoint(tmp_path):
    results = train.train_and_evaluate(helpers.tiny_cnn(), tmp_path)
    assert train.evaluate_workdir(tmp_path) == results["test"]


@pytest.mark.slow
def test_grain_worker_processes_from_the_command_line_give_the_same_numbers(tmp_path):
    """`python -m jaxdl.main` with a grain worker process equals an in-process pipeline."""
    overrides = dict(training__num_steps=4, training__eval_every_steps=0, training__checkpoint_every_steps=0)
    inline = train.train_and_evaluate(helpers.tiny_cnn(dataset__worker_count=0, **overrides), tmp_path / "inline")
    args = helpers.cli_args(dataset__worker_count=1, **overrides)
    subprocess.run(
        [sys.executable, "-m", "jaxdl.main", f"--workdir={tmp_path / 'workers'}", *args],
        check=True,
        cwd=helpers.ROOT,
        capture_output=True,
        timeout=300,
    )
    workers = json.loads((tmp_path / "workers" / "results.json").read_text())
    assert workers["test"] == inline["test"]
