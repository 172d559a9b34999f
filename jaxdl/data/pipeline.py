"""grain pipelines: seeded shuffle, per-process shards, transforms, batches on devices.

Training reads an endless, seeded stream of records (epoch after epoch, each in
its own order), so a step count alone fixes which batch comes next. The iterator
handed to the loop prefetches on a thread and reports the grain state of the last
batch it handed out, so a checkpoint resumes on exactly the next batch.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator

import grain
import jax
import ml_collections
import numpy as np

from jaxdl.data import datasets, transforms


class _Select(grain.transforms.Map):
    """Keeps the configured input and target, renamed to `input` and `target`."""

    def __init__(self, input_key: str, target_key: str):
        self.input_key = input_key
        self.target_key = target_key

    def map(self, record):
        return {"input": np.asarray(record[self.input_key]), "target": np.asarray(record[self.target_key])}


def _check_keys(source, config: ml_collections.ConfigDict) -> None:
    record = source[0]
    for key in ("input_key", "target_key"):
        if config[key] not in record:
            raise ValueError(
                f"config.dataset.{key}='{config[key]}' is not a feature of {config.name}; "
                f"choose one of: {', '.join(sorted(record))}"
            )


class Splits:
    """The sources of one dataset's splits and the transforms that apply to them."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self._sources = {}
        self._statistics = None

    def source(self, split: str):
        """The random-access source of `split` (cached in memory if configured)."""
        if split not in self._sources:
            source = datasets.load_source(self.config.name, split, self.config.data_dir)
            if self.config.cache_in_memory:
                source = datasets.InMemorySource(source)
            _check_keys(source, self.config)
            self._sources[split] = source
        return self._sources[split]

    def statistics(self) -> dict[str, np.ndarray]:
        """Per-feature mean and std of the training inputs (float64 accumulation)."""
        if self._statistics is None:
            source = self.source(self.config.train_split)
            key = self.config.input_key
            if isinstance(source, datasets.InMemorySource):
                values = source.column(key).astype(np.float64)
            else:
                values = np.stack([np.asarray(source[i][key], np.float64) for i in range(len(source))])
            self._statistics = {"mean": values.mean(axis=0), "std": values.std(axis=0)}
        return self._statistics

    def operations(self, train: bool) -> list:
        """The grain ops that turn a record into a model-ready example."""
        specs = transforms.parse(self.config.train_transforms if train else self.config.eval_transforms)
        statistics = self.statistics() if transforms.needs_statistics(specs) else None
        select = _Select(self.config.input_key, self.config.target_key)
        return [select, *transforms.build(specs, statistics), _AsFloat()]


class _AsFloat(grain.transforms.Map):
    """Inputs leave the pipeline as float32 whatever the transforms did."""

    def map(self, example):
        return {**example, "input": example["input"].astype(np.float32)}


def _shard_options() -> grain.sharding.ShardOptions:
    return grain.sharding.ShardOptions(
        shard_index=jax.process_index(), shard_count=jax.process_count(), drop_remainder=True
    )


def _read_options(source) -> grain.ReadOptions | None:
    """In-memory records need no reader threads: handing them over costs more than reading."""
    if isinstance(source, datasets.InMemorySource):
        return grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    return None


def train_loader(splits: Splits, *, global_batch_size: int, seed: int, worker_count: int = 0) -> grain.DataLoader:
    """Endless shuffled training batches of this process's share of the global batch."""
    source = splits.source(splits.config.train_split)
    local_batch = global_batch_size // jax.process_count()
    if len(source) // jax.process_count() < local_batch:
        raise ValueError(
            f"config.training.batch_size={global_batch_size} is larger than the "
            f"{len(source)} training examples of {splits.config.name}"
        )
    sampler = grain.samplers.IndexSampler(
        num_records=len(source), shard_options=_shard_options(), shuffle=True, num_epochs=None, seed=seed
    )
    if worker_count > 0:
        from absl import flags

        # grain's worker processes read absl flags; jaxdl parses its own command line.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
    operations = [*splits.operations(train=True), grain.transforms.Batch(local_batch, drop_remainder=True)]
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=operations,
        worker_count=worker_count,
        read_options=_read_options(source),
    )


def eval_batches(splits: Splits, split: str, *, global_batch_size: int, remainder: str = "pad") -> Iterator[dict]:
    """One pass over `split` in fixed-size batches with a `mask` of real examples.

    With remainder "pad" the last batch is filled with masked copies so every
    example counts once; with "drop" the incomplete last batch is skipped. Every
    process yields the same number of batches, so collective steps never hang.
    """
    source = splits.source(split)
    count = jax.process_count()
    local_batch = global_batch_size // count
    if remainder == "pad":
        num_batches = math.ceil(math.ceil(len(source) / count) / local_batch)
    else:
        num_batches = len(source) // count // local_batch
    sampler = grain.samplers.IndexSampler(
        num_records=len(source),
        shard_options=grain.sharding.ShardOptions(jax.process_index(), count, drop_remainder=remainder == "drop"),
        shuffle=False,
        num_epochs=1,
        seed=0,
    )
    operations = [*splits.operations(train=False), grain.transforms.Batch(local_batch, drop_remainder=False)]
    loader = grain.DataLoader(
        data_source=source, sampler=sampler, operations=operations, worker_count=0, read_options=_read_options(source)
    )
    iterator = iter(loader)
    template = None
    for _ in range(num_batches):
        batch = next(iterator, None)
        if batch is None:  # This process ran out first: an all-padding batch.
            batch = jax.tree.map(lambda x: x[:0], template)
        template = batch
        yield _pad(batch, local_batch)


def _pad(batch: dict, size: int) -> dict:
    real = len(batch["target"])
    mask = np.zeros(size, np.float32)
    mask[:real] = 1.0
    if real < size:
        # Zero rows keep padded examples finite through the model; the mask drops them.
        batch = jax.tree.map(lambda x: np.concatenate([x, np.zeros((size - real, *x.shape[1:]), x.dtype)]), batch)
    return {**batch, "mask": mask}


class DeviceIterator:
    """Batches placed on devices ahead of time, with a checkpointable grain state.

    `get_state`/`set_state`/`start_prefetch` are what grain's orbax handler calls,
    so this object is saved and restored like a grain iterator.
    """

    def __init__(self, loader: grain.DataLoader, place: Callable[[dict], dict], prefetch: int = 2):
        self._iterator = iter(loader)
        self._place = place
        self._prefetch = prefetch
        self._state = self._iterator.get_state()
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.start_prefetch()

    def _fill(self, stop: threading.Event, out: queue.Queue) -> None:
        try:
            while not stop.is_set():
                batch = next(self._iterator)
                item = (self._iterator.get_state(), self._place(batch))
                while not stop.is_set():
                    try:
                        out.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as error:  # Handed to the consumer, raised there.
            out.put((None, error))

    def start_prefetch(self) -> None:
        """Starts the background thread (no-op without prefetching or if running)."""
        if self._prefetch <= 0 or self._thread is not None:
            return
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self._prefetch)
        self._thread = threading.Thread(target=self._fill, args=(self._stop, self._queue), daemon=True)
        self._thread.start()

    def _halt(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._queue = None

    def __iter__(self) -> DeviceIterator:
        return self

    def __next__(self) -> dict:
        if self._thread is None:
            batch = next(self._iterator)
            self._state = self._iterator.get_state()
            return self._place(batch)
        state, batch = self._queue.get()
        if state is None:
            raise batch
        self._state = state
        return batch

    def get_state(self) -> bytes:
        """The grain state just after the last batch handed out."""
        return self._state

    def set_state(self, state: bytes) -> None:
        """Rewinds to `state`; prefetching restarts with start_prefetch()."""
        self._halt()
        self._iterator.set_state(state)
        self._state = state

    def close(self) -> None:
        """Stops the prefetch thread."""
        self._halt()
