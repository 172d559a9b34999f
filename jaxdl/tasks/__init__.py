"""Tasks own the loss and the metrics; the training loop stays generic."""

from __future__ import annotations

import ml_collections

from jaxdl.tasks.base import Task
from jaxdl.tasks.classification import Classification
from jaxdl.tasks.regression import Regression

_TASKS = {"classification": Classification, "regression": Regression}


def list_tasks() -> list[str]:
    """Names accepted by config.task.name."""
    return sorted(_TASKS)


def get_task(config: ml_collections.ConfigDict) -> Task:
    """The task named by `config.name`, built from the rest of `config`."""
    if config.name == "classification":
        return Classification(num_classes=config.num_classes)
    if config.name == "regression":
        return Regression(num_targets=config.num_targets)
    raise ValueError(f"unknown task '{config.name}'; choose one of: {', '.join(list_tasks())}")


__all__ = ["Task", "Classification", "Regression", "get_task", "list_tasks"]
