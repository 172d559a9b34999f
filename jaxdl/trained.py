"""A trained workdir opened for use: its config, task and model, restored variables, eval transforms, class names.

    run = TrainedRun.open("runs/digits")   # the best checkpoint, else the latest
    run.outputs(images)                    # the model's eval outputs (EMA params where the run kept an EMA)
    run.evaluate("test")                   # the task's metrics on a split (what jaxdl-eval prints)

jaxdl-eval, jaxdl-predict, jaxdl-wordseg and the figure scripts of experiments/
open runs only through `TrainedRun`, so how a workdir is read lives here once.
Opening reads config.json and builds the task and the model; the checkpoint is
restored when first used, so a workdir of the wrong task is refused before any
restore.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import jax
import ml_collections
import numpy as np

from jaxdl import checkpoint, compile_cache, configuration, parallel, tasks
from jaxdl.data import datasets, pipeline, transforms
from jaxdl.errors import WorkdirError
from jaxdl.experiment import Experiment, build_model
from jaxdl.state import TrainState

log = logging.getLogger(__name__)

INPUTS_FILENAME = "inputs.json"  # What one raw input of the run looks like; written by training.
# The class names of a dataset read from disk (folder names, data.yaml names), by id; written by training.
CLASS_NAMES_FILENAME = "class_names.json"
# Which checkpoint `which` names -> the checkpoints tried, in order. A run without a
# validation split has no best checkpoint: its best is its latest.
CHECKPOINT_ORDER = {"best": ("best", "latest"), "latest": ("latest",)}


class TrainedRun:
    """A trained workdir: config, task, model, and the variables of its best (or latest) checkpoint.

    Use `TrainedRun.open`. Attributes: `workdir`, `config` (as the run saved
    it), `task`, `model` and `which` ('best' or 'latest').
    """

    def __init__(self, workdir: Path, config: ml_collections.ConfigDict, task: tasks.Task, model, which: str = "best"):
        self.workdir, self.config, self.task, self.model, self.which = workdir, config, task, model, which

    @classmethod
    def open(cls, workdir: str | Path, which: str = "best", *, task_type: type[tasks.Task] | None = None) -> TrainedRun:
        """Opens `workdir` for its `which` checkpoint ('best': the best, else the latest; 'latest').

        With `task_type`, a run trained for another task is a one-line
        WorkdirError. A missing or corrupt config.json is one too; bad config
        keys are the builders' ConfigErrors.
        """
        if which not in CHECKPOINT_ORDER:
            raise ValueError(f"which='{which}' is not valid; choose one of: {', '.join(CHECKPOINT_ORDER)}")
        workdir = Path(workdir)
        config = configuration.read_config(workdir / "config.json")
        # Before anything compiles: the run's own cache serves jaxdl-predict and the scripts as it served training.
        compile_cache.configure(config.compilation_cache_dir)
        task = tasks.build_task(config)
        if task_type is not None and not isinstance(task, task_type):
            wanted = next((name for name, kind in tasks.TASKS.items() if kind is task_type), task_type.__name__)
            raise WorkdirError(f"{workdir} was trained for task '{config.task.name}', not '{wanted}'")
        model = build_model(config, task)
        return cls(workdir, config, task.for_model(model), model, which)  # The task reads this model's outputs.

    @functools.cached_property
    def _restored(self) -> tuple[dict, int]:
        return checkpoint.restore_variables(self.workdir, kinds=CHECKPOINT_ORDER[self.which])

    @property
    def variables(self) -> dict:
        """The variables `model.apply` takes, on this process's first device; EMA params where the run kept an EMA.

        Restored on first use; a workdir without a checkpoint is a WorkdirError.
        """
        return self._restored[0]

    @property
    def step(self) -> int:
        """The training step of the restored checkpoint."""
        return self._restored[1]

    @property
    def uses_ema(self) -> bool:
        """Whether `variables` holds the EMA of the params (the run's config.ema.decay > 0), as its evaluation did."""
        return self.config.ema.decay > 0

    @functools.cached_property
    def _apply(self):
        return jax.jit(lambda variables, inputs: self.model.apply(variables, inputs, train=False))

    def outputs(self, inputs: np.ndarray | jax.Array) -> jax.Array:
        """The model's eval outputs for a batch of inputs (compiled once per input shape)."""
        return self._apply(self.variables, inputs)

    @functools.cached_property
    def eval_specs(self) -> list[transforms.Spec]:
        """The parsed `dataset.eval_transforms` of the run."""
        return transforms.parse(self.config.dataset.eval_transforms)

    def eval_transforms(self, kinds: Mapping[str, str] | None = None) -> list:
        """The run's eval transforms as ops over batches whose keys have `kinds` (default: only the input image).

        `standardize` takes the mean and std of the run's training split, which
        must then be readable here.
        """
        statistics = None
        if transforms.needs_statistics(self.eval_specs):
            statistics = pipeline.Splits(self.config.dataset).statistics()
        return transforms.build(self.eval_specs, statistics, kinds=kinds, ignore_index=self.config.dataset.ignore_index)

    @functools.cached_property
    def input_spec(self) -> dict:
        """One raw input of the run's training split: {"shape", "dtype", "key"} (from the workdir's inputs.json)."""
        path = self.workdir / INPUTS_FILENAME
        if not path.is_file():
            raise WorkdirError(f"{self.workdir} holds no {INPUTS_FILENAME}: train it with this version of jaxdl first")
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise WorkdirError(f"{path} is not valid JSON; train the run again to rewrite it") from None

    @functools.cached_property
    def class_names(self) -> tuple[str, ...] | None:
        """The name of each of the task's classes, by id, where the dataset names them; else None."""
        # Only the tasks that predict classes have num_classes (regression and forecasting do not).
        num_classes = getattr(self.task, "num_classes", None)
        if num_classes is None:
            return None
        dataset = self.config.dataset
        saved = self.workdir / CLASS_NAMES_FILENAME
        if saved.is_file():  # A dataset read from disk: its names as training found them (ids as in batches).
            try:
                names = tuple(json.loads(saved.read_text()))
            except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
                raise WorkdirError(f"{saved} is not a JSON list of names; train the run again to rewrite it") from None
            return names[:num_classes] if len(names) >= num_classes else None
        names = datasets.class_names(dataset.name, dataset.target_key, dataset.data_dir)
        if names is None:
            return None
        names = names[dataset.box_class_offset :]  # Ids are shifted by the offset as records are read (else 0).
        return names[:num_classes] if len(names) >= num_classes else None

    @functools.cached_property
    def experiment(self) -> Experiment:
        """The run's Experiment (data splits, mesh, steps) on this machine, for evaluating it.

        A mesh this machine cannot form (fsdp over 8 GPUs, read on a laptop) is
        replaced by a data-parallel one over the devices here, with a warning:
        evaluation gives the same numbers on any mesh.
        """
        why = parallel.fit_mesh_for_evaluation(self.config)
        if why:
            log.warning("the run's mesh cannot be formed here (%s); evaluating data-parallel on this machine", why)
        return Experiment(self.config, for_training=False)

    def state(self) -> TrainState:
        """The whole training state of the checkpoint, placed on the Experiment's mesh (optimizer state included)."""
        run = self.experiment
        abstract = run.abstract_state(jax.random.key(self.config.seed))
        with checkpoint.Checkpoints(self.workdir, keep=self.config.training.keep_checkpoints) as checkpoints:
            tree, _, _ = checkpoints.restore_any(
                abstract.checkpoint_tree(), run.state_shardings(abstract), kinds=CHECKPOINT_ORDER[self.which]
            )
        return run.restored_state(abstract, tree)

    def evaluate(self, split: str | None = None) -> dict:
        """The task's metrics of the checkpoint on `split` (default: the config's test split); EMA as in training."""
        run = self.experiment
        split = split or self.config.dataset.test_split
        run.splits.source(split, key="split")  # An unknown split is a one-line error, before the restore.
        return run.evaluate(self.state(), split)

    def eval_batches(self, split: str | None = None):
        """Fixed-size masked batches of `split` (default: the test split) after the eval transforms."""
        return self.experiment.eval_batches(split or self.config.dataset.test_split)
