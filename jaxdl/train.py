"""The training loop: init or restore, jit/pmap steps, evaluation, checkpoints, logs."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.metadata
import itertools
import json
import logging
import math
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxdl import augment, configuration, models, optim, parallel, tasks
from jaxdl import logging as jlog
from jaxdl.checkpoint import Checkpoints
from jaxdl.data import pipeline
from jaxdl.state import TrainState

log = logging.getLogger(__name__)

Hook = Callable[[int, TrainState], None]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; nothing after it was checkpointed."""


def num_train_steps(num_examples: int, batch_size: int, num_epochs: float) -> int:
    """Steps (mini-batch updates) for `num_epochs` passes: ceil(epochs * examples / batch)."""
    return max(1, math.ceil(num_epochs * num_examples / batch_size))


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """Loss options of the train step beyond the task's plain loss."""

    mix: augment.MixConfig = augment.MixConfig()
    label_smoothing: float = 0.0
    aux_loss_weight: float = 0.3
    # Param paths ('/'-joined) whose BatchNorm statistics stay fixed (frozen layers).
    frozen: re.Pattern | None = None

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> StepOptions:
        return cls(
            mix=augment.MixConfig.from_config(config.augment),
            label_smoothing=config.task.get("label_smoothing", 0.0),
            aux_loss_weight=config.model.get("aux_loss_weight", 0.3),
            frozen=re.compile(config.transfer.freeze) if config.transfer.freeze else None,
        )

    @property
    def soft(self) -> bool:
        """Whether the loss takes soft targets (smoothed or mixed labels)."""
        return self.mix.enabled or self.label_smoothing > 0


def _keep_frozen_stats(pattern: re.Pattern | None, old: dict, new: dict) -> dict:
    """New batch statistics, except those of frozen layers, which keep their values."""
    if pattern is None or not old:
        return new

    def pick(path, old_leaf, new_leaf):
        return old_leaf if pattern.search(optim.path_name(path)) else new_leaf

    return jax.tree_util.tree_map_with_path(pick, old, new)


def make_train_step(task: tasks.Task, options: StepOptions = StepOptions()) -> Callable:
    """The pure step: (state, batch, rng) -> (new state, mean metrics of the batch).

    A model may return a tuple (main, *auxiliary) in training (GoogLeNet); the
    loss is then main + options.aux_loss_weight * sum(auxiliary), and the metrics
    are those of the main output.
    """

    def train_step(state: TrainState, batch: dict, rng: jax.Array, axis_name: str | None = None):
        # One key per step; under pmap also per device, as each sees different examples.
        rng = jax.random.fold_in(rng, state.step)
        if axis_name is not None:
            rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
        targets = task.prepare_targets(batch["target"])
        inputs = batch["input"]
        if options.soft:
            soft = task.soft_targets(targets, options.label_smoothing)
            if options.mix.enabled:
                # A key of its own: the dropout key is the same with and without mixing.
                inputs, soft, _ = augment.mix(jax.random.fold_in(rng, 1 << 20), inputs, soft, options.mix)

            def per_example(outputs):
                return task.soft_loss(outputs, soft)
        else:

            def per_example(outputs):
                return task.loss(outputs, targets)

        def loss_fn(params):
            outputs, updates = state.apply_fn(
                {**state.variables(), "params": params},
                inputs,
                train=True,
                rngs={"dropout": rng},
                mutable=["batch_stats"],
            )
            main, *aux = outputs if isinstance(outputs, tuple) else (outputs,)
            losses = per_example(main)
            for extra in aux:
                losses = losses + options.aux_loss_weight * per_example(extra)
            return jnp.mean(losses), (main, losses, updates)

        (_, (outputs, losses, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        metrics = {k: jnp.mean(v) for k, v in task.metrics(outputs, targets).items()}
        metrics["loss"] = jnp.mean(losses)  # The loss that was minimised (smoothed, mixed, with aux).
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            metrics = jax.lax.pmean(metrics, axis_name)
        batch_stats = _keep_frozen_stats(
            options.frozen, state.batch_stats, updates.get("batch_stats", state.batch_stats)
        )
        state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
        return state, metrics

    return train_step


def make_eval_step(task: tasks.Task) -> Callable:
    """The pure eval step: masked sums of per-example metrics and the example count.

    Given `totals`, it returns `totals` plus this batch's sums. `evaluate` chains
    the steps through `totals` so they run one after another: independent
    steps may execute concurrently, and with cross-process collectives (gloo on
    CPU) two processes could then enter them in different orders and deadlock.
    """

    def eval_step(state: TrainState, batch: dict, totals: dict | None = None, axis_name: str | None = None):
        outputs = state.apply_fn(state.variables(), batch["input"], train=False)
        metrics = task.metrics(outputs, task.prepare_targets(batch["target"]))
        mask = batch["mask"]
        sums = {k: jnp.sum(v * mask) for k, v in metrics.items()}
        sums["count"] = jnp.sum(mask)
        if axis_name is not None:
            sums = jax.lax.psum(sums, axis_name)
        return sums if totals is None else jax.tree.map(jnp.add, totals, sums)

    return eval_step


@dataclasses.dataclass
class _Progress:
    """What a checkpoint's `meta` item carries besides the arrays."""

    best_val_loss: float = math.inf
    best_step: int = -1
    evals_without_improvement: int = 0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


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


def evaluate(eval_step: Callable, state: TrainState, batches: Iterable[dict], strategy, task: tasks.Task) -> dict:
    """Example-weighted means of the task's metrics over `batches`."""
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        raise ValueError("the evaluation split yielded no batch; lower config.training.batch_size")
    # Zero totals of the step's output structure (scalars), placed like the state.
    shapes = jax.eval_shape(make_eval_step(task), strategy.host_state(state), first)
    totals = strategy.put_state(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes))
    for batch in itertools.chain([first], batches):
        totals = eval_step(state, strategy.place_batch(batch), totals)
    totals = jax.device_get(strategy.unreplicate_metrics(totals))
    count = float(totals.pop("count"))
    return task.finalize({k: float(v) / count for k, v in totals.items()})


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


class Experiment:
    """What one run builds from its config: mesh, strategy, task, model, data, optimizer."""

    def __init__(self, config: ml_collections.ConfigDict):
        parallel.initialize_distributed(config.parallel)
        self.mesh = parallel.make_mesh(config.parallel.num_devices)
        configuration.validate(config, num_devices=self.mesh.size)
        self.config = config
        self.chief = jax.process_index() == 0
        self.strategy = parallel.make_strategy(config.parallel.strategy, self.mesh)
        self.task = tasks.get_task(config.task, config.dataset)
        self.model = configuration.build_model(config, axis_name=self.strategy.axis_name)
        self.splits = pipeline.Splits(config.dataset)
        training = config.training
        num_examples = len(self.splits.source(config.dataset.train_split))
        self.total_steps = training.num_steps or num_train_steps(num_examples, training.batch_size, training.num_epochs)
        accum = config.optimizer.grad_accum_steps
        self.tx, self.schedule = optim.build_optimizer(config, math.ceil(self.total_steps / accum))
        self.accum = accum

    def eval_batches(self, split: str):
        """Fixed-size masked batches of one split."""
        return pipeline.eval_batches(
            self.splits,
            split,
            global_batch_size=self.config.training.batch_size,
            remainder=self.config.dataset.eval_remainder,
        )

    @functools.cached_property
    def sample_input(self) -> np.ndarray:
        """One input of the training split, with its batch axis (read once per run)."""
        return next(iter(self.eval_batches(self.config.dataset.train_split)))["input"][:1]

    def abstract_state(self, rng: jax.Array) -> tuple[TrainState, Callable]:
        """State shapes from jax.eval_shape (nothing allocated) and the init function."""
        sample = self.sample_input

        def init(key):
            variables = self.model.init(key, jnp.asarray(sample), train=False)
            return TrainState.create(
                apply_fn=self.model.apply,
                params=variables["params"],
                batch_stats=variables.get("batch_stats", {}),
                tx=self.tx,
            )

        return jax.eval_shape(init, rng), init


class _Trainer:
    """One invocation of the loop: restores or initialises, then steps, logs, evaluates, saves."""

    def __init__(self, run: Experiment, workdir: Path, stack: contextlib.ExitStack, start_time: float):
        config, strategy = run.config, run.strategy
        self.run, self.config, self.training, self.workdir = run, config, config.training, workdir
        self.strategy, self.task, self.start_time = strategy, run.task, start_time
        self.init_rng, self.dropout_rng = jax.random.split(jax.random.key(config.seed))
        self.abstract, init = run.abstract_state(self.init_rng)
        self.tree = self.abstract.checkpoint_tree()
        self.checkpoints = Checkpoints(workdir, keep=self.training.keep_checkpoints)
        stack.callback(self.checkpoints.close)
        loader = pipeline.train_loader(
            run.splits,
            global_batch_size=self.training.batch_size,
            seed=config.seed,
            worker_count=config.dataset.worker_count,
        )
        self.data = pipeline.DeviceIterator(loader, strategy.place_batch, prefetch=config.dataset.prefetch_batches)
        stack.callback(self.data.close)
        restored = self.checkpoints.restore_latest(self.tree, strategy.state_shardings(self.tree), self.data)
        self.data.start_prefetch()
        if restored is None:
            self.state = strategy.put_state(self._pretrained(jax.jit(init)(self.init_rng)))
            self.progress = _Progress()
        else:
            self.state = self.state_from(restored[0])
            self.progress = _Progress(**restored[1])
        self.step = self.start_step = int(jax.device_get(strategy.host_state(self.state).step))
        if run.chief:
            log.info("%s\n%s", config.model.name, jlog.parameter_table(self.abstract.params))
            log.info("%s from step %d to %d", "resuming" if restored else "training", self.step, run.total_steps)
        self.writer = jlog.MetricWriter(workdir, enabled=run.chief)
        stack.callback(self.writer.close)
        self.writer.truncate_after(self.step)
        if self.step == 0:
            self.writer.write_text("config", config.to_json_best_effort(indent=2))
        self.train_step = strategy.compile_train(make_train_step(self.task, StepOptions.from_config(config)))
        self.eval_step = strategy.compile_eval(make_eval_step(self.task))
        self.pending: list[dict] = []
        self.time_to_first_step = None

    def _pretrained(self, state: TrainState) -> TrainState:
        """The fresh state with config.init_from's weights loaded where names and shapes fit."""
        config = self.config
        if not config.init_from:
            return state
        from jaxdl import convert

        sample_shape = self.run.sample_input.shape
        loaded = convert.from_torch(self.run.model, config.init_from, input_shape=sample_shape, skip_mismatched=True)
        exclude = re.compile(config.transfer.exclude) if config.transfer.exclude else None
        counts = {"loaded": 0, "kept": 0}

        def merge(collection: str, fresh):
            source = flax.traverse_util.flatten_dict(loaded.get(collection, {}), sep="/")

            def pick(path, leaf):
                name = optim.path_name(path)
                if name in source and not (exclude is not None and exclude.search(name)):
                    counts["loaded"] += 1
                    return jnp.asarray(source[name], leaf.dtype)
                counts["kept"] += 1
                return leaf

            return jax.tree_util.tree_map_with_path(pick, fresh)

        state = state.replace(params=merge("params", state.params), batch_stats=merge("batch_stats", state.batch_stats))
        if self.run.chief:
            log.info("init_from %s: loaded %d arrays, kept the fresh init of %d", config.init_from, *counts.values())
        return state

    def state_from(self, tree: dict) -> TrainState:
        """A placed TrainState from restored checkpoint arrays."""
        return self.strategy.put_state(self.abstract.from_checkpoint_tree(tree))

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
        bar = jlog.ProgressBar(
            run.total_steps, initial_step=self.step, enabled=run.chief and self.training.progress_bar
        )
        self.last_flush, self.timed_steps, self.last_time = self.step, 0, time.time()
        stopped_early = self._patience_spent()
        with bar, _Preemption() as preemption:
            while self.step < run.total_steps and not stopped_early:
                self.state, metrics = self.train_step(self.state, next(self.data), self.dropout_rng)
                self.pending.append(metrics)
                self.step += 1
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
            postfix["best_val_loss"] = self.progress.best_val_loss
        bar.update(self.step, postfix)
        self.pending, self.last_flush, self.last_time, self.timed_steps = [], self.step, time.time(), 0

    def _validate(self) -> None:
        """Evaluates on the validation split; a new best is saved to the best checkpoint."""
        val_split = self.config.dataset.val_split
        val = evaluate(self.eval_step, self.state, self.run.eval_batches(val_split), self.strategy, self.task)
        self.writer.write(self.step, {f"val/{k}": v for k, v in val.items()})
        if val["loss"] < self.progress.best_val_loss:
            self.progress = _Progress(val["loss"], self.step, 0)
            self.checkpoints.save_best(self.step, self._finite_tree(), self.data, self.progress.to_json())
        else:
            self.progress.evals_without_improvement += 1

    def test(self, stopped_early: bool) -> dict:
        """Evaluates the best checkpoint (else the final state) on the test split; writes results.json."""
        config = self.config
        best = None
        if config.dataset.val_split:
            best = self.checkpoints.restore_best(self.tree, self.strategy.state_shardings(self.tree))
        state = self.state_from(best[0]) if best is not None else self.state
        batches = self.run.eval_batches(config.dataset.test_split)
        test = evaluate(self.eval_step, state, batches, self.strategy, self.task)
        self.writer.write(self.step, {f"test/{k}": v for k, v in test.items()})
        results = {
            "test": test,
            "best_step": best[1]["best_step"] if best is not None else self.step,
            "best_val_loss": best[1]["best_val_loss"] if best is not None else None,
            "final_step": self.step,
            "stopped_early": stopped_early,
            "num_params": models.count_params(self.abstract.params),
            "wall_time_s": time.time() - self.start_time,
            "time_to_first_step_s": self.time_to_first_step,
            "config_hash": configuration.config_hash(config),
            "num_devices": self.run.mesh.size,
            "num_processes": jax.process_count(),
            "versions": _versions(),
        }
        baseline = self.task.baseline(self.run)
        if baseline is not None:
            results["baseline"] = baseline
            # Lower is better: RMSE where both report it (forecasting), else the loss.
            key = "rmse" if "rmse" in test and "rmse" in baseline else "loss"
            results["beats_baseline"] = bool(test[key] <= baseline[key])
        if self.run.chief:
            (self.workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
            log.info("test: %s", jlog.format_metrics(test))
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
    workdir = Path(workdir)
    run = Experiment(config)
    workdir.mkdir(parents=True, exist_ok=True)
    if run.chief:
        _save_config(config, workdir)
    with contextlib.ExitStack() as stack:
        trainer = _Trainer(run, workdir, stack, start_time)
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


def _save_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
    path = workdir / "config.json"
    if path.exists():
        previous = configuration.read_config(path)
        if configuration.config_hash(previous) != configuration.config_hash(config):
            log.warning("config differs from the one %s was started with; %s is overwritten", workdir, path.name)
    configuration.save_config(config, path)


def evaluate_workdir(workdir: str | Path, split: str | None = None) -> dict:
    """Metrics of a workdir's best checkpoint (else its latest) on `split` (default: test)."""
    workdir = Path(workdir)
    path = workdir / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{workdir} holds no config.json: is it a jaxdl workdir?")
    config = configuration.read_config(path)
    run = Experiment(config)
    abstract, _ = run.abstract_state(jax.random.key(config.seed))
    tree = abstract.checkpoint_tree()
    checkpoints = Checkpoints(workdir, keep=config.training.keep_checkpoints)
    shardings = run.strategy.state_shardings(tree)
    restored = checkpoints.restore_best(tree, shardings) or checkpoints.restore_latest(tree, shardings, None)
    checkpoints.close()
    if restored is None:
        raise FileNotFoundError(f"{workdir} holds no checkpoint to evaluate")
    state = run.strategy.put_state(abstract.from_checkpoint_tree(restored[0]))
    eval_step = run.strategy.compile_eval(make_eval_step(run.task))
    batches = run.eval_batches(split or config.dataset.test_split)
    return evaluate(eval_step, state, batches, run.strategy, run.task)
