"""CSV tables for classification and regression: the course's logistic-regression and MLP chapter on your own file.

`config.dataset.name="csv"` with `config.dataset.label` set reads `config.dataset.path`
as a table (without `label` it is a time series, `jaxdl.data.timeseries`):

- `label` names the target column; every other column is a feature and must be
  numeric (a non-numeric one is an error naming it: encode it as numbers or drop it).
- Classification (`dataset.target_key="label"`): the classes are the column's
  distinct values, sorted (numerically for a numeric column, else as text), and a
  record's label is its value's index among them; `class_names` gives them.
  Regression (`dataset.target_key="target"`): the column is the float target.
- Rows are split as the shipped tables are (`datasets.split_rows`: a seeded
  permutation cut 70/15/15 into train, validation, test), so a table written to a
  CSV file keeps its rows in the same splits.
- Records are `{"features": float32 [F], "label": int}` or `{"features", "target":
  float32}`, as the breast_cancer and diabetes builders give them, unscaled: the
  `standardize()` transform scales them with the mean and std of the train split
  only (`pipeline.Splits.statistics`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import ml_collections
import numpy as np

from jaxdl.data import datasets
from jaxdl.errors import ConfigError, first_line

SPLITS = ("train", "validation", "test")
FEATURES_KEY = "features"
# dataset.target_key -> what a record holds under it.
TARGET_KEYS = {"label": "class id", "target": "float target"}


def is_table(config: ml_collections.ConfigDict) -> bool:
    """Whether a dataset config names a CSV table (`csv` with a `label` column) rather than a time series."""
    return config.name == datasets.CSV_DATASET and bool(config.get("label", ""))


@dataclasses.dataclass(frozen=True)
class Table:
    """A CSV table's features and target column, read once."""

    name: str  # The file's name and the label column, for source reprs (deterministic: grain compares them).
    label: str
    feature_names: tuple[str, ...]
    features: np.ndarray  # float32 [N, F]
    values: np.ndarray  # object [N]: the label column as read (numbers or text)
    numeric: bool  # Whether every label value is a number.

    @functools.cached_property
    def class_names(self) -> tuple[str, ...]:
        """The distinct label values, sorted (numbers numerically), as text; a class id indexes them."""
        return tuple(_text(v) for v in self._classes)

    @functools.cached_property
    def _classes(self) -> list:
        return sorted(set(self.values.tolist()))

    def class_ids(self) -> np.ndarray:
        """int64 [N]: each row's index among the sorted classes."""
        index = {value: i for i, value in enumerate(self._classes)}
        return np.array([index[v] for v in self.values.tolist()], np.int64)

    def targets(self) -> np.ndarray:
        """float32 [N]: the label column as a regression target (numeric columns only)."""
        return self.values.astype(np.float32)


def _text(value) -> str:
    """A class value as text: integral numbers without '.0'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def read_table(path: str, label: str) -> Table:
    """The table at `path` with target column `label`; problems raise a one-line ConfigError naming the file."""
    import pandas as pd

    if not path:
        raise ConfigError("config.dataset.path is empty; dataset 'csv' needs the path of a CSV file")
    if not Path(path).is_file():
        raise ConfigError(f"config.dataset.path='{path}' is not a file")
    try:
        table = pd.read_csv(path, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ConfigError(f"config.dataset.path='{path}' is not a readable CSV file: {first_line(error)}") from None
    table.columns = [str(c).strip() for c in table.columns]
    names = list(table.columns)
    if label not in names:
        raise ConfigError(
            f"config.dataset.label='{label}' is not a column of {path}; choose one of: {', '.join(names)}"
        )
    features = [c for c in names if c != label]
    if not features:
        raise ConfigError(f"{path} has no column besides config.dataset.label='{label}'; a table needs features")
    text = [c for c in features if not pd.api.types.is_numeric_dtype(table[c])]
    if text:
        raise ConfigError(
            f"{path}: feature column(s) {', '.join(repr(c) for c in text)} are not numeric; encode them as numbers "
            "or remove them (every column but config.dataset.label is a feature)"
        )
    x = table[features].to_numpy(np.float64)
    for column, row in _missing(x, features):
        raise ConfigError(
            f"{path}: column '{column}' has no value at data row {row + 1} (line {row + 2}); fill in missing values"
        )
    y = table[label]
    numeric = pd.api.types.is_numeric_dtype(y)
    values = y.to_numpy(np.float64) if numeric else y.astype(str).str.strip().to_numpy(object)
    empty = np.flatnonzero(~np.isfinite(values) if numeric else (y.isna().to_numpy() | (values == "")))
    if empty.size:
        row = int(empty[0])
        raise ConfigError(f"{path}: label column '{label}' has no value at data row {row + 1} (line {row + 2})")
    return Table(
        f"{Path(path).name}:{label}", label, tuple(features), x.astype(np.float32), values.astype(object), numeric
    )


def _missing(x: np.ndarray, names: list[str]):
    """(column, row) of each non-finite feature value, the first ones first."""
    rows, cols = np.nonzero(~np.isfinite(x))
    return [(names[c], int(r)) for r, c in zip(rows, cols, strict=True)]


@functools.lru_cache(maxsize=16)
def _load_cached(path: str, label: str, stamp: tuple) -> Table:
    del stamp  # Part of the cache key only: an edited CSV file is read again.
    return read_table(path, label)


def load_table(config: ml_collections.ConfigDict) -> Table:
    """The table a dataset config names (`path`, `label`); cached per process, read again when the file changes."""
    path = str(config.path)
    stamp = ()
    if path and os.path.isfile(path):
        info = os.stat(path)
        stamp = (os.path.abspath(path), info.st_mtime_ns, info.st_size)
    return _load_cached(path, str(config.label), stamp)


def class_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The class names of a table dataset config, by class id (the sorted distinct label values)."""
    return load_table(config).class_names


class _TableRecords:
    """The rows of one split as records; wrapped in `datasets.InMemorySource`."""

    def __init__(self, label: str, columns: dict[str, np.ndarray]):
        self._label, self._columns = label, columns

    def __len__(self) -> int:
        return len(self._columns[FEATURES_KEY])

    def __repr__(self) -> str:
        return self._label

    def __getitem__(self, index: int) -> dict:
        return {key: column[index] for key, column in self._columns.items()}


def _check_target_key(config: ml_collections.ConfigDict) -> None:
    if config.target_key not in TARGET_KEYS:
        raise ConfigError(
            f"config.dataset.target_key='{config.target_key}' is not valid for a csv table; choose label "
            "(classification) or target (regression)"
        )


def _check_numeric(table: Table, config: ml_collections.ConfigDict) -> None:
    if not table.numeric:
        raise ConfigError(
            f"config.dataset.label='{table.label}' of {config.path} is not numeric, so it cannot be a regression "
            "target; set config.task.name=classification and config.dataset.target_key=label"
        )


def table_source(config: ml_collections.ConfigDict, split: str) -> datasets.InMemorySource:
    """The rows of `split` as an in-memory source of `{"features", "label" | "target"}` records."""
    if split not in SPLITS:
        raise ConfigError(f"split '{split}' is not valid for a csv table; choose one of: {', '.join(SPLITS)}")
    _check_target_key(config)
    table = load_table(config)
    rows = datasets.split_rows(len(table.features))[split]
    if config.target_key == "label":
        target = table.class_ids()[rows]
    else:
        _check_numeric(table, config)
        target = table.targets()[rows]
    if len(rows) == 0:
        raise ConfigError(f"split '{split}' of {config.path} has no rows; a csv table needs at least 7 rows")
    columns = {FEATURES_KEY: table.features[rows], config.target_key: target}
    return datasets.InMemorySource(_TableRecords(f"Table({table.name}, split={split})", columns))


def check_task(
    dataset: ml_collections.ConfigDict, *, task: str, target_key: str, num_classes: int | None = None
) -> None:
    """For a `csv` dataset: the table exists and holds what task `task` reads under `target_key`.

    `target_key` is "label" (class ids; with `num_classes`, the label column must
    hold that many classes) or "target" (a float target: the column must be
    numeric). `task` only names the task in messages. Raises ConfigError when
    `label` is not set (the file would be read as a time series), when
    `dataset.target_key` is another key, or when the column does not fit.
    """
    if dataset.name != datasets.CSV_DATASET or not dataset.path:
        return  # Without a path (a template such as configs/my_table.py), building the data names the missing key.
    if not is_table(dataset):
        raise ConfigError(
            f"config.task.name='{task}' on a csv file reads a table: set config.dataset.label to the target column "
            "(without it the file is a time series, for config.task.name='forecasting')"
        )
    if dataset.target_key != target_key:
        raise ConfigError(
            f"config.task.name='{task}' reads the {TARGET_KEYS[target_key]} of a csv table: "
            f"set config.dataset.target_key={target_key} (it is '{dataset.target_key}')"
        )
    table = load_table(dataset)
    if target_key == "target":
        _check_numeric(table, dataset)
    if num_classes is not None and num_classes != len(table.class_names):
        shown = ", ".join(table.class_names[:10]) + (", ..." if len(table.class_names) > 10 else "")
        raise ConfigError(
            f"config.task.num_classes={num_classes} but column '{table.label}' of {dataset.path} holds "
            f"{len(table.class_names)} classes ({shown}); set config.task.num_classes={len(table.class_names)}"
        )
