"""Fast init: parameters drawn with an rbg key derived from the seed, deterministic and independent of the mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import experiment, train
from tests import helpers


def _init_params(cfg, key):
    run = train.Experiment(cfg)
    return run, run.init_fn()(key)


@pytest.mark.slow
def test_init_draws_from_an_rbg_key_made_of_the_seeds_key_and_threefry_stays_available():
    key = jax.random.split(jax.random.key(0))[0]  # The trainer's init key for seed 0.
    run, state = _init_params(helpers.tiny_cnn(), key)
    sample = jnp.asarray(run.sample_input)
    # The documented derivation, written out: 4 words of threefry bits become the rbg key.
    rbg = jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")
    assert jax.random.key_impl(rbg) == jax.random.key_impl(experiment.init_key(key))
    expected = run.model.init(rbg, sample, train=False)
    helpers.assert_trees_close(state.params, expected["params"], rtol=0, atol=0)
    helpers.assert_trees_close(state.batch_stats, expected["batch_stats"], rtol=0, atol=0)
    # fast_init=False keeps the numbers of runs made before fast init.
    _, before = _init_params(helpers.tiny_cnn(fast_init=False), key)
    helpers.assert_trees_close(before.params, run.model.init(key, sample, train=False)["params"], rtol=0, atol=0)
    assert not np.array_equal(before.params["conv_0"]["kernel"], state.params["conv_0"]["kernel"])
    # The compiled init really draws with XLA's RngBitGenerator.
    lowered = jax.jit(run.init_fn()).lower(key).as_text()
    assert "rng_bit_generator" in lowered


def test_fast_init_is_deterministic_and_the_same_on_one_and_eight_devices():
    key = jax.random.key(7)
    _, one = _init_params(helpers.tiny_cnn(), key)
    _, again = _init_params(helpers.tiny_cnn(), key)
    eight_run = train.Experiment(helpers.tiny_cnn(parallel__num_devices=8))
    eight = eight_run.fresh_state(key)  # Initialised, then placed on the 8-device mesh.
    assert len(eight_run.mesh.devices.flat) == 8
    helpers.assert_trees_close(one.params, again.params, rtol=0, atol=0)
    helpers.assert_trees_close(one.params, jax.device_get(eight.params), rtol=0, atol=0)
    _, other = _init_params(helpers.tiny_cnn(), jax.random.key(8))
    assert not np.array_equal(one.params["conv_0"]["kernel"], other.params["conv_0"]["kernel"])


@pytest.mark.slow
def test_looped_vit_is_initialised_through_its_scanned_twin():
    """Fast init of a looped ViT: the scanned twin's init, unstacked; layers differ; threefry init unchanged."""
    from jaxdl import models
    from jaxdl.models import vit

    key = jax.random.key(3)
    looped = models.create_model("vit_mini", num_outputs=10)
    sample = jnp.zeros((1, 32, 32, 3))
    params = experiment._init_variables(looped, True, key, sample)["params"]
    twin = looped.clone(scan_layers=True)
    scanned = jax.jit(lambda k: twin.init(experiment.init_key(k), sample, train=False))(key)  # Jitted as the init.
    helpers.assert_trees_close(params, vit.unstack_layers(scanned)["params"], rtol=0, atol=0)
    kernels = [np.asarray(params[f"encoder_layer_{i}"]["mlp_0"]["kernel"]) for i in range(2)]
    assert not np.array_equal(*kernels)  # Each layer its own draw.
    # Without fast init, the looped model's own init as before.
    plain = experiment._init_variables(looped, False, key, sample)["params"]
    reference = jax.jit(lambda k: looped.init(k, sample, train=False))(key)
    helpers.assert_trees_close(plain, reference["params"], rtol=0, atol=0)
