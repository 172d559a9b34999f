"""Asynchronous checkpoints (config.training.async_checkpoints): same numbers, and kill -9 still safe."""

import json
import random
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxdl import train
from jaxdl.checkpoint import Checkpoints, state_checksum
from tests import helpers

pytestmark = pytest.mark.slow  # End-to-end runs; `-m "not slow"` leaves them out.

# A checkpoint every step, so a kill at a random moment often lands inside a save.
EVERY_STEP = dict(training__num_steps=20, training__checkpoint_every_steps=1, training__keep_checkpoints=3)


def _async_cfg(**overrides):
    return helpers.tiny_cnn(**{"training__async_checkpoints": "true", **EVERY_STEP, **overrides})


@pytest.fixture(scope="module")
def async_run(tmp_path_factory):
    return helpers.shared_run(tmp_path_factory, "digits_tiny_cnn_async_every_step", _async_cfg())


class _Iterator:
    """The least a grain checkpoint needs of a data iterator: a state to get and set."""

    def __init__(self, position: int = 0):
        self.position = position

    def get_state(self) -> bytes:
        return json.dumps({"position": self.position}).encode()

    def set_state(self, state: bytes) -> None:
        self.position = json.loads(state)["position"]

    def start_prefetch(self) -> None:
        """Grain's restore calls this after set_state; a position has nothing to prefetch."""


def _one_device_tree(tree):
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.device_put(tree, sharding), jax.tree.map(lambda _: sharding, tree)


def _unfinished(directory) -> list[str]:
    """Names of the step directories in `directory` whose save has not committed."""
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if ocp.path.atomicity.TMP_DIR_SUFFIX in p.name)


def _state_at(workdir, step: int) -> dict:
    """The state tree of the latest-manager checkpoint at `step`, on one device."""
    with Checkpoints(workdir) as checkpoints:
        tree = checkpoints.latest.item_metadata(step)["state"]
        shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), tree)
        return checkpoints._restore(checkpoints.latest, step, tree, shardings, None)[0]


def test_async_run_equals_sync_run_checkpoint_by_checkpoint(async_run, tmp_path):
    """Same metrics, test numbers and every kept checkpoint (each saved, then donated by the next step)."""
    async_dir, async_results = async_run
    sync_results = train.train_and_evaluate(_async_cfg(training__async_checkpoints="false"), tmp_path)
    assert async_results["test"] == sync_results["test"]
    assert async_results["best_step"] == sync_results["best_step"]
    assert helpers.metrics_lines(async_dir) == helpers.metrics_lines(tmp_path)
    for step in (18, 19, 20):
        helpers.assert_trees_close(_state_at(async_dir, step), _state_at(tmp_path, step), rtol=0, atol=0)
    helpers.assert_trees_close(
        helpers.saved_params(async_dir, "best")[0], helpers.saved_params(tmp_path, "best")[0], rtol=0, atol=0
    )
    assert not _unfinished(async_dir / "checkpoints") and not _unfinished(async_dir / "best")


def test_async_save_holds_the_values_of_its_step_although_the_step_donates_them(tmp_path):
    """The arrays are on the host when save returns: overwriting the donated buffers leaves the checkpoint intact."""
    update = jax.jit(lambda tree: jax.tree.map(lambda x: x * 2.0 + 1.0, tree), donate_argnums=0)
    tree, shardings = _one_device_tree({"w": jnp.ones((1024, 1024)), "b": jnp.arange(8.0)})
    tree = update(tree)  # Buffers the step computed, as in training.
    expected = jax.tree.map(np.array, tree)
    with Checkpoints(tmp_path, async_save=True) as checkpoints:
        checkpoints.save_latest(1, tree, _Iterator(1), {"step": 1})
        for _ in range(3):
            tree = update(tree)
        jax.block_until_ready(tree)
        restored, meta = checkpoints.restore_latest(expected, shardings, _Iterator())
    assert meta == {"step": 1, "checksum": state_checksum(expected, _Iterator(1).get_state())}
    helpers.assert_trees_close(restored, expected, rtol=0, atol=0)


def test_a_save_killed_before_its_commit_is_never_restored(tmp_path, monkeypatch):
    """Every file of step 2 written, its commit (the rename) never done: restores pick step 1; the writer cleans up."""
    tree, shardings = _one_device_tree({"w": jnp.arange(6.0)})
    reached_commit, release = threading.Event(), threading.Event()

    async def killed_before_commit(self, *args, **kwargs):
        reached_commit.set()
        release.wait(60)
        raise RuntimeError("simulated kill before the commit")

    writer = Checkpoints(tmp_path, async_save=True, remove_unfinished=True)
    writer.save_latest(1, tree, _Iterator(1), {"step": 1})
    writer.wait_until_finished()
    monkeypatch.setattr(ocp.path.atomicity.AtomicRenameTemporaryPath, "finalize", killed_before_commit)
    start = time.time()
    writer.save_latest(2, jax.tree.map(lambda x: x + 1, tree), _Iterator(2), {"step": 2})
    assert time.time() - start < 30 and reached_commit.wait(30)  # save returned; the writing thread is at its commit.
    directory = tmp_path / "checkpoints"
    assert _unfinished(directory) and (directory / "1").is_dir() and not (directory / "2").exists()

    # Another process looking now (as after a kill -9 at this moment) sees step 1 only.
    iterator = _Iterator()
    with Checkpoints(tmp_path) as reader:
        restored, meta = reader.restore_latest(tree, shardings, iterator)
    assert meta["step"] == 1 and iterator.position == 1
    helpers.assert_trees_close(restored, tree, rtol=0, atol=0)

    release.set()
    with pytest.raises(RuntimeError, match="simulated kill"):
        writer.close()
    monkeypatch.undo()
    assert _unfinished(directory)  # What a killed save leaves behind...
    with Checkpoints(tmp_path, async_save=True, remove_unfinished=True) as resumed:
        assert resumed.restore_latest(tree, shardings, _Iterator())[1]["step"] == 1
        resumed.save_latest(3, tree, _Iterator(3), {"step": 3})
    assert not _unfinished(directory)  # ...the next writer deletes.
    assert sorted(p.name for p in directory.iterdir()) == ["1", "3"]


def test_kill_9_at_a_random_moment_then_resume_equals_the_uninterrupted_run(async_run, tmp_path):
    """SIGKILL (no handler runs) a `jaxdl-train` with async saves, preferably mid-save; the resumed run is exact."""
    full_dir, full = async_run
    workdir = tmp_path / "run"
    args = helpers.cli_args(training__async_checkpoints="true", **EVERY_STEP)
    process = subprocess.Popen(
        [sys.executable, "-m", "jaxdl.main", f"--workdir={workdir}", *args],
        cwd=helpers.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seed = random.randrange(10**6)
    delay = random.Random(seed).uniform(0.0, 1.5)
    try:
        deadline = time.time() + 240
        while not (workdir / "checkpoints" / "1").is_dir() and process.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(delay)
        # Prefer the worst moment: a save in flight (its directory not yet committed).
        wait_for_save = time.time() + 0.5
        while time.time() < wait_for_save and not _unfinished(workdir / "checkpoints"):
            time.sleep(0.002)
        mid_save = bool(_unfinished(workdir / "checkpoints"))
        process.send_signal(signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGKILL, f"the run ended before the kill (seed {seed}): {stderr[-2000:]}"
    assert not (workdir / "results.json").exists()

    resumed = train.train_and_evaluate(_async_cfg(), workdir)
    context = f"killed {delay:.2f} s after the first checkpoint (seed {seed}), mid-save: {mid_save}"
    assert resumed["test"] == full["test"], context
    assert helpers.metrics_lines(workdir) == helpers.metrics_lines(full_dir), context
    helpers.assert_trees_close(helpers.saved_params(full_dir)[0], helpers.saved_params(workdir)[0], rtol=0, atol=0)
    assert not _unfinished(workdir / "checkpoints")
