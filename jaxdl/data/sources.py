"""Opens the random-access source of a dataset config's split, whatever kind of dataset it names.

The one place that tells the kinds apart: jaxdl's own tfds builders, time
series cut into windows (`jaxdl.data.timeseries`), and any other tfds dataset.
Everything after it (pipeline, tasks, loop) sees records, dicts of arrays.
"""

from __future__ import annotations

import ml_collections

from jaxdl.data import datasets, timeseries
from jaxdl.errors import ConfigError, check_at_least


def check(config: ml_collections.ConfigDict, batch_size: int) -> None:
    """Raises ConfigError when the dataset config names no dataset or cannot fill a batch."""
    if not datasets.is_known(config.name):
        raise ConfigError(
            f"config.dataset.name='{config.name}' is not a known dataset; choose one of: "
            f"{', '.join(datasets.LOCAL_BUILDERS)}, {datasets.CSV_DATASET}, or any tfds dataset name"
        )
    # Time-series keys; another dataset ignores them, but a value no series could use is refused anywhere.
    for key in ("lookback", "horizon"):
        check_at_least(f"dataset.{key}", config[key], 1)
    if timeseries.is_series(config.name):
        timeseries.check(config, batch_size)  # Reads the series: a missing file or column stops here.


def open_split(config: ml_collections.ConfigDict, split: str):
    """The source of `split`: in memory when `cache_in_memory` (time series always)."""
    if timeseries.is_series(config.name):
        try:
            return timeseries.window_source(config, split)  # Sliding windows, in memory.
        except ValueError as error:
            raise ConfigError(f"config.dataset: {error}") from None
    split_sizes = None
    if config.name == "shapes":
        split_sizes = config.split_sizes
        if len(split_sizes) != 3 or not all(isinstance(n, int) and n > 0 for n in split_sizes):
            raise ConfigError(
                f"config.dataset.split_sizes={tuple(split_sizes)} is not valid; give (train, validation, test) "
                "sizes, each an int > 0"
            )
    source = datasets.load_source(config.name, split, config.data_dir, split_sizes)
    if config.cache_in_memory:
        try:
            source = datasets.InMemorySource(source)
        except ValueError as error:  # Images of many sizes cannot be one array.
            raise ConfigError(
                f"config.dataset.cache_in_memory=True cannot hold {config.name} '{split}': {error}"
            ) from None
    return source
