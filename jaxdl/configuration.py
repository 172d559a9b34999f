"""Loading, overriding and validating experiment configs before any compute."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import ml_collections


class ConfigError(ValueError):
    """A config problem, described in one line that names the key."""


def load_config(path: str | Path) -> ml_collections.ConfigDict:
    """Imports a config file and returns its `get_config()`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: no such config file '{path}'")
    # Configs import their base as `configs.base`: make the folder above importable.
    root = str(path.resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    spec = importlib.util.spec_from_file_location(f"_jaxdl_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"--config: '{path}' defines no get_config()")
    return module.get_config()


def _parse_value(key: str, text: str, current):
    """Parses `text` into the type of the field it replaces."""
    if isinstance(current, bool):
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ConfigError(f"config.{key} expects a bool (true/false), got '{text}'")
    if isinstance(current, str):
        return text
    if isinstance(current, (int, float, tuple, list)) or current is None:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            if current is None:
                return text
            raise ConfigError(f"config.{key} expects {type(current).__name__}, got '{text}'") from None
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(current, tuple) and isinstance(value, (list, int, float, str)):
            value = tuple(value) if isinstance(value, list) else (value,)
        if current is not None and (
            type(value) is not type(current) or isinstance(value, bool) != isinstance(current, bool)
        ):
            raise ConfigError(f"config.{key} expects {type(current).__name__}, got '{text}'")
        return value
    raise ConfigError(f"config.{key} of type {type(current).__name__} cannot be set from the command line")


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Applies `a.b=value` overrides in place; unknown keys and bad types raise."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like --config.key=value")
        key, text = item.split("=", 1)
        node = config
        parts = key.split(".")
        for depth, part in enumerate(parts):
            where = ".".join(parts[:depth]) or "config"
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                choices = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else ""
                raise ConfigError(f"unknown config key '{key}'; keys of {where}: {choices}")
            if depth < len(parts) - 1:
                node = node[part]
        leaf = parts[-1]
        current = node[leaf]
        if isinstance(current, ml_collections.ConfigDict):
            # A whole sub-dict (for example model.kwargs) given as a dict literal.
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = None
            if not isinstance(value, dict):
                raise ConfigError(f"config.{key} expects a dict such as {{'a': 1}}, got '{text}'")
            with node.unlocked():
                node[leaf] = ml_collections.ConfigDict(value)
            continue
        value = _parse_value(key, text, current)
        with node.ignore_type():
            node[leaf] = value


def _choice(key: str, value, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"config.{key}='{value}' is not valid; choose one of: {', '.join(choices)}")


def _positive(key: str, value, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"config.{key}={value} is not valid; it must be {bound}")


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Raises ConfigError naming the first invalid key; runs before any compute.

    Args:
      config: the resolved experiment config.
      num_devices: the number of devices the batch is split over.
    """
    from jaxdl import models, tasks  # Imported here: they pull in flax.
    from jaxdl.data import datasets, timeseries, transforms

    _choice("model.name", config.model.name, models.list_models())
    _choice("dtype", config.dtype, tuple(_DTYPES))
    _positive("model.aux_loss_weight", config.model.aux_loss_weight, allow_zero=True)
    if config.init_from and not Path(config.init_from).is_file():
        raise ConfigError(
            f"config.init_from='{config.init_from}' is not a file; give a .safetensors or .npz state dict"
        )
    for key in ("exclude", "freeze"):
        try:
            re.compile(config.transfer[key])
        except re.error as error:
            raise ConfigError(f"config.transfer.{key}='{config.transfer[key]}' is not a valid regex: {error}") from None
    mixing = config.augment.mixup_alpha > 0 or config.augment.cutmix_alpha > 0
    for key in ("mixup_alpha", "cutmix_alpha"):
        _positive(f"augment.{key}", config.augment[key], allow_zero=True)
    if not 0 <= config.augment.switch_prob <= 1:
        raise ConfigError(f"config.augment.switch_prob={config.augment.switch_prob} is not valid; it must be in [0, 1]")
    if not 0 <= config.task.label_smoothing < 1:
        raise ConfigError(
            f"config.task.label_smoothing={config.task.label_smoothing} is not valid; it must be in [0, 1)"
        )
    if (mixing or config.task.label_smoothing > 0) and config.task.name != "classification":
        raise ConfigError("config.augment mixup/cutmix and config.task.label_smoothing need task.name='classification'")
    _choice("task.name", config.task.name, tasks.list_tasks())
    if config.task.name in ("classification", "tagging") and config.task.num_classes < 2:
        raise ConfigError(f"config.task.num_classes={config.task.num_classes} is not valid; it must be >= 2")
    _positive("task.num_targets", config.task.num_targets)
    if not datasets.is_known(config.dataset.name):
        raise ConfigError(
            f"config.dataset.name='{config.dataset.name}' is not a known dataset; choose one of: "
            f"{', '.join(datasets.LOCAL_BUILDERS)}, {datasets.CSV_DATASET}, or any tfds dataset name"
        )
    for key in ("train_transforms", "eval_transforms"):
        try:
            # Building checks the arguments too; statistics are placeholders here.
            transforms.build(transforms.parse(config.dataset[key]), {"mean": 0.0, "std": 1.0})
        except ValueError as error:
            raise ConfigError(f"config.dataset.{key}: {error}") from None
    _choice("dataset.eval_remainder", config.dataset.eval_remainder, ("pad", "drop"))
    _positive("dataset.worker_count", config.dataset.worker_count, allow_zero=True)
    _positive("dataset.prefetch_batches", config.dataset.prefetch_batches, allow_zero=True)
    _positive("dataset.lookback", config.dataset.get("lookback", 1))
    _positive("dataset.horizon", config.dataset.get("horizon", 1))
    if timeseries.is_series(config.dataset.name) != (config.task.name == "forecasting"):
        raise ConfigError(
            f"config.task.name='{config.task.name}' does not fit config.dataset.name='{config.dataset.name}': "
            "task 'forecasting' goes with a time series (sunspots, co2, csv) and only with one"
        )
    if config.task.name == "forecasting":
        timeseries.check(config)  # Reads the series: a missing file or column stops the run here.

    from jaxdl import optim

    _choice("optimizer.name", config.optimizer.name, optim.OPTIMIZERS)
    _positive("optimizer.learning_rate", config.optimizer.learning_rate)
    _positive("optimizer.weight_decay", config.optimizer.weight_decay, allow_zero=True)
    _positive("optimizer.grad_clip_norm", config.optimizer.grad_clip_norm, allow_zero=True)
    _positive("optimizer.grad_accum_steps", config.optimizer.grad_accum_steps)
    _choice("schedule.name", config.schedule.name, optim.SCHEDULES)
    if config.schedule.name == "exponential" and not 0 < config.schedule.decay_every <= 1:
        raise ConfigError(
            f"config.schedule.decay_every={config.schedule.decay_every} is not valid; it must be a fraction in (0, 1]"
        )
    _positive("schedule.warmup_steps", config.schedule.warmup_steps, allow_zero=True)
    if any(not 0 < b < 1 for b in config.schedule.decay_boundaries):
        raise ConfigError(
            f"config.schedule.decay_boundaries={config.schedule.decay_boundaries} is not valid; "
            "each must be a fraction in (0, 1)"
        )

    training = config.training
    _positive("training.batch_size", training.batch_size)
    if training.batch_size % num_devices:
        raise ConfigError(
            f"config.training.batch_size={training.batch_size} is not divisible by the "
            f"{num_devices} devices; choose a multiple of {num_devices}"
        )
    _positive("training.num_steps", training.num_steps, allow_zero=True)
    if training.num_steps == 0:
        _positive("training.num_epochs", training.num_epochs)
    for key in ("eval_every_steps", "log_every_steps", "checkpoint_every_steps", "early_stopping_patience"):
        _positive(f"training.{key}", training[key], allow_zero=True)
    _positive("training.keep_checkpoints", training.keep_checkpoints)
    _choice("parallel.strategy", config.parallel.strategy, ("jit", "pmap"))
    _positive("parallel.num_devices", config.parallel.num_devices, allow_zero=True)
    try:
        build_model(config)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config.model.kwargs: {error}") from None


# config.dtype -> the compute dtype handed to models.
_DTYPES = {"float32": "float32", "bfloat16": "bfloat16"}


def build_model(config: ml_collections.ConfigDict, axis_name: str | None = None):
    """The configured model, its output size set by the task."""
    from jaxdl import models, tasks

    kwargs = config.model.kwargs.to_dict()
    kwargs["num_outputs"] = tasks.get_task(config.task, config.dataset).num_outputs
    dtype = config.get("dtype", "float32")
    if dtype != "float32":
        if not models.model_accepts(config.model.name, "dtype"):
            raise ValueError(f"model '{config.model.name}' has no dtype field; it computes in float32 only")
        kwargs["dtype"] = _DTYPES[dtype]
    if axis_name is not None:
        kwargs["axis_name"] = axis_name
    return models.create_model(config.model.name, **kwargs)


def config_hash(config: ml_collections.ConfigDict) -> str:
    """A short stable hash of the resolved config (sorted JSON, sha256)."""
    text = json.dumps(config.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_config(config: ml_collections.ConfigDict, path: Path) -> None:
    """Writes the resolved config as JSON, the form `jaxdl-eval` reads back."""
    path.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str) + "\n")


def read_config(path: Path) -> ml_collections.ConfigDict:
    """Reads a config written by save_config."""
    data = json.loads(path.read_text())

    def tuples(node):
        if isinstance(node, dict):
            return {k: tuples(v) for k, v in node.items()}
        if isinstance(node, list):
            return tuple(tuples(v) for v in node)
        return node

    return ml_collections.ConfigDict(tuples(data))
