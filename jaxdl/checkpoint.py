"""Orbax checkpoints: the latest K for resuming and, kept apart, the best by validation loss.

Each checkpoint holds three items: `state` (params, batch_stats, opt_state, step),
`data` (the grain iterator state of every process, via grain's orbax handler) and
`meta` (JSON: best validation loss so far, early-stopping counter). The best
checkpoint lives in its own manager, so keeping it never evicts a checkpoint
needed to resume.

A save is atomic: orbax writes a step into `<step>.orbax-checkpoint-tmp` and
renames it to `<step>` only after every item is written, so a process killed
mid-save leaves no step that a restore would list. With `async_save`, `save`
returns once the arrays are copied to host memory and a background thread
writes the files; the next save, a restore and `close` wait for it.

`Checkpoints` is the one restore path: training resumes through
`restore_latest`, picks its test state through `restore_best`, and everything
that only needs a trained model (jaxdl-eval, jaxdl-segment, the benchmarks,
the tests) calls `restore_variables`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from jaxdl.errors import WorkdirError

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
                reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300] if str(error) else ''}"
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
