"""grain pipelines: seeded shuffle, per-process shards, batch transforms, batches on devices.

Training reads an endless stream of epochs. Each epoch is a permutation of the
split drawn from (seed, epoch), cut into global batches (the remainder is
dropped); each process reads its own slice of every global batch. The
stream is a grain `MapDataset` whose elements are whole batches: batch `i` is a
pure function of `i`, so grain's iterator state is just a position, a resumed
run reads exactly the batches an uninterrupted one would, and worker processes
(`mp_prefetch`) change nothing but speed. The iterator handed to the loop
prefetches on a thread and reports the state of the last batch it handed out.

Dtypes are kept: integer ids stay integers and uint8 images stay uint8 until a
transform that needs floats (rescale, normalize, a resizing crop) converts them.

A batch holds named arrays of declared kinds (see `jaxdl.data.transforms`):
`input` (an image, or features / token ids), `target` (kind
`config.dataset.target_kind`, a class of `jaxdl.data.targets` that reads it
and the keys beside it: a label, a per-pixel `mask` [B, H, W], a
`sequence`, or `objects`: class ids [B, max_boxes] with `boxes` and
`box_valid` beside them, see `jaxdl.data.objects`), each of
`config.dataset.extra_keys` under its own name (`boxes` [B, N, 4] with
`box_valid`; others ride along), and from `eval_batches` the example `mask`
[B] of real rows.
"""

from __future__ import annotations

import json
import math
import queue
import sys
import threading
from collections.abc import Callable, Iterator

import grain
import jax
import ml_collections
import numpy as np

from jaxdl.data import datasets, objects, sources, targets, transforms
from jaxdl.errors import ConfigError, check_at_least, check_choice, first_line

_SPLIT_KEYS = ("train_split", "val_split", "test_split")
# Extra keys with a geometric kind; any other extra key rides along untouched (box_classes).
_EXTRA_KINDS = {"boxes": transforms.BOXES, "box_valid": transforms.BOX_VALID}
_RESERVED = ("input", "target", "mask")  # Batch names the extra keys must not take.


def _check_keys(source, config: ml_collections.ConfigDict) -> None:
    record = source[0]
    for key in ("input_key", *targets.kind_class(config).feature_keys(config)):
        if config[key] and not objects.has_key(record, config[key]):
            raise ConfigError(
                f"config.dataset.{key}='{config[key]}' is not a feature of {config.name}; "
                f"choose one of: {', '.join(sorted(record))}"
            )
    for key in config.extra_keys:
        if key not in record:
            raise ConfigError(
                f"config.dataset.extra_keys holds '{key}', not a feature of {config.name}; "
                f"choose from: {', '.join(sorted(record))}"
            )


def _check_kinds(config: ml_collections.ConfigDict) -> None:
    """The dataset's keys and kinds: target_kind, extra_keys, ignore_index."""
    kind = targets.kind_class(config)
    extra = config.extra_keys
    if isinstance(extra, str) or not all(isinstance(k, str) for k in extra):
        raise ConfigError(f"config.dataset.extra_keys={extra!r} is not valid; give a tuple of feature names")
    for key in extra:
        if key in _RESERVED:
            raise ConfigError(f"config.dataset.extra_keys holds '{key}', a name the batch already uses")
    kind.check_config(config)
    if ("boxes" in extra) != ("box_valid" in extra):
        raise ConfigError("config.dataset.extra_keys must hold 'boxes' and 'box_valid' together")
    if not isinstance(config.ignore_index, int) or config.ignore_index < 0:
        raise ConfigError(f"config.dataset.ignore_index={config.ignore_index} is not valid; it must be an int >= 0")


def kinds(config: ml_collections.ConfigDict) -> dict[str, str]:
    """The kind of every batch key the dataset config produces (see jaxdl.data.transforms)."""
    extra = {key: _EXTRA_KINDS.get(key, "other") for key in config.extra_keys}
    return {"input": transforms.IMAGE, **extra, **targets.kind_class(config).batch_kinds(config)}


class _Gather(grain.transforms.Map):
    """Reads the records at a batch of indices as `{"input": [B, ...], "target": [B, ...], extra..., "_index"}`.

    The target kind (jaxdl.data.targets) reads its own batch keys; the record
    indices (`_index`) travel with the batch for the kind's check at the end.
    """

    def __init__(self, source, config: ml_collections.ConfigDict, target: targets.TargetKind):
        self.source = source
        self.keys = {"input": config.input_key, **{k: k for k in config.extra_keys}}
        self.target = target

    def map(self, indices: np.ndarray) -> dict:
        if len(indices) == 0 and not isinstance(self.source, datasets.InMemorySource):
            # A padding-only batch still needs the shapes.
            return {name: value[:0] for name, value in self.map(np.zeros(1, np.int64)).items()}
        if isinstance(self.source, datasets.InMemorySource):
            batch = {name: self.source.column(key)[indices] for name, key in self.keys.items()}
            batch.update(self.target.read_columns(self.source, indices, batch))
        else:
            # One record at a time: tfds' batched __getitems__ is not supported by its mock_data.
            records = [self.source[int(i)] for i in indices]
            batch = {name: [np.asarray(r[key]) for r in records] for name, key in self.keys.items()}
            batch.update(self.target.read_records(records, indices, batch))
            batch = {name: _stack(values) if isinstance(values, list) else values for name, values in batch.items()}
        batch["_index"] = np.asarray(indices, np.int64)
        return batch


class _Partners:
    """Reads records by index as a batch through the gather and the (deterministic) ops before a mosaic."""

    def __init__(self, gather: _Gather, operations: list):
        self.gather, self.operations = gather, operations

    def __call__(self, indices: np.ndarray) -> dict:
        batch = self.gather.map(np.asarray(indices, np.int64))
        del batch["_index"]  # Partners' records were checked as they were read; the batch's own are checked last.
        for op in self.operations:
            batch = op.map(batch)
        return batch


def _stack(values: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """One array, or the list itself when the shapes differ (images of many sizes).

    A list must be made one array by a resizing transform (random_resized_crop,
    center_crop, resize or letterbox) before anything else touches it.
    """
    if len({v.shape for v in values}) > 1:
        return values
    return np.stack(values)


class _Stacked(grain.transforms.Map):
    """Checks that the transforms made every key one array, then runs the target kind's check; dtypes pass unchanged.

    The kind checks here, after the transforms (map_mask may rename mask ids).
    """

    def __init__(self, target: targets.TargetKind):
        self.target = target

    def map(self, batch):
        for key, value in batch.items():
            if isinstance(value, list):
                raise ConfigError(
                    f"the dataset's {key}s have different shapes; start config.dataset.train_transforms and "
                    "eval_transforms with random_resized_crop(size=..), center_crop(size=..), resize(size=..) "
                    "or letterbox(size=..)"
                )
        batch = dict(batch)
        self.target.check_batch(batch, batch.pop("_index"))
        return batch


class _EpochBatches(grain.MapDataset):
    """Element `i`: the record indices of this process's part of global batch `i`.

    Epoch `e` is a permutation drawn from (seed, e), cut into global batches (the
    remainder is dropped); each process takes its contiguous slice of every
    global batch. The global batches are therefore the same for any number of
    processes: a run on one host and on several sees the same data.

    With `repeats` k > 1 (repeated augmentation: Hoffer et al. 2020, DeiT's
    RASampler) a global batch holds global_batch / k examples of the
    permutation, k times over: [a b c ... a b c ... a b c ...]. The random
    transforms draw for each position, so every copy is augmented on its own;
    the copies of an example lie global_batch / k apart, so with k or more
    devices (or processes) each copy lands on a different one, as RASampler
    deals them to different GPUs. An epoch keeps its number of batches and so
    uses a 1/k subsample of the permutation, as DeiT's sampler does.
    """

    def __init__(
        self, num_records: int, global_batch: int, seed: int, process_index: int, process_count: int, repeats: int = 1
    ):
        super().__init__()
        self.num_records, self.global_batch, self.shuffle_seed = num_records, global_batch, seed
        self.repeats = repeats
        self.local_batch = global_batch // process_count
        self.offset = process_index * self.local_batch
        self.batches_per_epoch = num_records // global_batch
        self._cached: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return sys.maxsize  # Endless, like grain's repeat(None).

    def __str__(self) -> str:
        return (
            f"EpochBatches(records={self.num_records}, global_batch={self.global_batch}, "
            f"seed={self.shuffle_seed}, offset={self.offset})"
        )

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, np.random.default_rng([self.shuffle_seed, epoch]).permutation(self.num_records))
        return self._cached[1]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, position = divmod(index, self.batches_per_epoch)
        if self.repeats > 1:
            unique = self.global_batch // self.repeats
            batch = np.tile(self._epoch_order(epoch)[position * unique : (position + 1) * unique], self.repeats)
            return batch[self.offset : self.offset + self.local_batch]
        start = position * self.global_batch + self.offset
        return self._epoch_order(epoch)[start : start + self.local_batch]


class Splits:
    """The sources of one dataset's splits and the transforms that apply to them.

    Built from the config's `dataset` section, it checks its own keys: the
    dataset, its splits and features, the transforms, and that the training
    split fills a global batch of `batch_size`. Each problem is a ConfigError
    naming its key, raised here, before any compute.
    """

    def __init__(
        self, config: ml_collections.ConfigDict, batch_size: int | None = None, num_classes: int | None = None
    ):
        self.config = config
        # The task's classes; a kind with bounded ids (targets.TargetKind.bounded_ids) checks its ids against them.
        self.num_classes = num_classes
        self._sources = {}
        self._statistics = None
        check_choice("dataset.eval_remainder", config.eval_remainder, ("pad", "drop"))
        _check_kinds(config)
        self.target_kind = targets.kind_class(config)
        self.kinds = kinds(config)
        check_at_least("dataset.worker_count", config.worker_count, 0)
        check_at_least("dataset.prefetch_batches", config.prefetch_batches, 0)
        for key in ("train_transforms", "eval_transforms"):
            try:
                # Building checks the arguments too; statistics are placeholders here.
                transforms.build(transforms.parse(config[key]), {"mean": 0.0, "std": 1.0}, kinds=self.kinds)
            except ValueError as error:
                raise ConfigError(f"config.dataset.{key}: {error}") from None
        self.repeats = config.repeated_augmentations
        check_at_least("dataset.repeated_augmentations", self.repeats, 1)
        if not isinstance(self.repeats, int):
            raise ConfigError(f"config.dataset.repeated_augmentations={self.repeats!r} is not valid; give an int >= 1")
        if batch_size is None:
            return
        if batch_size % self.repeats:
            raise ConfigError(
                f"config.dataset.repeated_augmentations={self.repeats} does not divide "
                f"config.training.batch_size={batch_size}; each batch holds that many copies of its examples"
            )
        sources.check(config, batch_size)
        for key in _SPLIT_KEYS:
            if config[key]:
                self.source(config[key], key=key)
            elif key != "val_split":
                raise ConfigError(f"config.dataset.{key} is empty; name a split of {config.name}")
        count = len(self.source(config.train_split))
        if count < batch_size:
            raise ConfigError(
                f"config.training.batch_size={batch_size} is larger than the {count} training examples of "
                f"{config.name}; choose at most {count}"
            )

    def source(self, split: str, key: str = "split"):
        """The random-access source of `split` (cached in memory if configured; time series always)."""
        if split not in self._sources:
            try:
                source = sources.open_split(self.config, split)
            except (ConfigError, datasets.DatasetNotPreparedError):
                raise
            except (ValueError, KeyError) as error:  # tfds' unknown split names, empty splits.
                raise ConfigError(
                    f"config.dataset.{key}='{split}' cannot be read from {self.config.name}: "
                    f"{type(error).__name__}: {first_line(error, 200)}"
                ) from None
            if len(source) == 0:
                raise ConfigError(f"config.dataset.{key}='{split}' of {self.config.name} holds no examples")
            _check_keys(source, self.config)
            self._sources[split] = source
        return self._sources[split]

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """All inputs and all targets of `split`, stacked (for baselines fitted outside the loop)."""
        source = self.source(split)
        keys = (self.config.input_key, self.config.target_key)
        if isinstance(source, datasets.InMemorySource):
            return tuple(source.column(k) for k in keys)
        records = [source[i] for i in range(len(source))]
        return tuple(np.stack([np.asarray(r[k]) for r in records]) for k in keys)

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

    def operations(self, split: str, train: bool, global_batch: int | None = None) -> list:
        """The grain ops that turn a batch of indices of `split` into a model-ready batch."""
        specs = transforms.parse(self.config.train_transforms if train else self.config.eval_transforms)
        statistics = self.statistics() if transforms.needs_statistics(specs) else None
        target = self.target_kind(self.config, split, self.num_classes)
        gather = _Gather(self.source(split), self.config, target)
        offset = jax.process_index() * (global_batch // jax.process_count()) if global_batch else 0
        ops = transforms.build(
            specs,
            statistics,
            global_batch=global_batch,
            offset=offset,
            kinds=self.kinds,
            ignore_index=self.config.ignore_index,
        )
        for i, op in enumerate(ops):
            if isinstance(op, transforms.Mosaic):
                # Partners are drawn from the whole split, read through the ops before the mosaic (not random).
                op.partners, op.num_records = _Partners(gather, ops[:i]), len(self.source(split))
        checked = _Stacked(target)
        return [gather, *ops, checked]


def _apply(dataset: grain.MapDataset, operations: list) -> grain.MapDataset:
    for op in operations:
        dataset = dataset.random_map(op) if isinstance(op, grain.transforms.RandomMap) else dataset.map(op)
    return dataset


def train_loader(splits: Splits, *, global_batch_size: int, seed: int, worker_count: int = 0) -> grain.IterDataset:
    """Endless shuffled training batches of this process's share of the global batch."""
    source = splits.source(splits.config.train_split)
    if len(source) < global_batch_size:
        raise ConfigError(
            f"config.training.batch_size={global_batch_size} is larger than the "
            f"{len(source)} training examples of {splits.config.name}"
        )
    batches = _EpochBatches(
        len(source),
        global_batch_size,
        seed,
        jax.process_index(),
        jax.process_count(),
        repeats=splits.repeats,
    )
    # The seed of the random transforms; grain mixes in each batch's index.
    operations = splits.operations(splits.config.train_split, train=True, global_batch=global_batch_size)
    dataset = _apply(batches.seed(seed), operations)
    dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    if worker_count > 0:
        from absl import flags

        # grain's worker processes read absl flags; jaxdl parses its own command line.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return dataset


def eval_batches(splits: Splits, split: str, *, global_batch_size: int, remainder: str = "pad") -> Iterator[dict]:
    """One pass over `split` in fixed-size batches with a `mask` of real examples.

    With remainder "pad" the last batch is filled with masked zero rows so every
    example counts once; with "drop" the incomplete last batch is skipped. Every
    process yields the same number of batches, so collective steps never hang.
    """
    source = splits.source(split)
    count, index = jax.process_count(), jax.process_index()
    local_batch = global_batch_size // count
    # Contiguous per-process parts; with "pad" the first len % count parts hold one more.
    sizes = [len(source) // count + (i < len(source) % count) for i in range(count)]
    if remainder == "drop":
        sizes = [len(source) // count] * count
    start, size = sum(sizes[:index]), sizes[index]
    num_batches = math.ceil(max(sizes) / local_batch) if remainder == "pad" else size // local_batch

    def indices(i: int) -> np.ndarray:
        return np.arange(start + i * local_batch, start + min((i + 1) * local_batch, size))

    dataset = _apply(grain.MapDataset.range(num_batches).map(indices).seed(0), splits.operations(split, train=False))
    for i in range(num_batches):
        yield _pad(dataset[i], local_batch)


def _pad(batch: dict, size: int) -> dict:
    real = len(batch["target"])
    mask = np.zeros(size, np.float32)
    mask[:real] = 1.0
    if real < size:
        # Zero rows keep padded examples finite through the model; the mask drops them.
        # (A process past the end of its part gets a batch of padding only.)
        batch = jax.tree.map(lambda x: np.concatenate([x, np.zeros((size - real, *x.shape[1:]), x.dtype)]), batch)
    return {**batch, "mask": mask}


class DeviceIterator:
    """Batches placed on devices ahead of time, with a checkpointable grain state.

    `get_state`/`set_state`/`start_prefetch` are what grain's orbax handler calls,
    so this object is saved and restored like a grain iterator.
    """

    def __init__(self, loader: grain.IterDataset, place: Callable[[dict], dict], prefetch: int = 2):
        self._iterator = iter(loader)
        self._place = place
        self._prefetch = prefetch
        self._state = self._encoded_state()
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None
        self.start_prefetch()

    @staticmethod
    def _offer(item, stop: threading.Event, out: queue.Queue) -> None:
        """Puts `item` once there is room, giving up when asked to stop (never blocks a halt)."""
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _fill(self, stop: threading.Event, out: queue.Queue) -> None:
        try:
            while not stop.is_set():
                batch = next(self._iterator)
                self._offer((self._encoded_state(), self._place(batch)), stop, out)
        except BaseException as error:  # Handed to the consumer, raised there.
            self._offer((None, error), stop, out)

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
            self._state = self._encoded_state()
            return self._place(batch)
        state, batch = self._queue.get()
        if state is None:
            raise batch
        self._state = state
        return batch

    def _encoded_state(self) -> bytes:
        # grain's orbax handler stores bytes for iterators that are not its own.
        return json.dumps(self._iterator.get_state()).encode()

    def get_state(self) -> bytes:
        """The grain state just after the last batch handed out."""
        return self._state

    def set_state(self, state: bytes) -> None:
        """Rewinds to `state`; prefetching restarts with start_prefetch()."""
        self._halt()
        self._iterator.set_state(json.loads(state))
        self._state = state

    def close(self) -> None:
        """Stops the prefetch thread and grain's worker processes."""
        self._halt()
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()
