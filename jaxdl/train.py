"""The training loop: init or restore, jit/pmap steps, evaluation, checkpoints, logs."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxdl import compile_cache, configuration, models, provenance, runlog
from jaxdl.checkpoint import Checkpoints
from jaxdl.data import sources
from jaxdl.errors import NonFiniteLossError, WorkdirError
from jaxdl.experiment import Experiment, num_train_steps
from jaxdl.state import TrainState
from jaxdl.steps import StepOptions, evaluate, make_eval_step, make_train_step
from jaxdl.trained import CLASS_NAMES_FILENAME, INPUTS_FILENAME, TrainedRun

__all__ = [
    "Experiment",
    "NonFiniteLossError",
    "StepOptions",
    "evaluate",
    "evaluate_workdir",
    "make_eval_step",
    "make_train_step",
    "num_train_steps",
    "train_and_evaluate",
]

log = logging.getLogger(__name__)

Hook = Callable[[int, TrainState], None]


@dataclasses.dataclass
class _Progress:
    """What a checkpoint's `meta` item carries besides the arrays."""

    best_value: float | None = None  # Of the run's best_metric (e.g. val/loss) at best_step.
    best_val_loss: float = math.inf  # The validation loss at best_step (reported whatever picks the best).
    best_step: int = -1
    evals_without_improvement: int = 0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, meta: dict) -> _Progress:
        """From a checkpoint's meta; checkpoints written before best_value existed were picked by val/loss."""
        meta = dict(meta)
        if "best_value" not in meta and meta.get("best_step", -1) >= 0:
            meta["best_value"] = meta.get("best_val_loss")
        return cls(**{f.name: meta[f.name] for f in dataclasses.fields(cls) if f.name in meta})


class _Preemption:
    """Turns SIGTERM into a request to save and stop at the next step boundary."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def agreed(self) -> bool:
        """True when any process was asked to stop (all processes stop together)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))


def _mean_metrics(pending: Sequence[dict], first_step: int) -> dict:
    """Host means of per-step metrics; raises on a non-finite loss."""
    values = jax.device_get(list(pending))
    losses = np.array([float(np.asarray(m["loss"]).reshape(-1)[0]) for m in values])
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        step = first_step + int(bad[0]) + 1
        raise NonFiniteLossError(
            f"training loss is {losses[bad[0]]} at step {step}; stopped without checkpointing it. "
            "Lower config.optimizer.learning_rate or set config.optimizer.grad_clip_norm"
        )
    return {k: float(np.mean([np.asarray(m[k]).reshape(-1)[0] for m in values])) for k in values[0]}


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _versions() -> dict:
    return {
        "jax": jax.__version__,
        "jaxlib": importlib.metadata.version("jaxlib"),
        "flax": flax.__version__,
        "optax": optax.__version__,
    }


class _Trainer:
    """One invocation of the loop: restores or initialises, then steps, logs, evaluates, saves."""

    def __init__(
        self,
        run: Experiment,
        workdir: Path,
        stack: contextlib.ExitStack,
        start_time: float,
        cache_stats: compile_cache.Stats,
    ):
        config, strategy = run.config, run.strategy
        self.cache_stats = cache_stats
        self.run, self.config, self.training, self.workdir = run, config, config.training, workdir
        self.strategy, self.task, self.start_time = strategy, run.task, start_time
        self.init_rng, self.dropout_rng = run.rngs()
        self.abstract = run.abstract_state(self.init_rng)
        self.tree = self.abstract.checkpoint_tree()
        self.checkpoints = Checkpoints(
            workdir,
            keep=self.training.keep_checkpoints,
            async_save=self.training.async_checkpoints,
            remove_unfinished=True,  # This process is the workdir's one writer.
        )
        stack.callback(self.checkpoints.close)
        self.data = run.train_data()
        stack.callback(self.data.close)
        restored = self.checkpoints.restore_latest(self.tree, run.state_shardings(self.abstract), self.data)
        self.data.start_prefetch()
        if restored is None:
            self.state = run.fresh_state(self.init_rng)
            self.progress = _Progress()
        else:
            self.state = self.state_from(restored[0])
            self.progress = _Progress.from_json(restored[1])
        self.step = self.start_step = int(jax.device_get(strategy.host_state(self.state).step))
        if run.chief:
            log.info("%s\n%s", config.model.name, runlog.parameter_table(self.abstract.params))
            log.info("%s from step %d to %d", "resuming" if restored else "training", self.step, run.total_steps)
        self.writer = runlog.MetricWriter(workdir, enabled=run.chief)
        stack.callback(self.writer.close)
        self.writer.truncate_after(self.step)
        if self.step == 0:
            self.writer.write_text("config", config.to_json_best_effort(indent=2))
        self.train_step = run.train_step
        self.pending: list[dict] = []
        self.time_to_first_step = None

    def state_from(self, tree: dict) -> TrainState:
        """A placed TrainState from restored checkpoint arrays."""
        return self.run.restored_state(self.abstract, tree)

    def _finite_tree(self) -> dict:
        """The state's checkpoint arrays; raises instead of handing out NaN or inf params."""
        tree = self.strategy.host_state(self.state).checkpoint_tree()
        if not bool(_all_finite(tree["params"])):
            raise NonFiniteLossError(
                f"parameters became NaN or inf at step {self.step}; stopped without checkpointing them. "
                "Lower config.optimizer.learning_rate or set config.optimizer.grad_clip_norm"
            )
        return tree

    def _due(self, every: int) -> bool:
        return bool(every) and self.step % every == 0

    def _patience_spent(self) -> bool:
        patience = self.training.early_stopping_patience
        return bool(patience) and self.progress.evals_without_improvement >= patience

    def train(self, hooks: Sequence[Hook]) -> tuple[bool, bool]:
        """Steps to the end; returns (preempted, stopped_early)."""
        run, val_split = self.run, self.config.dataset.val_split
        bar = runlog.ProgressBar(
            run.total_steps, initial_step=self.step, enabled=run.chief and self.training.progress_bar
        )
        self.last_flush, self.timed_steps, self.last_time = self.step, 0, time.time()
        stopped_early = self._patience_spent()
        profiler = runlog.StepProfiler(self.config.profile_steps, run.total_steps, self.workdir / "profile")
        with bar, _Preemption() as preemption, profiler:
            while self.step < run.total_steps and not stopped_early:
                profiler.before(self.step + 1)
                self.state, metrics = self.train_step(self.state, next(self.data), self.dropout_rng)
                self.pending.append(metrics)
                self.step += 1
                profiler.after(self.step, metrics)
                self.timed_steps += 1
                if self.time_to_first_step is None:
                    jax.block_until_ready(metrics)
                    self.time_to_first_step = time.time() - self.start_time
                    self.timed_steps, self.last_time = 0, time.time()  # Throughput excludes compilation.
                last = self.step == run.total_steps
                evaluate_now = bool(val_split) and (self._due(self.training.eval_every_steps) or last)
                checkpoint_now = self._due(self.training.checkpoint_every_steps) or last
                # Across processes the stop must be agreed, which costs a collective: only at log steps.
                preempted = (jax.process_count() == 1 or self._due(self.training.log_every_steps)) and (
                    preemption.agreed()
                )
                if self._due(self.training.log_every_steps) or evaluate_now or checkpoint_now or preempted:
                    self._flush_train_metrics(bar)
                else:
                    bar.update(self.step)
                if evaluate_now:
                    self._validate()
                    stopped_early = self._patience_spent()
                if checkpoint_now or preempted or stopped_early:
                    self.checkpoints.save_latest(self.step, self._finite_tree(), self.data, self.progress.to_json())
                for hook in hooks:
                    hook(self.step, self.state)
                if preempted:
                    self.checkpoints.wait_until_finished()  # Within the grace period, before the log says saved.
                    return True, False
        return False, stopped_early

    def _flush_train_metrics(self, bar) -> None:
        """Logs the mean train metrics since the last flush; raises on NaN/inf before any save."""
        if not self.pending:
            return
        means = _mean_metrics(self.pending, self.last_flush)
        logged = {f"train/{k}": v for k, v in means.items()}
        logged["lr"] = float(self.run.schedule((self.step - 1) // self.run.accum))
        if self.timed_steps:
            logged["steps_per_sec"] = self.timed_steps / max(time.time() - self.last_time, 1e-9)
        self.writer.write(self.step, logged)
        postfix = {"loss": means["loss"]}
        if self.progress.best_step >= 0:
            postfix[f"best_{self.run.best_metric.replace('/', '_')}"] = self.progress.best_value
        bar.update(self.step, postfix)
        self.pending, self.last_flush, self.last_time, self.timed_steps = [], self.step, time.time(), 0

    def _validate(self) -> None:
        """Evaluates on the validation split; a new best is saved to the best checkpoint."""
        val = self.run.evaluate(self.state, self.config.dataset.val_split)
        self.writer.write(self.step, {f"val/{k}": v for k, v in val.items()})
        value = val[self.run.best_metric.split("/", 1)[1]]
        if self.task.is_better(self.run.best_metric, value, self.progress.best_value):
            self.progress = _Progress(value, val["loss"], self.step, 0)
            self.checkpoints.save_best(self.step, self._finite_tree(), self.data, self.progress.to_json())
        else:
            self.progress.evals_without_improvement += 1

    def test(self, stopped_early: bool) -> dict:
        """Evaluates the best checkpoint (else the final state) on the test split; writes results.json."""
        config = self.config
        # results.json must never claim a run whose last checkpoint a kill could still lose.
        self.checkpoints.wait_until_finished()
        best = None
        if config.dataset.val_split:
            best = self.checkpoints.restore_best(self.tree, self.strategy.state_shardings(self.tree))
        state = self.state_from(best[0]) if best is not None else self.state
        test = self.run.evaluate(state, config.dataset.test_split)
        self.writer.write(self.step, {f"test/{k}": v for k, v in test.items()})
        results = {
            "test": test,
            "best_step": best[1]["best_step"] if best is not None else self.step,
            "best_metric": self.run.best_metric,
            "best_value": _Progress.from_json(best[1]).best_value if best is not None else None,
            "best_val_loss": best[1]["best_val_loss"] if best is not None else None,
            "final_step": self.step,
            "stopped_early": stopped_early,
            "num_params": models.count_params(self.abstract.params),
            "wall_time_s": time.time() - self.start_time,
            "time_to_first_step_s": self.time_to_first_step,
            # This invocation's compiles: served from the persistent cache (hits) or compiled (misses).
            "compilation_cache": self.cache_stats.read(),
            "config_hash": configuration.config_hash(config),
            "num_devices": self.run.mesh.size,
            "num_processes": jax.process_count(),
            "versions": _versions(),
        }
        baseline = self.run.baseline()
        if baseline is not None:
            results["baseline"] = baseline
            key = self.task.baseline_metric  # Lower is better.
            results["beats_baseline"] = bool(test[key] <= baseline[key])
        if self.run.chief:
            (self.workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
            log.info("test: %s", runlog.format_metrics(test))
        return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, *, hooks: Sequence[Hook] = ()) -> dict:
    """Trains, evaluating and checkpointing as configured; resumes from `workdir` if it holds a run.

    Args:
      config: the experiment config (validated here before any compute).
      workdir: where checkpoints, metrics.jsonl, TensorBoard files and results.json go.
      hooks: called as hook(step, state) after every step (tests use them to
        interrupt runs).

    Returns:
      The results (also written to workdir/results.json), or, after a SIGTERM,
      `{"preempted": True, "step": step}`.
    """
    start_time = time.time()
    cache_stats = compile_cache.Stats()
    workdir = _check_workdir(workdir)
    run = Experiment(config)
    runlog.profile_window(config.profile_steps, run.total_steps)  # A bad window stops the run before compiling.
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WorkdirError(f"--workdir '{workdir}' cannot be created: {error.strerror}") from None
    if run.chief:
        _save_config(config, workdir)
        (workdir / INPUTS_FILENAME).write_text(json.dumps(run.input_spec()) + "\n")  # For jaxdl-predict.
        names = sources.class_names(config.dataset)
        if names is not None:  # A dataset read from disk: jaxdl-predict names its classes without the folder.
            (workdir / CLASS_NAMES_FILENAME).write_text(json.dumps(list(names)) + "\n")
        else:
            (workdir / CLASS_NAMES_FILENAME).unlink(missing_ok=True)  # Not left from another dataset's run.
    with contextlib.ExitStack() as stack:
        trainer = _Trainer(run, workdir, stack, start_time, cache_stats)
        if run.chief:  # After the restore, which tells a resume (checked against the record) from a start.
            provenance.record_start(config, workdir, start_step=trainer.start_step, devices_used=run.mesh.size)
        preempted, stopped_early = trainer.train(hooks)
        if preempted:
            log.warning("SIGTERM: saved a checkpoint at step %d; run the same command again to resume", trainer.step)
            return {"preempted": True, "step": trainer.step}
        if stopped_early:
            log.info(
                "early stopping at step %d: no validation improvement in %d evaluations",
                trainer.step,
                config.training.early_stopping_patience,
            )
        return trainer.test(stopped_early)


def _check_workdir(workdir: str | Path) -> Path:
    """The workdir as a Path; one that cannot hold a run is a one-line WorkdirError (before any compute)."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"--workdir '{workdir}' is a file, not a directory; choose another path")
    if (workdir / "config.json").exists():
        configuration.read_config(workdir / "config.json")  # A corrupt one stops the run here.
    return workdir


def _save_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
    path = workdir / "config.json"
    if path.exists():
        previous = configuration.read_config(path)
        if configuration.config_hash(previous) != configuration.config_hash(config):
            log.warning("config differs from the one %s was started with; %s is overwritten", workdir, path.name)
    configuration.save_config(config, path)


def evaluate_workdir(workdir: str | Path, split: str | None = None, predictions: str | Path | None = None) -> dict:
    """Metrics of a workdir's best checkpoint (else its latest) on `split` (default: test).

    With `predictions`, the split's predictions are also written there
    (jaxdl.predictions); a path that cannot be written fails before evaluating.
    """
    run = TrainedRun.open(workdir)
    writer = None
    if predictions is not None:
        from jaxdl.predictions import PredictionsWriter  # Only jaxdl-eval --predictions needs the writers.

        writer = PredictionsWriter(run, predictions)
    metrics = run.evaluate(split)
    if writer is not None:
        writer.write(split)
    return metrics
