"""Opens the random-access source of a dataset config's split, whatever kind of dataset it names.

The one place that tells the kinds apart: jaxdl's own tfds builders, time
series cut into windows (`jaxdl.data.timeseries`), and any other tfds dataset.
Everything after it (pipeline, tasks, loop) sees records, dicts of arrays.
"""

from __future__ import annotations

import ml_collections

from jaxdl.data import datasets, disk, tables, timeseries
from jaxdl.errors import ConfigError, check_at_least


def check(config: ml_collections.ConfigDict, batch_size: int) -> None:
    """Raises ConfigError when the dataset config names no dataset or cannot fill a batch."""
    if disk.is_disk(config.name):
        disk.check(config)  # Image folders: image_folder, yolo, mask_folder (jaxdl.data.disk).
    elif not datasets.is_known(config.name):
        raise ConfigError(
            f"config.dataset.name='{config.name}' is not a known dataset; choose one of: "
            f"{', '.join(datasets.LOCAL_BUILDERS)}, {datasets.CSV_DATASET}, or any tfds dataset name"
        )
    # Time-series keys; another dataset ignores them, but a value no series could use is refused anywhere.
    for key in ("lookback", "horizon"):
        check_at_least(f"dataset.{key}", config[key], 1)
    if timeseries.is_series(config.name) and not tables.is_table(config):
        timeseries.check(config, batch_size)  # Reads the series: a missing file or column stops here.


def open_split(config: ml_collections.ConfigDict, split: str):
    """The source of `split`: in memory when `cache_in_memory` (time series always)."""
    if disk.is_disk(config.name):
        return disk.open_split(config, split)  # Decoded once into the data dir's cache.
    if tables.is_table(config):
        return tables.table_source(config, split)  # A csv table: rows in memory (jaxdl.data.tables).
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


def class_names(config: ml_collections.ConfigDict) -> tuple[str, ...] | None:
    """The class names a dataset read from disk brings (jaxdl.data.disk), by id; None for every other dataset.

    Training writes them into the workdir, where TrainedRun finds them without the folder.
    """
    if tables.is_table(config) and config.target_key == "label":
        return tables.class_names(config)  # A csv table's classes: the label column's sorted values.
    return disk.class_names(config) if disk.is_disk(config.name) else None


def resolve_num_classes(config: ml_collections.ConfigDict) -> None:
    """A whole experiment config's `task.num_classes` = 0 taken from a dataset read from disk, and a mask folder's ids
    checked against it (jaxdl.data.disk.resolve_num_classes); any other dataset is left as it is.
    """
    disk.resolve_num_classes(config)
