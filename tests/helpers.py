"""Small configs and readers shared by the end-to-end tests."""

import json
import os
from pathlib import Path

import ml_collections
import numpy as np

from jaxdl import checkpoint, configuration

ROOT = Path(__file__).resolve().parent.parent


def config(name: str = "digits_cnn", **overrides) -> ml_collections.ConfigDict:
    """A shipped config with `key=value` overrides (dots as double underscores)."""
    cfg = configuration.load_config(ROOT / "configs" / f"{name}.py")
    cfg.training.progress_bar = False
    configuration.apply_overrides(cfg, [f"{k.replace('__', '.')}={v}" for k, v in overrides.items()])
    return cfg


TINY_CNN = dict(
    model__kwargs="{'features': (4, 8), 'dense_features': 16, 'dropout_rate': 0.2, 'use_batch_norm': True}",
    # Momentum SGD: linear in the gradient, so device-count rounding differences
    # stay at float precision (Adam's normalisation amplifies them near zero).
    optimizer__name="momentum",
    optimizer__learning_rate=0.05,
    training__batch_size=16,
    training__num_steps=10,
    training__eval_every_steps=5,
    training__checkpoint_every_steps=5,
    training__log_every_steps=1,
    parallel__num_devices=1,
)


# A 4-step run with an evaluation and a checkpoint every 2 steps, batch 8, one device: the
# shapes runs' settings, shared so that their steps compile once (the compilation cache).
SHORT_RUN = dict(
    training__batch_size=8,
    training__num_steps=4,
    training__eval_every_steps=2,
    training__checkpoint_every_steps=2,
    training__log_every_steps=1,
    parallel__num_devices=1,
)


def tiny_cnn(**overrides) -> ml_collections.ConfigDict:
    """A few steps of a small CNN (with BatchNorm and dropout) on digits."""
    return config("digits_cnn", **{**TINY_CNN, **overrides})


def build_without_data(cfg: ml_collections.ConfigDict) -> None:
    """Runs every builder that needs no dataset (task, step options, model, optimizer, transforms).

    For full-size configs whose dataset is not prepared here; each raises its
    one-line ConfigError on a bad key.
    """
    from jaxdl import experiment, optim, steps, tasks
    from jaxdl.data import pipeline

    task = tasks.build_task(cfg)
    steps.StepOptions.from_config(cfg, task)
    experiment.build_model(cfg, task)
    experiment.best_metric(cfg, task)
    optim.build_optimizer(cfg, 100)
    pipeline.Splits(cfg.dataset)


def default_compiler_env() -> dict[str, str]:
    """os.environ without conftest's fast-compile XLA flags: XLA:CPU as users run it.

    For subprocess runs whose test asserts bit-equal numbers across two different
    programs (two layouts of one run): the unoptimised backend may sum some of
    them in different orders (yolov1_tiny's validation loss on 2 processes x 1
    device vs 1 x 2 differed in its last bit), the default one does not.
    """
    fast = set(os.environ.get("JAXDL_TEST_FAST_COMPILE", "").split())
    flags = [flag for flag in os.environ.get("XLA_FLAGS", "").split() if flag not in fast]
    return {**os.environ, "XLA_FLAGS": " ".join(flags)}


def cli_args(**overrides) -> list[str]:
    """`jaxdl-train` arguments for the tiny CNN with `overrides`."""
    merged = {**TINY_CNN, "training__progress_bar": "false", **overrides}
    return [f"--config={ROOT / 'configs' / 'digits_cnn.py'}"] + [
        f"--config.{key.replace('__', '.')}={value}" for key, value in merged.items()
    ]


def metrics_lines(workdir) -> list[dict]:
    """metrics.jsonl without the timing-dependent throughput."""
    lines = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "steps_per_sec"} for line in lines]


def saved_params(workdir, kind: str = "latest") -> tuple[dict, int]:
    """Params and step of the newest checkpoint of `kind` ('latest' or 'best'), on one local device."""
    variables, step = checkpoint.restore_variables(workdir, kinds=("best" if kind == "best" else "latest",))
    return variables["params"], step


def param_count(name: str, **kwargs) -> int:
    """Parameters of registered model `name` (1000 classes unless given) at its image_size; eval_shape only."""
    from jaxdl import models

    kwargs.setdefault("num_outputs", 1000)
    model = models.create_model(name, **kwargs)
    shape = (1, model.image_size, model.image_size, 3)
    return models.count_params(models.abstract_variables(model, shape)["params"])


def load_experiment(name: str):
    """experiments/<name>.py as a module (experiments/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_experiment_{name}", ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    """Leaves of two pytrees agree within tolerance."""
    import jax

    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


class Crash(RuntimeError):
    """A simulated crash in the middle of a run."""


def crash_at(step: int):
    """A training hook that raises Crash when the loop reaches `step`."""

    def hook(current, state):
        if current == step:
            raise Crash(f"simulated crash at step {current}")

    return hook


def assert_resume_equals(cfg: ml_collections.ConfigDict, full_dir, full: dict, workdir, step: int = 3) -> None:
    """Crashes a run of `cfg` at `step`, resumes it in `workdir`: results, metrics and params equal the full run's."""
    import pytest

    from jaxdl import train

    with pytest.raises(Crash):
        train.train_and_evaluate(cfg, workdir, hooks=[crash_at(step)])
    assert not (Path(workdir) / "results.json").exists()
    resumed = train.train_and_evaluate(cfg, workdir)
    assert resumed["test"] == full["test"]
    assert metrics_lines(workdir) == metrics_lines(full_dir)
    assert_trees_close(saved_params(full_dir)[0], saved_params(workdir)[0], rtol=0, atol=0)


def shared_run(tmp_path_factory, name: str, cfg: ml_collections.ConfigDict) -> tuple[Path, dict]:
    """(workdir, results) of a training run made once per test session, however many xdist workers ask.

    The first worker to ask trains it under a file lock; the others wait for the
    lock and read its results.json. (A module fixture would train once per worker
    that runs one of the module's tests.) Without xdist it is a plain cached run.
    """
    import os

    import filelock

    from jaxdl import train

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # The session's dir, shared by its workers.
    workdir = base / "shared_runs" / name
    workdir.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(f"{workdir}.lock"):
        if not (workdir / "results.json").exists():
            train.train_and_evaluate(cfg, workdir)
    return workdir, json.loads((workdir / "results.json").read_text())
