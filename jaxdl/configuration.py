"""Experiment configs: load a config file, apply `--config.key=value` overrides, save, read back, hash.

Checking what the keys mean is left to the builders that use them (task,
optimizer, data, model, mesh; see jaxdl.experiment), each raising a one-line
ConfigError that names its key. Overrides may only set keys the config has,
except in `model.kwargs`, which takes any hyperparameter field of the model
`model.name` names, parsed by the field's type annotation.
"""

from __future__ import annotations

import ast
import collections.abc
import hashlib
import importlib.util
import json
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path

import ml_collections

from jaxdl.errors import ConfigError, WorkdirError, check_choice, first_line

__all__ = ["ConfigError", "apply_overrides", "config_hash", "load_config", "read_config", "save_config"]


def call_python_file(path: str | Path, *, flag: str, function: str, kind: str):
    """Imports the Python file at `path` and returns `function()` of it; each failure is one ConfigError naming `flag`.

    The folder above the file's becomes importable, so a config or sweep file
    imports its neighbours as `configs.base` does.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{flag}: no such {kind} file '{path}'")
    if path.suffix != ".py":
        raise ConfigError(f"{flag}: '{path}' is not a Python {kind} file (.py defining {function}())")
    root = str(path.resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    spec = importlib.util.spec_from_file_location(f"_jaxdl_{kind}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        raise ConfigError(f"{flag}: '{path}' is not valid Python (line {error.lineno}: {error.msg})") from None
    except Exception as error:  # The file's own code failed: the user's file, reported as such.
        raise ConfigError(f"{flag}: '{path}' failed to import: {type(error).__name__}: {first_line(error)}") from None
    if not callable(getattr(module, function, None)):
        raise ConfigError(f"{flag}: '{path}' defines no {function}()")
    try:
        return getattr(module, function)()
    except ConfigError as error:  # A jaxdl helper's own message (e.g. sweeps.zip of unequal lengths).
        raise ConfigError(f"{flag}: {function}() of '{path}': {first_line(error)}") from None
    except Exception as error:
        raise ConfigError(
            f"{flag}: {function}() of '{path}' failed: {type(error).__name__}: {first_line(error)}"
        ) from None


def load_config(path: str | Path) -> ml_collections.ConfigDict:
    """Imports a config file and returns its `get_config()`."""
    config = call_python_file(path, flag="--config", function="get_config", kind="config")
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"--config: get_config() of '{path}' returned {type(config).__name__}, not a ConfigDict")
    return config


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


# Model fields a run sets from other keys, never from model.kwargs (jaxdl.experiment.build_model).
MODEL_FIELDS_SET_ELSEWHERE = {
    "num_outputs": "is set by the task; remove it",
    "remat": "is set from config.remat; set that instead",
    "dtype": "is set from config.dtype; set that instead",
}


def _parse_typed(key: str, text: str, annotation) -> object:
    """Parses `text` as a value of type `annotation` (int, float, bool, str, tuples, X | None), else as a literal."""
    options = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if type(None) in options and text.strip() in ("None", "none"):
            return None
        options = [option for option in options if option is not type(None)]
        return _parse_typed(key, text, options[0]) if len(options) == 1 else _parse_typed(key, text, typing.Any)
    origin = typing.get_origin(annotation) or annotation
    samples = {bool: False, int: 0, float: 0.0, str: ""}
    if origin in samples:
        return _parse_value(key, text, samples[origin])
    if origin in (tuple, list, collections.abc.Sequence):
        return _parse_value(key, text, ())
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # An unquoted word for a field of no declared type, e.g. a name.


def _set_model_field(config: ml_collections.ConfigDict, field: str, text: str) -> None:
    """Sets model.kwargs.<field>, checked against the fields of the model config.model.name names."""
    from jaxdl import models  # Late: JAX and the model families load only for an override that needs them.

    name = config.model.name
    check_choice("model.name", name, models.list_models())
    if field in MODEL_FIELDS_SET_ELSEWHERE:
        raise ConfigError(f"config.model.kwargs.{field} {MODEL_FIELDS_SET_ELSEWHERE[field]}")
    fields = models.model_field_types(name)
    if field not in fields:
        valid = ", ".join(f for f in fields if f not in MODEL_FIELDS_SET_ELSEWHERE)
        raise ConfigError(f"unknown config key 'model.kwargs.{field}'; fields of model '{name}': {valid}")
    value = _parse_typed(f"model.kwargs.{field}", text, fields[field])
    kwargs = config.model.kwargs
    with kwargs.unlocked(), kwargs.ignore_type():
        if field in kwargs:
            del kwargs[field]  # A new value may change its type (a dict for None, None for a number).
        kwargs[field] = value


def _sets_model_kwargs(item: str) -> bool:
    return item.split("=", 1)[0].startswith(("model.kwargs.", "model.kwargs="))


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Applies `a.b=value` overrides in place; unknown keys and bad types raise.

    `model.kwargs` overrides are applied last, in their order, so that they are
    checked against the model the command line finally names.
    """
    ordered = [item for item in overrides if not _sets_model_kwargs(item)]
    ordered += [item for item in overrides if _sets_model_kwargs(item)]
    for item in ordered:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like --config.key=value")
        key, text = item.split("=", 1)
        node = config
        parts = key.split(".")
        model = config.get("model")
        kwargs = model.get("kwargs") if isinstance(model, ml_collections.ConfigDict) else None
        if len(parts) == 3 and parts[:2] == ["model", "kwargs"] and isinstance(kwargs, ml_collections.ConfigDict):
            # Any field of the model, set in the config or left at the model's default.
            _set_model_field(config, parts[2], text)
            continue
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


def config_hash(config: ml_collections.ConfigDict) -> str:
    """A short stable hash of the resolved config (sorted JSON, sha256)."""
    text = json.dumps(config.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Keys added to configs/base.py after workdirs were first saved, with the value that
# reproduces a run saved before the key existed (not necessarily today's default:
# those runs were initialised with threefry keys). `read_config` fills them in, so
# the code reads every key plainly instead of guessing defaults where it uses them.
ADDED_LATER = {
    "transfer.exclude": "",
    "transfer.freeze": "",
    "remat": "none",
    "fast_init": False,
    "ema.decay": 0.0,
    "mesh.data": 0,
    "mesh.fsdp": 1,
    "mesh.fsdp_min_size": 0,
    "dataset.repeated_augmentations": 1,
    "dataset.box_crowd_key": "",
    "dataset.box_area_key": "",
    "training.async_checkpoints": False,
    "profile_steps": (),
    "compilation_cache_dir": "",
    "dataset.label": "",
    "dataset.channels": 3,
    "dataset.val_fraction": 0.1,
    "dataset.skip_bad_files": False,
    "dataset.mask_values": "",
    "dataset.palette": "",
}


def save_config(config: ml_collections.ConfigDict, path: Path) -> None:
    """Writes the resolved config as JSON, the form `jaxdl-eval` reads back."""
    path.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str) + "\n")


def read_config(path: Path) -> ml_collections.ConfigDict:
    """Reads a config written by save_config; a missing or corrupt file is a one-line WorkdirError."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise WorkdirError(f"{path.parent} holds no config.json: is it a jaxdl workdir?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WorkdirError(
            f"{path} is not valid JSON ({first_line(error)}); restore it, or delete it to start the workdir anew"
        ) from None
    if not isinstance(data, dict):
        raise WorkdirError(f"{path} does not hold a config (a JSON object); restore it or delete it")

    def tuples(node):
        if isinstance(node, dict):
            return {k: tuples(v) for k, v in node.items()}
        if isinstance(node, list):
            return tuple(tuples(v) for v in node)
        return node

    config = tuples(data)
    dataset = config.get("dataset")
    if isinstance(dataset, dict) and "box_ignore_key" in dataset:
        # Renamed: the flagged objects (COCO's crowds) are now kept as crowds, not dropped; without this an
        # older run's crowds would be read as objects.
        dataset.setdefault("box_crowd_key", dataset.pop("box_ignore_key"))
    for dotted, value in ADDED_LATER.items():  # Keys a config saved by an older jaxdl lacks.
        *parents, leaf = dotted.split(".")
        node = config
        for parent in parents:
            node = node.setdefault(parent, {})
        node.setdefault(leaf, value)
    return ml_collections.ConfigDict(config)
