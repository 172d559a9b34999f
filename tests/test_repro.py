"""jaxdl-repro: checkpoint checksums, a digits run that reproduces, a perturbed one that names its leaf."""

import shutil

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxdl import checkpoint, configuration, repro
from tests import helpers


def test_state_checksum_sees_every_leaf_and_the_iterator_state():
    def tree(bias):
        return {"params": {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.asarray(bias, jnp.float32)}, "step": 4}

    checksum = checkpoint.state_checksum(tree([0.0, 0.0]), b'{"pos": 4}')
    assert checksum == checkpoint.state_checksum(tree(np.zeros(2)), b'{"pos": 4}')  # New arrays, same values.
    tiniest = float(np.nextafter(np.float32(0), np.float32(1)))
    nudged = checkpoint.state_checksum(tree([0.0, tiniest]), b'{"pos": 4}')
    assert nudged["state"] != checksum["state"] and nudged["data"] == checksum["data"]
    moved = checkpoint.state_checksum(tree([0.0, 0.0]), b'{"pos": 5}')
    assert moved["state"] == checksum["state"] and moved["data"] != checksum["data"]


def test_a_run_without_two_checkpoints_is_one_line(tmp_path, capsys):
    configuration.save_config(helpers.tiny_cnn(), tmp_path / "config.json")
    assert repro.repro_cli(["--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "keeps 0 checkpoint(s)" in err and "training.keep_checkpoints=2" in err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A digits run checkpointed at steps 3, 6 and 9, all kept."""
    from jaxdl import train

    workdir = tmp_path_factory.mktemp("repro") / "run"
    cfg = helpers.tiny_cnn(
        training__num_steps=9,
        training__checkpoint_every_steps=3,
        training__eval_every_steps=3,
        training__keep_checkpoints=3,
    )
    train.train_and_evaluate(cfg, workdir)
    return workdir


@pytest.mark.slow
def test_a_digits_run_reproduces(run_dir, capsys, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")  # jaxdl-repro adds the GPU flag; keep this process's as they were.
    with checkpoint.Checkpoints(run_dir) as saved:
        assert saved.steps() == [3, 6, 9]
        assert set(saved.meta(6)["checksum"]) == {"state", "data"}
    assert repro.repro_cli(["--workdir", str(run_dir)]) == 0
    assert "reproduced: steps 3 -> 6 give the run's state bit for bit" in capsys.readouterr().out
    assert repro.repro_cli(["--workdir", str(run_dir), "--steps", "3"]) == 0
    assert "reproduced: steps 0 -> 3" in capsys.readouterr().out
    assert repro.repro_cli(["--workdir", str(run_dir), "--steps", "4"]) == 2
    assert "holds no checkpoint at step 4 (kept: 3, 6, 9)" in capsys.readouterr().err


@pytest.mark.slow
def test_a_perturbed_checkpoint_names_its_leaf(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")
    workdir = tmp_path / "run"
    shutil.copytree(run_dir, workdir)
    # One saved value changed on disk: step 3's running mean of the first BatchNorm. Training
    # normalises with batch statistics, so by step 6 this leaf alone differs.
    state_dir = workdir / "checkpoints" / "3" / "state"
    with ocp.StandardCheckpointer() as checkpointer:
        state = checkpointer.restore(state_dir)
        state["batch_stats"]["bn_0"]["mean"] = np.asarray(state["batch_stats"]["bn_0"]["mean"]) + 1.0
        checkpointer.save(tmp_path / "state", state)
    shutil.rmtree(state_dir)
    shutil.move(tmp_path / "state", state_dir)
    assert repro.repro_cli(["--workdir", str(workdir)]) == 1
    out = capsys.readouterr().out
    assert "NOT reproduced: 1 of" in out and "state leaves differ at step 6" in out
    assert "batch_stats/bn_0/mean: max |difference|" in out
