"""Orbax checkpoints: the latest K for resuming and, kept apart, the best by the run's best metric.

The best is picked by `training.best_metric` (default: the task's own, e.g.
val/accuracy, val/miou, val/map50_95). Each checkpoint holds three items:
`state` (params, batch_stats, opt_state, step, and the EMA params when the run
keeps an EMA), `data` (the grain iterator state of every process, via grain's
orbax handler) and `meta` (JSON: the best metric's value and step so far, the
validation loss there, the early-stopping counter, and the `checksum` of the
state and of the iterator state, see `state_checksum`). The best checkpoint lives
in its own manager, so keeping it never evicts a checkpoint needed to resume.

A save is atomic: orbax writes a step into `<step>.orbax-checkpoint-tmp` and
renames it to `<step>` only after every item is written, so a process killed
mid-save leaves no step that a restore would list. With `async_save`, `save`
returns once the arrays are copied to host memory and a background thread
writes the files; the next save, a restore and `close` wait for it.

`Checkpoints` is the one restore path: training resumes through
`restore_latest`, picks its test state through `restore_best`, and everything
that only needs a trained model goes through `jaxdl.trained.TrainedRun`
(jaxdl-eval, jaxdl-predict, jaxdl-wordseg, the figure scripts), which calls
`restore_any` and `restore_variables`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxdl.errors import WorkdirError, first_line

log = logging.getLogger(__name__)


def _manager(
    directory: Path, keep: int, create: bool = True, async_save: bool = False, remove_unfinished: bool = False
) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        directory.absolute(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=create,
            # Async saves are safe with a train step that donates the state: orbax's array
            # handler blocks in save() until every array is copied to host memory (it defers
            # the copy only under a device-to-host byte limit, which jaxdl never sets).
            enable_async_checkpointing=async_save,
            # Only the run that writes may delete the temporary directories a killed save
            # left; a reader (jaxdl-eval on a live run) would delete a save in flight.
            cleanup_tmp_directories=remove_unfinished,
        ),
        item_handlers={
            "state": ocp.StandardCheckpointHandler(),
            "data": grain.checkpoint.CheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler(),
        },
    )


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _first_local_device() -> jax.sharding.Sharding:
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def leaf_name(path) -> str:
    """A state leaf's path as '/'-joined names (params/Conv_0/kernel, opt_state/0/mu/...)."""
    parts = []
    for key in path:
        for attribute in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey.
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _leaf_digest(leaf) -> bytes:
    """sha256 of one leaf's dtype, shape and host bytes (one leaf on the host at a time)."""
    digest = hashlib.sha256()
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        # Across processes each process hashes the shards it holds (replica 0, in index
        # order): gathering the global array on every host would cost its whole size.
        shards = sorted((s for s in leaf.addressable_shards if s.replica_id == 0), key=lambda s: str(s.index))
        digest.update(f"{leaf.dtype}{leaf.shape}".encode())
        for shard in shards:
            digest.update(str(shard.index).encode())
            digest.update(_bytes_view(shard.data))
        return digest.digest()
    value = np.asarray(jax.device_get(leaf))
    digest.update(f"{value.dtype}{value.shape}".encode())
    digest.update(_bytes_view(value))
    return digest.digest()


def _bytes_view(value) -> np.ndarray:
    """The value's bytes as a flat uint8 array, without the copy `tobytes` makes (sha256 reads the buffer)."""
    return np.ascontiguousarray(np.asarray(value)).reshape(-1).view(np.uint8)


def iterator_state_bytes(data_iterator) -> bytes:
    """The data iterator's state as bytes (jaxdl's DeviceIterator gives bytes; grain's own iterators a dict)."""
    state = data_iterator.get_state()
    return state if isinstance(state, bytes) else json.dumps(state, sort_keys=True).encode()


def state_checksum(state_tree, data_state: bytes | None) -> dict:
    """{"state": sha256 over every leaf in tree order, "data": sha256 of the iterator state} (hex, 16 chars).

    Each leaf's name, dtype, shape and bytes enter the state hash, so a renamed,
    reshaped or changed leaf changes it. Cost, paid in the loop at each save:
    every leaf is copied to the host once more than the save itself copies it
    (one leaf at a time), and hashed with sha256 on one core: milliseconds for
    the course's models; 288 MiB (ResNet-50 with Adam is 0.3 GB) took 1.1 s on
    a shared 2-core VM. Across processes the meta holds process 0's: its shards
    of arrays no process holds whole, and its own iterator state.
    """
    total = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(state_tree)[0]:
        total.update(leaf_name(path).encode())
        total.update(_leaf_digest(leaf))
    checksum = {"state": total.hexdigest()[:16]}
    if data_state is not None:
        checksum["data"] = hashlib.sha256(data_state).hexdigest()[:16]
    return checksum


class Checkpoints:
    """The latest and best checkpoints of one workdir."""

    def __init__(
        self, workdir: str | Path, keep: int = 2, *, async_save: bool = False, remove_unfinished: bool = False
    ):
        """Opens (creating if needed) the workdir's `checkpoints/` and `best/` managers.

        Args:
          workdir: the run's directory.
          keep: how many latest checkpoints to keep.
          async_save: saves return once the arrays are on the host; files are written in the background.
          remove_unfinished: deletes the temporary directories of saves that a killed process left
            (only for the process that trains: a reader must not delete a save in flight).
        """
        workdir = Path(workdir)
        self.workdir = workdir
        self.latest = _manager(
            workdir / "checkpoints", keep, async_save=async_save, remove_unfinished=remove_unfinished
        )
        self.best = _manager(workdir / "best", 1, async_save=async_save, remove_unfinished=remove_unfinished)

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _save(manager, step, state_tree, data_iterator, meta) -> None:
        # The checksum lets jaxdl-repro tell whether retraining reproduced this state bit for bit.
        meta = {**meta, "checksum": state_checksum(state_tree, iterator_state_bytes(data_iterator))}
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state_tree),
                data=grain.checkpoint.CheckpointSave(data_iterator),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def save_latest(self, step: int, state_tree, data_iterator, meta: dict) -> None:
        """Saves a resumable checkpoint at `step` (older ones beyond K are deleted)."""
        if step in self.latest.all_steps():
            return
        self._save(self.latest, step, state_tree, data_iterator, meta)

    def save_best(self, step: int, state_tree, data_iterator, meta: dict) -> None:
        """Replaces the best checkpoint by the one at `step`."""
        if step in self.best.all_steps():
            return
        self._save(self.best, step, state_tree, data_iterator, meta)

    def wait_until_finished(self) -> None:
        """Blocks until every save in flight is committed (a no-op for synchronous saves)."""
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def _restore(self, manager, step, state_tree, shardings, data_iterator):
        manager.wait_until_finished()  # The best checkpoint may still be in flight when the test split asks for it.
        items = {"state": ocp.args.StandardRestore(_abstract(state_tree, shardings)), "meta": ocp.args.JsonRestore()}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], restored["meta"]

    def restore_latest(self, state_tree, shardings, data_iterator) -> tuple[Any, dict] | None:
        """Restores the newest readable checkpoint onto `shardings`, or None if there is none.

        A newer checkpoint that cannot be read (half written, corrupt) while an
        older one can is skipped with a warning and renamed `<step>.unreadable`,
        so it is kept for inspection and its step can be saved again. If no
        checkpoint can be read, the run stops: starting over would silently
        discard them (the usual cause is a changed model or dataset config).
        """
        failed = []
        for step in sorted(self.latest.all_steps(), reverse=True):
            try:
                restored = self._restore(self.latest, step, state_tree, shardings, data_iterator)
            except Exception as error:  # Any read failure means: fall back to an older one.
                reason = f"{type(error).__name__}: {first_line(error, 300)}"
                log.warning("checkpoint at step %d is unreadable (%s); trying the previous one", step, reason)
                failed.append((step, reason))
                continue
            self._set_aside([step for step, _ in failed])
            return restored
        if failed:
            raise WorkdirError(
                f"no checkpoint in {self.latest.directory} can be restored (newest: step {failed[0][0]}, "
                f"{failed[0][1]}); use a new workdir or the config the run was started with"
            )
        return None

    def _set_aside(self, steps: list[int]) -> None:
        if not steps:
            return
        if jax.process_index() == 0:
            directory = Path(self.latest.directory)
            for step in steps:
                (directory / str(step)).rename(directory / f"{step}.unreadable")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("jaxdl_set_aside_checkpoints")
        self.latest.reload()

    def restore_best(self, state_tree, shardings) -> tuple[Any, dict] | None:
        """Restores the best checkpoint's state and meta, or None if there is none."""
        step = self.best.latest_step()
        if step is None:
            return None
        return self._restore(self.best, step, state_tree, shardings, None)

    def steps(self, kind: str = "latest") -> list[int]:
        """The steps of the kept checkpoints of `kind` ('latest' or 'best'), oldest first."""
        return sorted(getattr(self, kind).all_steps())

    def meta(self, step: int, kind: str = "latest") -> dict:
        """The `meta` item of the `kind` checkpoint at `step` (no array is read)."""
        manager = getattr(self, kind)
        manager.wait_until_finished()
        return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore_step(self, step: int, kind: str = "latest") -> tuple[Any, dict]:
        """(state tree, meta) of the `kind` checkpoint at `step`, saved shapes, on this process's first device."""
        manager = getattr(self, kind)
        state_tree = manager.item_metadata(step)["state"]
        shardings = jax.tree.map(lambda _: _first_local_device(), state_tree)
        return self._restore(manager, step, state_tree, shardings, None)

    def restore_any(self, state_tree=None, shardings=None, kinds=("best", "latest")) -> tuple[Any, dict, int]:
        """The state of the first of `kinds` ('best', 'latest') that holds a checkpoint: (state tree, meta, step).

        Without `state_tree` the saved shapes are read from the checkpoint and
        restored onto this process's first device (`shardings` is then ignored).
        """
        for manager in (getattr(self, kind) for kind in kinds):
            step = manager.latest_step()
            if step is None:
                continue
            if state_tree is None:
                state_tree = manager.item_metadata(step)["state"]
                shardings = jax.tree.map(lambda _: _first_local_device(), state_tree)
            state, meta = self._restore(manager, step, state_tree, shardings, None)
            return state, meta, int(step)
        raise WorkdirError(f"{self.workdir} holds no checkpoint to restore")

    def close(self) -> None:
        """Waits for pending writes and releases the managers."""
        self.latest.close()
        self.best.close()


def restore_variables(workdir: str | Path, kinds=("best", "latest")) -> tuple[dict, int]:
    """Model variables ({'params', 'batch_stats' if any}) of a workdir's best checkpoint, else its latest.

    The params are the EMA params when the checkpoint holds them (config.ema.decay > 0).

    `kinds` picks the order ('best', 'latest'; one of them alone restricts to it).
    Restored onto this process's first device, with the shapes the checkpoint
    holds; returns (variables, step). A workdir without checkpoints is a WorkdirError.
    """
    workdir = Path(workdir)
    if not (workdir / "checkpoints").is_dir() and not (workdir / "best").is_dir():
        raise WorkdirError(f"{workdir} holds no checkpoint to restore: is it a jaxdl workdir?")
    with Checkpoints(workdir) as checkpoints:
        state, _, step = checkpoints.restore_any(kinds=kinds)
    # A run with an EMA of its params (config.ema.decay > 0) is evaluated with the EMA: so are its checkpoints.
    variables = {"params": state["ema_params"] if state.get("ema_params") is not None else state["params"]}
    if state.get("batch_stats"):
        variables["batch_stats"] = state["batch_stats"]
    return variables, step
