"""Tasks own the loss and the metrics; the training loop stays generic."""

from __future__ import annotations

import ml_collections

from jaxdl.tasks.base import Task
from jaxdl.tasks.classification import Classification
from jaxdl.tasks.forecasting import Forecasting
from jaxdl.tasks.regression import Regression
from jaxdl.tasks.tagging import Tagging

_TASKS = {"classification": Classification, "forecasting": Forecasting, "regression": Regression, "tagging": Tagging}


def list_tasks() -> list[str]:
    """Names accepted by config.task.name."""
    return sorted(_TASKS)


def get_task(config: ml_collections.ConfigDict, dataset: ml_collections.ConfigDict | None = None) -> Task:
    """The task named by `config.name`, built from the rest of `config`.

    `dataset` (the config's dataset section) is needed by `forecasting`, whose
    horizon and scaler come from the time series it forecasts.
    """
    if config.name == "forecasting":
        if dataset is None:
            raise ValueError("task 'forecasting' is built from its dataset: pass the dataset config")
        return Forecasting.from_dataset(dataset)
    if config.name == "classification":
        return Classification(num_classes=config.num_classes)
    if config.name == "regression":
        return Regression(num_targets=config.num_targets)
    if config.name == "tagging":
        return Tagging(num_classes=config.num_classes)
    raise ValueError(f"unknown task '{config.name}'; choose one of: {', '.join(list_tasks())}")


__all__ = ["Task", "Classification", "Forecasting", "Regression", "Tagging", "get_task", "list_tasks"]
