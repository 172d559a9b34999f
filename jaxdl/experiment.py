"""What one run builds from its config: mesh, strategy, task, step options, model, data, optimizer, state, steps.

Validation is building: each builder checks its own keys and raises the
one-line ConfigError that names the key (parallel: the mesh; tasks: the task;
steps.StepOptions: augment and transfer; the model family: its
hyperparameters; data.pipeline.Splits: the dataset, splits and transforms;
optim: optimizer and schedule). `Experiment` builds them all before any
compute, so a bad config stops the run before anything is compiled.

`Experiment` is also the one build path of the state and the compiled steps:
training, `jaxdl-eval`, the benchmarks and the tests all get them here.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Callable
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdl import compile_cache, models, optim, parallel, steps, tasks
from jaxdl.data import pipeline, sources, transforms
from jaxdl.errors import ConfigError, UserError, check_at_least, check_choice, check_regex, first_line
from jaxdl.models.layers import REMAT_POLICIES
from jaxdl.state import TrainState

log = logging.getLogger(__name__)

# config.dtype -> the compute dtype handed to models.
DTYPES = ("float32", "bfloat16")


def num_train_steps(num_examples: int, batch_size: int, num_epochs: float) -> int:
    """Steps (mini-batch updates) for `num_epochs` passes: ceil(epochs * examples / batch)."""
    return max(1, math.ceil(num_epochs * num_examples / batch_size))


def build_model(config: ml_collections.ConfigDict, task: tasks.Task):
    """The configured model, its output size set by the task; bad names and hyperparameters raise ConfigError."""
    check_choice("model.name", config.model.name, models.list_models())
    check_choice("dtype", config.dtype, DTYPES)
    remat = config.remat
    check_choice("remat", remat, tuple(REMAT_POLICIES))
    kwargs = config.model.kwargs.to_dict()
    if "num_outputs" in kwargs:
        raise ConfigError("config.model.kwargs.num_outputs is set by the task; remove it")
    if "remat" in kwargs:
        raise ConfigError("config.model.kwargs.remat is set from config.remat; set that instead")
    kwargs["num_outputs"] = task.num_outputs
    if remat != "none":
        if not models.model_accepts(config.model.name, "remat"):
            raise ConfigError(
                f"config.remat='{remat}' is not valid for model '{config.model.name}', which has no remat option"
            )
        kwargs["remat"] = remat
    if config.dtype != "float32":
        if not models.model_accepts(config.model.name, "dtype"):
            raise ConfigError(
                f"config.dtype='{config.dtype}' is not valid for model '{config.model.name}', "
                "which computes in float32 only"
            )
        kwargs["dtype"] = config.dtype
    try:
        model = models.create_model(config.model.name, **kwargs)
        # A detector's head checks its geometry (reg_max, strides, boxes per cell) as it is made.
        head = model.detection_head() if hasattr(model, "detection_head") else None
    except (TypeError, ValueError) as error:
        message = first_line(error)
        # A family's hyperparameter check names its field first ("dropout_rate=1.5 is not valid ...").
        joint = "." if re.match(r"\w+=", message) else ": "
        raise ConfigError(f"config.model.kwargs{joint}{message}") from None
    required = task.model_output
    if required is not None and getattr(head, "name", None) != required:
        raise ConfigError(
            f"config.model.name='{config.model.name}' does not give the '{required}' outputs that "
            f"config.task.head='{required}' decodes (its outputs: {head.name if head else 'not a detector'})"
        )
    return model


def init_key(key: jax.Array) -> jax.Array:
    """An `rbg` key derived from threefry key `key`, for initialising parameters fast.

    Compiling an init is dominated by the random numbers of every parameter
    tensor: threefry is a 20-round hash that XLA emits per tensor and its CPU
    backend compiles slowly (resnet18: ~10 s), while rbg draws its bits with
    XLA's RngBitGenerator (~3 s); its split and fold_in stay threefry, so flax's
    per-parameter keys are as independent as before. The numbers are a pure
    function of `key`, the same on 1 or 8 devices and when the init is made in
    its FSDP shards (tests/test_fast_init.py, tests/test_fsdp.py, on CPU), but
    RngBitGenerator uses the platform's default algorithm, so CPU and GPU may
    draw different inits for one seed (not checked on a GPU yet). Only the init uses it: dropout and the data
    order keep the seed's threefry key.
    """
    return jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_variables(model, fast: bool, key: jax.Array, sample: jax.Array) -> dict:
    """model.init (with `init_key(key)` if `fast`), compiled once per (model hyperparameters, input shape) in a process.

    Keying the compiled init on the model's hyperparameters, rather than on a
    new function each run, lets later runs of the same model in one process
    (sweeps, tests) reuse it. The numbers are those of an uncached init.
    """
    if not fast:
        return model.init(key, sample, train=False)
    # A model that can make its init more cheaply says how (ViT: through its scanned layout).
    return getattr(model, "fast_init", model.init)(init_key(key), sample, train=False)


def _check_training(training: ml_collections.ConfigDict) -> None:
    check_at_least("training.num_steps", training.num_steps, 0)
    if training.num_steps == 0:
        check_at_least("training.num_epochs", training.num_epochs, 0, strict=True)
    for key in ("eval_every_steps", "log_every_steps", "checkpoint_every_steps", "early_stopping_patience"):
        check_at_least(f"training.{key}", training[key], 0)
    check_at_least("training.keep_checkpoints", training.keep_checkpoints, 1)


def best_metric(config: ml_collections.ConfigDict, task: tasks.Task) -> str:
    """The validation metric that picks the best checkpoint: training.best_metric, else the task's."""
    name = config.training.get("best_metric", "") or f"val/{task.best_metric}"
    split, _, metric = name.partition("/")
    if split != "val" or metric not in task.metric_names:
        choices = ", ".join(f"val/{m}" for m in task.metric_names)
        raise ConfigError(f"config.training.best_metric='{name}' is not valid; choose one of: {choices}")
    return name


class Experiment:
    """The objects of one run, built and checked from its config before any compute.

    Args:
      config: the resolved experiment config.
      for_training: also load `config.init_from` (evaluation restores a checkpoint instead).
    """

    def __init__(self, config: ml_collections.ConfigDict, *, for_training: bool = True):
        training = config.training
        # Before anything compiles: every step of the run can come from the cache.
        compile_cache.configure(config.compilation_cache_dir)
        parallel.initialize_distributed(config.parallel)
        self.config = config
        self.mesh = parallel.build_mesh(config.parallel, training.batch_size, config.mesh)
        self.chief = jax.process_index() == 0
        self.strategy = parallel.make_strategy(
            config.parallel.strategy, self.mesh, fsdp_min_size=config.mesh.fsdp_min_size
        )
        # task.num_classes=0: the classes of a dataset read from disk (its mask ids checked against them).
        sources.resolve_num_classes(config)
        self.task = tasks.build_task(config)
        self.options = steps.StepOptions.from_config(config, self.task)
        self.model = build_model(config, self.task)
        self.task = self.task.for_model(self.model)
        self._check_input_sizes()
        _check_training(training)
        self.best_metric = best_metric(config, self.task)
        # A target kind with class ids (masks, objects) checks them against the task's classes as batches are read.
        self.splits = pipeline.Splits(
            config.dataset, batch_size=training.batch_size, num_classes=config.task.num_classes
        )
        num_examples = len(self.splits.source(config.dataset.train_split))
        self._check_input_sizes(self.splits)
        self.total_steps = training.num_steps or num_train_steps(num_examples, training.batch_size, training.num_epochs)
        self.accum = config.optimizer.grad_accum_steps
        self.tx, self.schedule = optim.build_optimizer(config, math.ceil(self.total_steps / max(self.accum, 1)))
        self.pretrained = self._load_init_from() if for_training and config.init_from else None

    def _check_input_sizes(self, splits: pipeline.Splits | None = None) -> None:
        """Refuses, before anything is traced, an input size the model cannot take (a detector's strides, U-Net pools).

        A chain of transforms with a resize or letterbox fixes the size, checked
        without `splits` before any record is read; a chain without one keeps the
        records' own size, checked on the first training record with `splits`.
        """
        check = getattr(self.model, "check_input_size", None)
        if check is None:
            return
        dataset = self.config.dataset
        for key in ("train_transforms", "eval_transforms"):
            try:
                size = transforms.output_size(transforms.parse(dataset[key]))
            except (TypeError, ValueError):  # A chain that does not parse or build: pipeline.Splits names it.
                continue
            if (size is None) != (splits is not None):
                continue
            made = f"config.dataset.{key}='{dataset[key]}' makes inputs of"
            if size is None:
                record = np.asarray(splits.source(dataset.train_split)[0][dataset.input_key])
                if record.ndim != 3:
                    continue
                size = record.shape[:2]
                made = f"config.dataset.{key} has no resize or letterbox, so the {dataset.name} images stay at"
            try:
                check(*size)
            except ValueError as error:
                raise ConfigError(
                    f"{made} {size[0]}x{size[1]}, which config.model.name='{self.config.model.name}' cannot take: "
                    f"{first_line(error)}"
                ) from None

    def _load_init_from(self) -> dict:
        """config.init_from converted to this model's variables; any problem is a ConfigError."""
        from jaxdl import convert

        path = self.config.init_from
        check_regex("transfer.exclude", self.config.transfer.exclude)
        kinds = ", ".join(convert.SUFFIXES)
        if not Path(path).is_file():
            raise ConfigError(f"config.init_from='{path}' is not a file; give a state dict ({kinds})")
        try:
            state_dict = convert.load_state_dict(path)
        except UserError as error:  # The reader's line names the file and what to do (a pickle that asks for code).
            raise ConfigError(f"config.init_from: {first_line(error)}") from None
        except Exception as error:  # Whatever else fails while reading the user's file is about that file.
            raise ConfigError(
                f"config.init_from='{path}' is not a readable state dict ({kinds}) "
                f"({type(error).__name__}: {first_line(error)})"
            ) from None
        try:
            return convert.from_torch(self.model, state_dict, input_shape=self.sample_input.shape, skip_mismatched=True)
        except ValueError as error:  # No converter for the family, or tensors that do not fit.
            raise ConfigError(f"config.init_from='{path}': {first_line(error)}") from None

    def input_spec(self) -> dict:
        """What one raw input of the training split looks like (shape, dtype), as jaxdl-predict needs it."""
        dataset = self.config.dataset
        record = np.asarray(self.splits.source(dataset.train_split)[0][dataset.input_key])
        return {"shape": list(record.shape), "dtype": record.dtype.name, "key": dataset.input_key}

    def rngs(self) -> tuple[jax.Array, jax.Array]:
        """(init key, dropout key) from config.seed: the trainer's, so benchmarks start where a run does."""
        init_rng, dropout_rng = jax.random.split(jax.random.key(self.config.seed))
        return init_rng, dropout_rng

    def train_data(self, worker_count: int | None = None) -> pipeline.DeviceIterator:
        """The training batches as jaxdl-train reads them, placed on the mesh ahead of the step (prefetch not started).

        `worker_count` overrides config.dataset.worker_count (grain worker processes).
        """
        dataset = self.config.dataset
        loader = pipeline.train_loader(
            self.splits,
            global_batch_size=self.config.training.batch_size,
            seed=self.config.seed,
            worker_count=dataset.worker_count if worker_count is None else worker_count,
        )
        return pipeline.DeviceIterator(loader, self.strategy.place_batch, prefetch=dataset.prefetch_batches)

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

    def init_fn(self) -> Callable[[jax.Array], TrainState]:
        """key -> a fresh TrainState (random init; pure, to be jitted or eval_shape'd)."""
        sample = self.sample_input
        fast = bool(self.config.fast_init)
        try:
            hash(self.model)
            init_variables = functools.partial(_init_variables, self.model, fast)
        except TypeError:  # Unhashable hyperparameters (a dict): compiled with the rest, not cached.
            init_variables = functools.partial(_init_variables.__wrapped__, self.model, fast)

        def init(key):
            variables = init_variables(key, jnp.asarray(sample))
            state = TrainState.create(
                apply_fn=self.model.apply,
                params=variables["params"],
                batch_stats=variables.get("batch_stats", {}),
                tx=self.tx,
                ema_decay=self.config.ema.decay,
            )
            # A strongly typed step, as a restored checkpoint holds it: the steps compile once for both.
            return state.replace(step=jnp.zeros((), jnp.int32))

        return init

    def abstract_state(self, rng: jax.Array) -> TrainState:
        """State shapes from jax.eval_shape (nothing allocated or compiled)."""
        return jax.eval_shape(self.init_fn(), rng)

    def fresh_state(self, rng: jax.Array) -> TrainState:
        """A new state placed on the mesh, with config.init_from's weights where names and shapes fit."""
        init = self.init_fn()
        if getattr(self.strategy, "fsdp_size", 1) > 1:
            # Made in its shards, so the whole state (params and optimizer moments) never
            # sits on one device; the numbers equal the unsharded init's (tests/test_fsdp.py).
            abstract = jax.eval_shape(init, rng)
            parallel.check_fsdp(self.mesh, abstract.params, self.config.model.name)
            state = jax.jit(init, out_shardings=self.strategy.state_shardings(abstract))(rng)
        else:
            state = init(rng)
        return self.strategy.put_state(self._pretrained(state))

    def restored_state(self, abstract: TrainState, tree: dict) -> TrainState:
        """A placed state from the arrays of a restored checkpoint tree."""
        return self.strategy.put_state(abstract.from_checkpoint_tree(tree))

    def state_shardings(self, abstract: TrainState):
        """Where each checkpoint array of the state goes when restored; checks the fsdp size against the shapes."""
        parallel.check_fsdp(self.mesh, abstract.params, self.config.model.name)
        return self.strategy.state_shardings(abstract.checkpoint_tree())

    @functools.cached_property
    def train_step(self) -> Callable:
        """The compiled train step: (state, batch, rng) -> (state, metrics)."""
        return self.strategy.compile_train(steps.make_train_step(self.task, self.options))

    @functools.cached_property
    def eval_step(self) -> Callable:
        """The compiled eval step: (state, batch, totals) -> totals."""
        return self.strategy.compile_eval(steps.make_eval_step(self.task))

    def evaluate(self, state: TrainState, split: str) -> dict:
        """The task's metrics of `state` over `split`."""
        return steps.evaluate(self.eval_step, state, self.eval_batches(split), self.strategy, self.task)

    def baseline(self) -> dict | None:
        """The task's reference method fitted on the train split and scored on the test split, if it has one."""
        if not self.task.has_baseline:
            return None
        dataset = self.config.dataset
        return self.task.baseline(self.splits.arrays(dataset.train_split), self.splits.arrays(dataset.test_split))

    def _pretrained(self, state: TrainState) -> TrainState:
        """The fresh state with the init_from weights loaded where names and shapes fit."""
        if self.pretrained is None:
            return state
        exclude = re.compile(self.config.transfer.exclude) if self.config.transfer.exclude else None
        counts = {"loaded": 0, "kept": 0}

        def merge(collection: str, fresh):
            source = flax.traverse_util.flatten_dict(self.pretrained.get(collection, {}), sep="/")

            def pick(path, leaf):
                name = optim.path_name(path)
                if name in source and not (exclude is not None and exclude.search(name)):
                    counts["loaded"] += 1
                    return jnp.asarray(source[name], leaf.dtype)
                counts["kept"] += 1
                return leaf

            return jax.tree_util.tree_map_with_path(pick, fresh)

        state = state.replace(params=merge("params", state.params), batch_stats=merge("batch_stats", state.batch_stats))
        state = state.restart_ema()  # The EMA starts from the loaded weights, not the random init.
        if self.chief:
            log.info(
                "init_from %s: loaded %d arrays, kept the fresh init of %d", self.config.init_from, *counts.values()
            )
        return state
