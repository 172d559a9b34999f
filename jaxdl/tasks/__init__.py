"""Tasks own the loss, the metrics and their decisions; the training loop stays generic.

`TASKS` is the one table of task constructors: `config.task.name` picks one,
and its `from_config(task, dataset)` checks its own keys. Each declares the
target kinds it takes (`Task.target_kinds`); `build_task` refuses the others.
"""

from __future__ import annotations

import ml_collections

from jaxdl.errors import ConfigError, check_choice
from jaxdl.tasks.base import Task
from jaxdl.tasks.classification import Classification
from jaxdl.tasks.detection import Detection
from jaxdl.tasks.forecasting import Forecasting
from jaxdl.tasks.regression import Regression
from jaxdl.tasks.segmentation import Segmentation
from jaxdl.tasks.tagging import Tagging

TASKS: dict[str, type[Task]] = {
    "classification": Classification,
    "detection": Detection,
    "forecasting": Forecasting,
    "regression": Regression,
    "segmentation": Segmentation,
    "tagging": Tagging,
}


def list_tasks() -> list[str]:
    """Names accepted by config.task.name."""
    return sorted(TASKS)


def build_task(config: ml_collections.ConfigDict) -> Task:
    """The task of an experiment config (its `task` and `dataset` sections); bad keys raise ConfigError."""
    check_choice("task.name", config.task.name, list_tasks())
    cls = TASKS[config.task.name]
    _check_target_kind(config.task.name, cls.target_kinds, config.dataset.target_kind)
    return cls.from_config(config.task, config.dataset)


def _check_target_kind(name: str, accepted: tuple[str, ...], target_kind: str) -> None:
    """The one check of a task's declared `target_kinds` against the dataset's (an unknown kind fails here too)."""
    if target_kind not in accepted:
        raise ConfigError(
            f"config.task.name='{name}' needs {' or '.join(accepted)} as targets: set config.dataset.target_kind="
            f"{' or '.join(repr(kind) for kind in accepted)} (it is {target_kind!r})"
        )


__all__ = [
    "TASKS",
    "Task",
    "Classification",
    "Detection",
    "Forecasting",
    "Regression",
    "Segmentation",
    "Tagging",
    "build_task",
    "list_tasks",
]
