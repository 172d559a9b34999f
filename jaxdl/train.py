"""The training loop: init or restore, jit/pmap steps, evaluation, checkpoints, logs."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
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

from jaxdl import configuration, models, optim, parallel, tasks
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


def make_train_step(task: tasks.Task) -> Callable:
    """The pure step: (state, batch, rng) -> (new state, mean metrics of the batch)."""

    def train_step(state: TrainState, batch: dict, rng: jax.Array, axis_name: str | None = None):
        # One key per step; under pmap also per device, as each sees different examples.
        rng = jax.random.fold_in(rng, state.step)
        if axis_name is not None:
            rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
        targets = task.prepare_targets(batch["target"])

        def loss_fn(params):
            outputs, updates = state.apply_fn(
                {**state.variables(), "params": params},
                batch["input"],
                train=True,
                rngs={"dropout": rng},
                mutable=["batch_stats"],
            )
            return jnp.mean(task.loss(outputs, targets)), (outputs, updates)

        (_, (outputs, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        metrics = {k: jnp.mean(v) for k, v in task.metrics(outputs, targets).items()}
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            metrics = jax.lax.pmean(metrics, axis_name)
        state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
        return state, metrics

    return train_step


def make_eval_step(task: tasks.Task) -> Callable:
    """The pure eval step: masked sums of per-example metrics and the example count."""

    def eval_step(state: TrainState, batch: dict, axis_name: str | None = None):
        outputs = state.apply_fn(state.variables(), batch["input"], train=False)
        metrics = task.metrics(outputs, task.prepare_targets(batch["target"]))
        mask = batch["mask"]
        sums = {k: jnp.sum(v * mask) for k, v in metrics.items()}
        sums["count"] = jnp.sum(mask)
        if axis_name is not None:
            sums = jax.lax.psum(sums, axis_name)
        return sums

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
    total = None
    for batch in batches:
        sums = eval_step(state, strategy.place_batch(batch))
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    if total is None:
        raise ValueError("the evaluation split yielded no batch; lower config.training.batch_size")
    total = jax.device_get(strategy.unreplicate_metrics(total))
    count = float(total.pop("count"))
    return task.finalize({k: float(v) / count for k, v in total.items()})


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


def _versions() -> dict:
    return {"jax": jax.__version__, "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else "",
            "flax": flax.__version__, "optax": optax.__version__}


class Experiment:
    """What one run builds from its config: mesh, strategy, task, model, data, optimizer."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: Path):
        parallel.initialize_distributed(config.parallel.distributed)
        self.mesh = parallel.make_mesh(config.parallel.num_devices)
        configuration.validate(config, num_devices=self.mesh.size)
        self.config = config
        self.workdir = workdir
        self.chief = jax.process_index() == 0
        self.strategy = parallel.make_strategy(config.parallel.strategy, self.mesh)
        self.task = tasks.get_task(config.task)
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
            self.splits, split, global_batch_size=self.config.training.batch_size,
            remainder=self.config.dataset.eval_remainder,
        )

    def abstract_state(self, rng: jax.Array) -> tuple[TrainState, Callable]:
        """State shapes from jax.eval_shape (nothing allocated) and the init function."""
        sample = next(iter(self.eval_batches(self.config.dataset.train_split)))["input"][:1]

        def init(key):
            variables = self.model.init(key, jnp.asarray(sample), train=False)
            return TrainState.create(
                apply_fn=self.model.apply,
                params=variables["params"],
                batch_stats=variables.get("batch_stats", {}),
                tx=self.tx,
            )

        return jax.eval_shape(init, rng), init


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | Path, *, hooks: Sequence[Hook] = ()
) -> dict:
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
    run = Experiment(config, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if run.chief:
        _save_config(config, workdir)
    training = config.training
    strategy, task = run.strategy, run.task

    rng = jax.random.key(config.seed)
    init_rng, dropout_rng = jax.random.split(rng)
    abstract, init = run.abstract_state(init_rng)
    checkpoints = Checkpoints(workdir, keep=training.keep_checkpoints)
    loader = pipeline.train_loader(
        run.splits, global_batch_size=training.batch_size, seed=config.seed, worker_count=config.dataset.worker_count
    )
    data = pipeline.DeviceIterator(loader, strategy.place_batch, prefetch=config.dataset.prefetch_batches)
    tree = abstract.checkpoint_tree()
    restored = checkpoints.restore_latest(tree, strategy.state_shardings(tree), data)
    data.start_prefetch()
    if restored is None:
        state = strategy.put_state(jax.jit(init)(init_rng))
        progress = _Progress()
    else:
        state = strategy.put_state(abstract.from_checkpoint_tree(restored[0]))
        progress = _Progress(**restored[1])
    start_step = int(jax.device_get(strategy.host_state(state).step))
    if run.chief:
        log.info("%s\n%s", config.model.name, jlog.parameter_table(abstract.params))
        log.info("%s from step %d to %d", "resuming" if restored else "training", start_step, run.total_steps)

    writer = jlog.MetricWriter(workdir, enabled=run.chief)
    writer.truncate_after(start_step)
    if start_step == 0:
        writer.write_text("config", config.to_json_best_effort(indent=2))
    bar = jlog.ProgressBar(run.total_steps, initial_step=start_step, enabled=run.chief and training.progress_bar)
    train_step = strategy.compile_train(make_train_step(task))
    eval_step = strategy.compile_eval(make_eval_step(task))
    val_split = config.dataset.val_split

    pending: list[dict] = []
    last_flush, last_time, timed_steps = start_step, time.time(), 0
    time_to_first_step = None
    stopped_early = preempted = False
    step = start_step
    try:
        with _Preemption() as preemption:
            while step < run.total_steps:
                state, metrics = train_step(state, next(data), dropout_rng)
                pending.append(metrics)
                step += 1
                timed_steps += 1
                if time_to_first_step is None:
                    jax.block_until_ready(metrics)
                    time_to_first_step = time.time() - start_time
                    timed_steps, last_time = 0, time.time()  # Throughput excludes compilation.
                last = step == run.total_steps
                due = lambda every: every and step % every == 0  # noqa: E731
                evaluate_now = val_split and (due(training.eval_every_steps) or last)
                checkpoint_now = due(training.checkpoint_every_steps) or last
                preempted = (jax.process_count() == 1 or due(training.log_every_steps)) and preemption.agreed()
                if pending and (due(training.log_every_steps) or evaluate_now or checkpoint_now or preempted):
                    means = _mean_metrics(pending, last_flush)
                    logged = {**{f"train/{k}": v for k, v in means.items()}, "lr": float(run.schedule((step - 1) // run.accum))}
                    if timed_steps:
                        logged["steps_per_sec"] = timed_steps / max(time.time() - last_time, 1e-9)
                    writer.write(step, logged)
                    bar.update(step, {"loss": means["loss"], **({"val_loss": progress.best_val_loss} if val_split and progress.best_step >= 0 else {})})
                    pending, last_flush, last_time, timed_steps = [], step, time.time(), 0
                else:
                    bar.update(step)
                if evaluate_now:
                    val = evaluate(eval_step, state, run.eval_batches(val_split), strategy, task)
                    writer.write(step, {f"val/{k}": v for k, v in val.items()})
                    if val["loss"] < progress.best_val_loss:
                        progress = _Progress(val["loss"], step, 0)
                        checkpoints.save_best(step, strategy.host_state(state).checkpoint_tree(), data, progress.to_json())
                    else:
                        progress.evals_without_improvement += 1
                    patience = training.early_stopping_patience
                    stopped_early = bool(patience) and progress.evals_without_improvement >= patience
                if checkpoint_now or preempted or stopped_early:
                    checkpoints.save_latest(step, strategy.host_state(state).checkpoint_tree(), data, progress.to_json())
                for hook in hooks:
                    hook(step, state)
                if preempted or stopped_early:
                    break
    finally:
        bar.close()
        data.close()

    if preempted:
        log.warning("SIGTERM: saved a checkpoint at step %d; run the same command again to resume", step)
        writer.close()
        checkpoints.close()
        return {"preempted": True, "step": step}
    if stopped_early:
        log.info("early stopping at step %d: no validation improvement in %d evaluations",
                 step, training.early_stopping_patience)

    best = checkpoints.restore_best(tree, strategy.state_shardings(tree)) if val_split else None
    if best is not None:
        state = strategy.put_state(abstract.from_checkpoint_tree(best[0]))
    test = evaluate(eval_step, state, run.eval_batches(config.dataset.test_split), strategy, task)
    writer.write(step, {f"test/{k}": v for k, v in test.items()})
    results = {
        "test": test,
        "best_step": progress.best_step if best is not None else step,
        "best_val_loss": progress.best_val_loss if best is not None else None,
        "final_step": step,
        "stopped_early": stopped_early,
        "num_params": models.count_params(abstract.params),
        "wall_time_s": time.time() - start_time,
        "time_to_first_step_s": time_to_first_step,
        "config_hash": configuration.config_hash(config),
        "num_devices": run.mesh.size,
        "num_processes": jax.process_count(),
        "versions": _versions(),
    }
    if run.chief:
        (workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        log.info("test: %s", jlog.format_metrics(test))
    writer.close()
    checkpoints.close()
    return results


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
    run = Experiment(config, workdir)
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
