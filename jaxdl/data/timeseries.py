"""Univariate time series for forecasting: chronological splits, sliding windows, a train-only scaler.

The rule, with no leakage from the future into training or from the test part
into anything fitted:

- The series y_0 .. y_{n-1} is cut in time order into train [0, a), validation
  [a, b) and test [b, n), with a = round(0.7 n) and b = a + round(0.15 n)
  (`datasets.chronological_bounds`). Nothing is shuffled across time.
- A window with first target index t has inputs y_{t-L} .. y_{t-1} (L = lookback)
  and targets y_t .. y_{t+H-1} (H = horizon). It belongs to the split that holds
  all of its targets: train windows have L <= t and t + H <= a, validation
  windows a <= t and t + H <= b, test windows b <= t and t + H <= n. The inputs
  of the first validation (test) windows reach back into the train (validation)
  values: those are the past, known when the forecast is made. Training windows
  need no value outside train; the last H - 1 values of each split are targets
  of no window of their own split but inputs of the next split's windows.
- The scaler (mean and population std) is fitted on the train values y_0 ..
  y_{a-1} only and applied to every split; so is the MASE scale (the mean
  absolute one-step change of the train values).

The training pipeline sees ordinary in-memory records `{"input": [L, 1] float32,
"target": [H] float32}` of scaled values; windows are shuffled only within a split.
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


def is_series(name: str) -> bool:
    """Whether dataset `name` is a time series (a series builder or `csv`)."""
    return name in datasets.SERIES_BUILDERS or name == datasets.CSV_DATASET


@dataclasses.dataclass(frozen=True)
class Statistics:
    """What is fitted on the training values: the scaler and the MASE scale."""

    mean: float
    std: float  # Population std; 1.0 for a constant training part.
    naive_mae: float  # mean |y_t - y_{t-1}| over the training values (in-sample naive one-step MAE).

    def scale(self, values: np.ndarray) -> np.ndarray:
        """(values - mean) / std."""
        return (np.asarray(values, np.float64) - self.mean) / self.std

    def unscale(self, values: np.ndarray) -> np.ndarray:
        """values * std + mean: back to the original units."""
        return np.asarray(values, np.float64) * self.std + self.mean


def fit_statistics(train_values: np.ndarray) -> Statistics:
    """Mean, std and naive one-step MAE of the training values only."""
    train_values = np.asarray(train_values, np.float64)
    if len(train_values) < 2:
        raise ValueError(f"the training part needs at least 2 values, got {len(train_values)}")
    std = float(train_values.std())
    naive = float(np.mean(np.abs(np.diff(train_values))))
    # A constant series has no spread: scale by 1 rather than divide by 0.
    return Statistics(mean=float(train_values.mean()), std=std if std > 0 else 1.0, naive_mae=naive or 1.0)


@dataclasses.dataclass(frozen=True)
class Series:
    """A whole series in time order and where its train and validation parts end."""

    label: str  # Names the series in source reprs (deterministic: grain compares them).
    values: np.ndarray  # float64 [n]
    bounds: tuple[int, int]  # (a, b): train [0, a), validation [a, b), test [b, n).

    def part(self, split: str) -> tuple[int, int]:
        """[start, stop) of `split` in the series."""
        a, b = self.bounds
        return {"train": (0, a), "validation": (a, b), "test": (b, len(self.values))}[split]

    def statistics(self) -> Statistics:
        """The scaler and MASE scale, fitted on the train part."""
        start, stop = self.part("train")
        return fit_statistics(self.values[start:stop])


def window_starts(length: int, bounds: tuple[int, int], split: str, lookback: int, horizon: int) -> np.ndarray:
    """First target index t of every window of `split`, in time order (see the module rule)."""
    start, stop = {"train": (0, bounds[0]), "validation": bounds, "test": (bounds[1], length)}[split]
    return np.arange(max(start, lookback), stop - horizon + 1)


def make_windows(values: np.ndarray, starts: np.ndarray, lookback: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs [N, lookback] = values[t - lookback : t] and targets [N, horizon] = values[t : t + horizon]."""
    values = np.asarray(values)
    starts = np.asarray(starts, np.int64)
    inputs = values[starts[:, None] + np.arange(-lookback, 0)]
    targets = values[starts[:, None] + np.arange(horizon)]
    return inputs, targets


def read_csv_column(path: str, column: str) -> np.ndarray:
    """One numeric column of a CSV file (rows in time order); problems raise a one-line ConfigError."""
    import pandas as pd

    if not path:
        raise ConfigError("config.dataset.path is empty; dataset 'csv' needs the path of a CSV file")
    if not Path(path).is_file():
        raise ConfigError(f"config.dataset.path='{path}' is not a file")
    try:
        # Strings throughout: every cell is checked below, with its row in the message.
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ConfigError(f"config.dataset.path='{path}' is not a readable CSV file: {first_line(error)}") from None
    names = [str(name) for name in table.columns]
    if not column:
        if len(names) != 1:
            raise ConfigError(
                f"config.dataset.column is empty but {path} has {len(names)} columns; choose one of: {', '.join(names)}"
            )
        column = names[0]
    if column not in names:
        raise ConfigError(
            f"config.dataset.column='{column}' is not a column of {path}; choose one of: {', '.join(names)}"
        )
    cells = table[column].str.strip()
    values = pd.to_numeric(cells, errors="coerce").to_numpy(np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        row = int(bad[0])
        raise ConfigError(
            f"config.dataset.column='{column}' of {path} has a non-numeric value '{cells.iloc[row]}' at data row "
            f"{row + 1} (line {row + 2}); give numbers only, with missing values filled in"
        )
    return values


@functools.lru_cache(maxsize=16)
def _load_cached(name: str, data_dir: str, path: str, column: str, stamp: tuple) -> Series:
    del stamp  # Part of the cache key only: an edited CSV file is read again.
    if name == datasets.CSV_DATASET:
        values = read_csv_column(path, column)
        return Series(f"csv:{Path(path).name}:{column}", values, datasets.chronological_bounds(len(values)))
    builder = datasets.local_builder(name, data_dir)
    times, values, sizes = [], [], []
    for split in SPLITS:
        source = builder.as_data_source(split=split)
        records = [source[i] for i in range(len(source))]
        times += [float(r["time"]) for r in records]
        values += [float(r["value"]) for r in records]
        sizes.append(len(records))
    order = np.argsort(np.asarray(times), kind="stable")  # The parts are consecutive in time.
    return Series(name, np.asarray(values, np.float64)[order], (sizes[0], sizes[0] + sizes[1]))


def load_series(config: ml_collections.ConfigDict) -> Series:
    """The series named by a dataset config (`name`, `data_dir`, `path`, `column`); cached per process."""
    if not is_series(config.name):
        raise ValueError(f"dataset '{config.name}' is not a time series")
    path, column, stamp = "", "", ()
    if config.name == datasets.CSV_DATASET:
        path, column = str(config.path), str(config.column)
        if path and os.path.isfile(path):
            info = os.stat(path)
            stamp = (os.path.abspath(path), info.st_mtime_ns, info.st_size)
    return _load_cached(config.name, str(config.data_dir or datasets.default_data_dir()), path, column, stamp)


class _WindowRecords:
    """Windows of one split as records; wrapped in `datasets.InMemorySource` for fast gathers."""

    def __init__(self, label: str, inputs: np.ndarray, targets: np.ndarray):
        self._label = label
        self._inputs = inputs.astype(np.float32)[..., None]  # [N, lookback, 1]: one feature per step.
        self._targets = targets.astype(np.float32)

    def __len__(self) -> int:
        return len(self._inputs)

    def __repr__(self) -> str:
        return self._label

    def __getitem__(self, index: int) -> dict:
        return {"input": self._inputs[index], "target": self._targets[index]}


def split_windows(config: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Scaled inputs [N, lookback] and targets [N, horizon] of `split` (float64)."""
    if split not in SPLITS:
        raise ValueError(f"time-series split '{split}' is not valid; choose one of: {', '.join(SPLITS)}")
    series = load_series(config)
    scaled = series.statistics().scale(series.values)
    starts = window_starts(len(series.values), series.bounds, split, config.lookback, config.horizon)
    return make_windows(scaled, starts, config.lookback, config.horizon)


def window_source(config: ml_collections.ConfigDict, split: str) -> datasets.InMemorySource:
    """The scaled windows of `split` as an in-memory source of `{"input", "target"}` records."""
    inputs, targets = split_windows(config, split)
    if len(inputs) == 0:
        raise ValueError(
            f"split '{split}' of {config.name} holds no window of lookback {config.lookback} and horizon "
            f"{config.horizon}; lower config.dataset.lookback or config.dataset.horizon"
        )
    label = (
        f"SeriesWindows({load_series(config).label}, split={split}, lookback={config.lookback}, "
        f"horizon={config.horizon})"
    )
    return datasets.InMemorySource(_WindowRecords(label, inputs, targets))


def check(dataset: ml_collections.ConfigDict, batch_size: int) -> None:
    """Raises ConfigError when a time-series dataset config cannot be built (before any compute)."""
    for key in ("train_split", "val_split", "test_split"):
        if dataset[key] not in SPLITS and not (key == "val_split" and dataset[key] == ""):
            raise ConfigError(
                f"config.dataset.{key}='{dataset[key]}' is not valid for time series; "
                f"choose one of: {', '.join(SPLITS)}"
            )
    series = load_series(dataset)
    for key in ("train_split", "val_split", "test_split"):
        split = dataset[key]
        if not split:
            continue
        count = len(window_starts(len(series.values), series.bounds, split, dataset.lookback, dataset.horizon))
        start, stop = series.part(split)
        if key == "train_split":
            needed, remedy = batch_size, "lower them or config.training.batch_size"
        else:
            needed, remedy = 1, "lower them"
        if count < needed:
            raise ConfigError(
                f"config.dataset.lookback={dataset.lookback} and horizon={dataset.horizon} leave {count} "
                f"{split} windows in the {stop - start} {split} values of {series.label}, fewer than the "
                f"{needed} needed; {remedy}"
            )
