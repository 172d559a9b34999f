"""The pure train and eval steps, what shapes them (`StepOptions`), and evaluation over a split.

Both steps are pure functions of (state, batch, ...) that a parallel strategy
compiles (jit over a mesh, or pmap); they call only what `jaxdl.tasks.Task`
declares, so the steps know no task by name.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdl import augment, optim
from jaxdl.errors import ConfigError, check_at_least, check_regex
from jaxdl.state import TrainState
from jaxdl.tasks import Task


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """Loss options of the train step beyond the task's plain loss."""

    mix: augment.MixConfig = augment.MixConfig()
    label_smoothing: float = 0.0
    aux_loss_weight: float = 0.3
    # Param paths ('/'-joined) whose BatchNorm statistics stay fixed (frozen layers).
    frozen: re.Pattern | None = None

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, task: Task) -> StepOptions:
        """From the config's augment, task, model and transfer keys; checks them against what `task` supports."""
        mix = augment.MixConfig.from_config(config.augment)
        smoothing = config.task.get("label_smoothing", 0.0)
        if not 0 <= smoothing < 1:
            raise ConfigError(f"config.task.label_smoothing={smoothing} is not valid; it must be in [0, 1)")
        if (mix.enabled or smoothing > 0) and not task.supports_soft_targets:
            raise ConfigError(
                f"config.augment mixup/cutmix and config.task.label_smoothing need a task with soft targets "
                f"(classification), not config.task.name='{config.task.name}'"
            )
        check_at_least("model.aux_loss_weight", config.model.aux_loss_weight, 0)
        frozen = check_regex("transfer.freeze", config.transfer.freeze)
        return cls(mix=mix, label_smoothing=smoothing, aux_loss_weight=config.model.aux_loss_weight, frozen=frozen)

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


def _split_outputs(outputs) -> tuple[jax.Array, list[jax.Array]]:
    """(main, auxiliary outputs): a model may return a tuple (main, *aux) in training (GoogLeNet)."""
    main, *aux = outputs if isinstance(outputs, tuple) else (outputs,)
    return main, aux


def make_train_step(task: Task, options: StepOptions = StepOptions()) -> Callable:
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
        targets = task.targets(batch)
        inputs = batch["input"]
        if options.soft:
            soft = task.soft_targets(targets, options.label_smoothing)
            if options.mix.enabled:
                # A key of its own: the dropout key is the same with and without mixing.
                inputs, soft, _ = augment.mix(jax.random.fold_in(rng, 1 << 20), inputs, soft, options.mix)

            def per_example(outputs):
                return task.soft_loss(outputs, soft), {}
        else:

            def per_example(outputs):
                return task.loss_terms(outputs, targets)

        def loss_fn(params):
            outputs, updates = state.apply_fn(
                {**state.variables(), "params": params},
                inputs,
                train=True,
                rngs={"dropout": rng},
                mutable=["batch_stats"],
            )
            main, aux = _split_outputs(outputs)
            main = task.transform_outputs(main, inputs)
            losses, terms = per_example(main)
            for extra in aux:
                losses = losses + options.aux_loss_weight * per_example(task.transform_outputs(extra, inputs))[0]
            return jnp.mean(losses), (main, losses, terms, updates)

        (_, (outputs, losses, terms, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        metrics = {k: jnp.mean(v) for k, v in {**task.metrics(outputs, targets), **terms}.items()}
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


def make_eval_step(task: Task) -> Callable:
    """The pure eval step: the task's sums of this batch (`Task.eval_sums`) added to `totals`.

    `evaluate` chains the steps through `totals` so they run one after another:
    independent steps may execute concurrently, and with cross-process
    collectives (gloo on CPU) two processes could then enter them in different
    orders and deadlock. With a host-side evaluator the step returns
    (totals, per-example host values), the values with the example mask as `_mask`.
    """

    def eval_step(state: TrainState, batch: dict, totals: dict | None = None, axis_name: str | None = None):
        inputs = batch["input"]
        # The EMA params when the EMA is on (jaxdl.state): validation, best checkpoint and test all use them.
        outputs = task.transform_outputs(state.apply_fn(state.eval_variables(), inputs, train=False), inputs)
        sums = task.eval_sums(outputs, task.targets(batch), batch["mask"])
        if axis_name is not None:
            sums = jax.lax.psum(sums, axis_name)
        sums = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        if task.host_evaluator:
            return sums, {**task.host_values(outputs, batch), "_mask": batch["mask"]}
        return sums

    return eval_step


def _host_arrays(values: dict, strategy) -> dict[str, np.ndarray]:
    """Per-example device values of a global batch as host arrays [global batch, ...], from every process."""
    if getattr(strategy, "axis_name", None) is not None:  # pmap: [devices, per device, ...].
        return jax.tree.map(lambda x: np.asarray(x).reshape(-1, *x.shape[2:]), jax.device_get(values))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return jax.tree.map(np.asarray, multihost_utils.process_allgather(values, tiled=True))
    return jax.tree.map(np.asarray, jax.device_get(values))


def evaluate(eval_step: Callable, state: TrainState, batches: Iterable[dict], strategy, task: Task) -> dict:
    """The task's metrics over `batches`: its summed totals, plus host metrics where it has a host evaluator."""
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        raise ConfigError("the evaluation split yielded no batch; lower config.training.batch_size")
    # Zero totals of the step's output structure, whole on every device as the step returns them.
    shapes = jax.eval_shape(make_eval_step(task), strategy.host_state(state), first)
    shapes = shapes[0] if task.host_evaluator else shapes
    totals = strategy.put_replicated(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes))
    gathered: list[dict] = []
    for batch in itertools.chain([first], batches):
        out = eval_step(state, strategy.place_batch(batch), totals)
        if task.host_evaluator:
            totals, values = out
            values = _host_arrays(values, strategy)
            real = values.pop("_mask") > 0
            gathered.append({k: v[real] for k, v in values.items()})
        else:
            totals = out
    totals = jax.device_get(strategy.unreplicate_metrics(totals))
    metrics = task.finalize_sums(totals)
    if task.host_evaluator:
        joined = {k: np.concatenate([g[k] for g in gathered]) for k in gathered[0]}
        metrics.update(task.host_metrics(joined))
    return metrics
