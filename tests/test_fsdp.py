"""The ("data", "fsdp") mesh: sharding rules, FSDP = data parallel numbers, cross-mesh restores, bad meshes."""

import json
import shutil

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxdl import experiment, parallel, train
from jaxdl.errors import ConfigError
from tests import helpers

# The tiny CNN's tensors are all small: shard every one whose shape allows it.
FSDP8 = dict(parallel__num_devices=8, mesh__fsdp=8, mesh__fsdp_min_size=0)
DATA2_FSDP4 = dict(parallel__num_devices=8, mesh__data=2, mesh__fsdp=4, mesh__fsdp_min_size=0)
DATA8 = dict(parallel__num_devices=8)
# Different meshes reduce in different orders: equal within float32 rounding.
TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "shape, fsdp, min_size, spec",
    [
        ((1024, 4096), 8, 0, P(None, "fsdp")),  # The largest dimension.
        ((4096, 1024), 8, 0, P("fsdp")),
        ((3, 3, 16, 32), 8, 0, P(None, None, None, "fsdp")),  # A conv kernel: its output features.
        ((768, 768), 8, 0, P(None, "fsdp")),  # A tie: the last.
        ((30, 12), 4, 0, P(None, "fsdp")),  # The largest that divides, not the largest.
        ((10,), 4, 0, P()),  # Nothing divides: replicated.
        ((), 8, 0, P()),  # The step.
        ((64, 64), 8, 4097, P()),  # Under the threshold: replicated.
        ((64, 64), 8, 4096, P(None, "fsdp")),  # At it: sharded.
        ((1024, 4096), 1, 0, P()),  # No fsdp axis.
    ],
)
def test_fsdp_spec_rules(shape, fsdp, min_size, spec):
    assert parallel.fsdp_spec(shape, fsdp, min_size) == spec


def test_mesh_axes_and_layout():
    mesh = parallel.make_mesh(data=0, fsdp=4)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
    # Data-major in device order: each row (one data index) is a contiguous run of devices.
    assert [d.id for d in mesh.devices.flat] == [d.id for d in jax.devices()]
    strategy = parallel.make_strategy("jit", mesh)
    batch = strategy.place_batch({"input": np.arange(16.0).reshape(16, 1)})["input"]
    assert batch.sharding.spec == P(("data", "fsdp"))
    # Device k of the flattened mesh holds examples 2k, 2k+1: the batch splits over both axes.
    for shard in batch.addressable_shards:
        k = list(mesh.devices.flat).index(shard.device)
        np.testing.assert_array_equal(np.asarray(shard.data).ravel(), [2 * k, 2 * k + 1])
    assert dict(parallel.make_mesh(2).shape) == {"data": 2, "fsdp": 1}  # parallel.num_devices alone: data parallel.


@pytest.fixture(scope="module")
def data8_run(tmp_path_factory):
    return helpers.shared_run(tmp_path_factory, "digits_tiny_cnn_data8", helpers.tiny_cnn(**DATA8))


@pytest.fixture(scope="module")
def fsdp8_run(tmp_path_factory):
    return helpers.shared_run(tmp_path_factory, "digits_tiny_cnn_fsdp8", helpers.tiny_cnn(**FSDP8))


def _close(key: str, actual, expected, where: str) -> None:
    # An accuracy may flip on a near-tied logit: allow one example of a 16-example batch.
    tol = dict(rtol=0, atol=1 / 16 + 1e-9) if "accuracy" in key else TOL
    np.testing.assert_allclose(actual, expected, **tol, err_msg=f"{where} {key}")


def _assert_runs_close(dir_a, results_a, dir_b, results_b):
    for key, value in results_a["test"].items():
        _close(key, results_b["test"][key], value, "test")
    lines_a, lines_b = helpers.metrics_lines(dir_a), helpers.metrics_lines(dir_b)
    assert [line["step"] for line in lines_a] == [line["step"] for line in lines_b]
    for line_a, line_b in zip(lines_a, lines_b, strict=True):
        assert line_a.keys() == line_b.keys()
        for key in line_a.keys() - {"step"}:
            _close(key, line_b[key], line_a[key], f"step {line_a['step']}")
    helpers.assert_trees_close(helpers.saved_params(dir_a)[0], helpers.saved_params(dir_b)[0], **TOL)


def test_fsdp8_equals_data_parallel(data8_run, fsdp8_run):
    _assert_runs_close(*data8_run, *fsdp8_run)


def test_state_is_sharded_and_stays_so_through_a_step():
    run = experiment.Experiment(helpers.tiny_cnn(**DATA2_FSDP4))
    rng = jax.random.key(0)
    state = run.fresh_state(rng)
    # Initialised in its shards, to the numbers of the unsharded init.
    helpers.assert_trees_close(state.params, run.init_fn()(rng).params, rtol=0, atol=0)
    params = jax.tree_util.tree_leaves_with_path(state.params)
    assert any(leaf.sharding.spec != P() for _, leaf in params)
    for path, leaf in params:
        spec = parallel.fsdp_spec(leaf.shape, 4, 0)
        assert leaf.sharding.spec == spec, path
        if spec != P():
            # A device holds 1/4 of the sharded dimension: a quarter of the array.
            shard = leaf.addressable_shards[0].data
            axis = len(spec) - 1
            assert shard.shape[axis] * 4 == leaf.shape[axis] and shard.size * 4 == leaf.size, path
    # The optimizer state (the momentum trace: the params' shapes) follows the same rule; the step is replicated.
    moments = jax.tree.leaves(state.opt_state)
    assert sum(leaf.sharding.spec != P() for leaf in moments) == sum(leaf.sharding.spec != P() for _, leaf in params)
    assert all(leaf.sharding.spec == parallel.fsdp_spec(leaf.shape, 4, 0) for leaf in moments)
    assert state.step.sharding.spec == P()
    shardings = jax.tree.map(lambda x: x.sharding, state)
    batch = run.strategy.place_batch(next(iter(run.eval_batches(run.config.dataset.train_split))))
    new_state, metrics = run.train_step(state, {k: v for k, v in batch.items() if k != "mask"}, rng)
    assert jax.tree.map(lambda x: x.sharding, new_state) == shardings
    # Donated and reused: an unusable donation (mismatched shardings) would leave the inputs alive.
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(state))
    assert metrics["loss"].sharding.is_fully_replicated


def _resume_across(cfg_before, cfg_after, workdir, crash_step=7):
    """Trains `cfg_before` to a crash after its step-5 checkpoint, then resumes it under `cfg_after`."""
    with pytest.raises(helpers.Crash):
        train.train_and_evaluate(cfg_before, workdir, hooks=[helpers.crash_at(crash_step)])
    return train.train_and_evaluate(cfg_after, workdir)


def test_fsdp8_checkpoint_resumes_on_one_device(fsdp8_run, tmp_path):
    resumed = _resume_across(helpers.tiny_cnn(**FSDP8), helpers.tiny_cnn(), tmp_path)
    assert resumed["num_devices"] == 1
    _assert_runs_close(*fsdp8_run, tmp_path, resumed)


def test_fsdp_workdir_evaluates_where_its_mesh_cannot_be_formed(fsdp8_run, tmp_path):
    """jaxdl-eval of an fsdp=8 run on a machine of 1 device: data parallel there, the same metrics."""
    workdir = tmp_path / "copy"
    shutil.copytree(fsdp8_run[0], workdir)
    saved = json.loads((workdir / "config.json").read_text())
    saved["parallel"]["num_devices"] = 1  # As if this machine had one device.
    (workdir / "config.json").write_text(json.dumps(saved))
    metrics = train.evaluate_workdir(workdir)
    for key, value in fsdp8_run[1]["test"].items():
        _close(key, metrics[key], value, "evaluated on 1 device")


def test_data8_checkpoint_resumes_under_data2_fsdp4(data8_run, tmp_path):
    # Also data=2 x fsdp=4 = data parallel: steps 6 to 10, their evaluations and the test run under it.
    resumed = _resume_across(helpers.tiny_cnn(**DATA8), helpers.tiny_cnn(**DATA2_FSDP4), tmp_path)
    assert resumed["num_devices"] == 8
    _assert_runs_close(*data8_run, tmp_path, resumed)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            dict(parallel__num_devices=8, mesh__data=2, mesh__fsdp=3),
            "config.mesh: data=2 x fsdp=3 = 6 devices, but the run has 8 (config.parallel.num_devices=8)",
        ),
        (dict(parallel__num_devices=8, mesh__fsdp=3), "config.mesh.fsdp=3 does not divide the 8 devices of the run"),
        (dict(mesh__fsdp=-1), "config.mesh.fsdp=-1 is not valid; it must be >= 1"),
        (dict(mesh__data=-2), "config.mesh.data=-2 is not valid; it must be >= 0"),
        (dict(mesh__fsdp_min_size=-1), "config.mesh.fsdp_min_size=-1 is not valid; it must be >= 0"),
        (
            dict(parallel__num_devices=8, parallel__strategy="pmap", mesh__fsdp=8),
            "config.mesh.fsdp=8 needs config.parallel.strategy='jit'",
        ),
        (
            dict(parallel__num_devices=8, mesh__fsdp=4, training__batch_size=12),
            "config.training.batch_size=12 is not divisible by the 8 devices",
        ),
    ],
)
def test_bad_mesh_is_a_one_line_config_error(overrides, message):
    with pytest.raises(ConfigError) as error:
        experiment.Experiment(helpers.tiny_cnn(**overrides))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_fsdp_size_dividing_no_parameter_stops_before_compiling(tmp_path):
    # The tiny CNN's dimensions are 1, 3, 4, 8, 10, 16, 32: 7 divides none.
    cfg = helpers.tiny_cnn(parallel__num_devices=7, mesh__fsdp=7, training__batch_size=14)
    with pytest.raises(ConfigError, match=r"^config\.mesh\.fsdp=7 divides no parameter dimension of cnn; "):
        train.train_and_evaluate(cfg, tmp_path)
    assert not list(tmp_path.glob("checkpoints/*")) and not list(tmp_path.glob("best/*"))
