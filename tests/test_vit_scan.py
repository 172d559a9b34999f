"""Scanned ViT blocks and rematerialisation: layouts convert exactly, logits and gradients match, bad configs fail."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from jaxdl import convert, experiment, models, tasks, train
from jaxdl.errors import ConfigError
from jaxdl.models import vit
from jaxdl.models.layers import StochasticDepth
from tests import helpers
from tests.test_vision_configs import _one_step
from tests.test_vit import _torch_vit
from tests.torch_reference import compare_with_torch

SHAPE = (1, 32, 32, 3)


def _mini(**kwargs) -> nn.Module:
    return models.create_model("vit_mini", num_outputs=10, num_layers=3, **kwargs)


def _random_variables(model: nn.Module, seed: int = 0) -> dict:
    """Random values for every variable straight from numpy (no init to compile; the zero head would hide errors)."""
    rng = np.random.default_rng(seed)
    shapes = models.abstract_variables(model, SHAPE)
    return jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


def _images(batch: int = 2) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((batch, 32, 32, 3)).astype(np.float32)


def test_stack_and_unstack_are_exact_inverses_and_match_the_scanned_shapes():
    looped = _random_variables(_mini())
    stacked = vit.stack_layers(looped)
    assert "encoder_layer_0" not in stacked["params"]
    assert jax.tree.map(np.shape, stacked) == jax.tree.map(
        np.shape, models.abstract_variables(_mini(scan_layers=True), SHAPE)
    )
    layer_2 = looped["params"]["encoder_layer_2"]["mlp_0"]["kernel"]
    np.testing.assert_array_equal(stacked["params"]["encoder_layers"]["mlp_0"]["kernel"][2], layer_2)
    helpers.assert_trees_close(vit.unstack_layers(stacked), looped, rtol=0, atol=0)


def test_conversion_covers_an_optimizer_state_that_mirrors_the_params():
    """A checkpoint's Adam moments (namedtuples of param-shaped trees) convert with the params."""
    params = _random_variables(_mini())["params"]
    opt_state = optax.adam(1e-3).init(params)
    stacked = vit.stack_layers({"params": params, "opt_state": opt_state})
    assert type(stacked["opt_state"][0]) is type(opt_state[0])
    mu = stacked["opt_state"][0].mu
    assert mu["encoder_layers"]["ln_1"]["scale"].shape == (3, 32)
    helpers.assert_trees_close(vit.unstack_layers(stacked), {"params": params, "opt_state": opt_state}, rtol=0, atol=0)


def test_scanned_logits_equal_looped_after_converting_both_ways():
    looped_model, scanned_model = _mini(), _mini(scan_layers=True)
    x = _images()
    looped = _random_variables(looped_model)
    scanned = _random_variables(scanned_model, seed=3)

    @jax.jit
    def both(looped, scanned):
        return (
            looped_model.apply(looped, x),
            scanned_model.apply(vit.stack_layers(looped), x),
            scanned_model.apply(scanned, x),
            looped_model.apply(vit.unstack_layers(scanned), x),
        )

    a, b, c, d = both(looped, scanned)
    assert np.max(np.abs(a)) > 0.1  # Not a trivially small output.
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(d, c, rtol=1e-6, atol=1e-6)


def test_scanned_vit_matches_torchvision_after_import():
    """The torch tensors of each block are stacked on import: same logits as torchvision."""
    assert compare_with_torch(_torch_vit(), "vit_mini", 32, num_outputs=10, scan_layers=True) <= 1e-4


def test_scanned_import_is_the_stacked_looped_import_and_names_bad_tensors():
    state = _torch_vit().state_dict()
    looped = convert.from_torch("vit_mini", state, num_outputs=10)
    scanned = convert.from_torch("vit_mini", state, num_outputs=10, scan_layers=True)
    helpers.assert_trees_close(scanned, vit.stack_layers(looped), rtol=0, atol=0)
    del state["encoder.layers.encoder_layer_1.self_attention.in_proj_bias"]
    state["encoder.layers.encoder_layer_0.mlp.0.weight"] = np.zeros((7, 32), np.float32)
    with pytest.raises(convert.StateDictError) as info:
        convert.from_torch("vit_mini", state, num_outputs=10, scan_layers=True)
    message = str(info.value)
    assert "encoder.layers.encoder_layer_1.self_attention.in_proj_bias" in message
    assert "encoder.layers.encoder_layer_0.mlp.0.weight" in message


def _record_in_scanned_blocks(model: nn.Module, what) -> list:
    """Values `what(module, rate)` of every StochasticDepth call of a scanned training forward, read on the host."""
    seen = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, StochasticDepth):
            jax.debug.callback(lambda v: seen.append(np.asarray(v)), what(context.module, args[2]))
        return next_fun(*args, **kwargs)

    variables = _random_variables(model)
    with nn.intercept_methods(record):
        jax.block_until_ready(model.apply(variables, _images(), train=True, rngs={"dropout": jax.random.key(0)}))
    return seen


def test_scanned_stochastic_depth_rates_grow_with_depth_and_draws_differ_per_layer():
    model = _mini(scan_layers=True, stochastic_depth_rate=0.4)
    rates = _record_in_scanned_blocks(model, lambda module, rate: rate)
    # Two residual branches per block, at 0, 0.2 and 0.4 (as the looped model, see test_vit).
    assert sorted(float(r) for r in rates) == pytest.approx([0.0, 0.0, 0.2, 0.2, 0.4, 0.4])
    keys = _record_in_scanned_blocks(model, lambda module, rate: jax.random.key_data(module.make_rng("dropout")))
    # split_rngs: every layer (and branch) draws from its own key.
    assert len({k.tobytes() for k in keys}) == 6


def test_traced_stochastic_depth_rate():
    x = jnp.ones((1000, 3))
    layer = StochasticDepth(0.5)  # The field only switches it on; the traced rate decides.
    rngs = {"dropout": jax.random.key(0)}
    np.testing.assert_array_equal(layer.apply({}, x, True, jnp.float32(0.0), rngs=rngs), x)
    rows = np.asarray(layer.apply({}, x, True, jnp.float32(0.25), rngs=rngs))
    kept = rows[:, 0] != 0
    np.testing.assert_allclose(rows[kept], 1 / 0.75, rtol=1e-6)
    assert 0.70 < kept.mean() < 0.80
    grad = jax.grad(lambda x: layer.apply({}, x, True, jnp.float32(1.0), rngs=rngs).sum())(x)
    assert np.all(np.asarray(grad) == 0)  # Everything dropped, and no 0 / 0 in the gradient.


def _loss_and_grads(model: nn.Module, variables: dict) -> tuple:
    x, y = _images(4), jnp.arange(4) % 10

    def loss(params):
        logits = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(5)})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grad_fn = jax.value_and_grad(loss)
    jaxpr = str(jax.make_jaxpr(grad_fn)(variables["params"]))
    return jax.jit(grad_fn)(variables["params"]), jaxpr


# Each policy once per layout (every compile costs seconds).
@pytest.mark.parametrize(
    ("scan", "policies"),
    [(False, ("full", "dots_with_no_batch_dims_saveable")), (True, ("full", "dots_saveable"))],
    ids=["looped", "scanned"],
)
@pytest.mark.slow
def test_remat_policies_give_the_loss_and_gradients_of_none(scan, policies):
    options = dict(scan_layers=scan, dropout_rate=0.1, stochastic_depth_rate=0.3)
    variables = _random_variables(_mini(**options))
    (loss, grads), jaxpr = _loss_and_grads(_mini(**options), variables)
    assert "remat" not in jaxpr and "checkpoint" not in jaxpr
    for policy in policies:
        (remat_loss, remat_grads), remat_jaxpr = _loss_and_grads(_mini(remat=policy, **options), variables)
        assert "remat" in remat_jaxpr or "checkpoint" in remat_jaxpr, policy  # The blocks really are rematerialised.
        np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
        helpers.assert_trees_close(remat_grads, grads, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_convnext_remat_gives_the_same_gradients():
    plain = models.create_model("convnext_mini", num_outputs=10)
    variables = _random_variables(plain)
    (loss, grads), _ = _loss_and_grads(plain, variables)
    (remat_loss, remat_grads), jaxpr = _loss_and_grads(
        models.create_model("convnext_mini", num_outputs=10, remat="full"), variables
    )
    assert "remat" in jaxpr or "checkpoint" in jaxpr
    np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
    helpers.assert_trees_close(remat_grads, grads, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(remat="sometimes"), r"^config\.remat='sometimes' is not valid; choose one of: none, full"),
        (dict(remat="full", model__name="cnn"), r"^config\.remat='full' is not valid for model 'cnn'"),
        (dict(model__kwargs="{'remat': 'full'}"), r"^config\.model\.kwargs\.remat is set from config\.remat"),
    ],
)
def test_bad_remat_is_a_one_line_config_error(overrides, message):
    cfg = helpers.config("cifar10_vit_s_16", **overrides)
    with pytest.raises(ConfigError, match=message) as info:
        experiment.build_model(cfg, tasks.build_task(cfg))
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_scanned_rematerialised_vit_trains_through_the_trainer(tmp_path):
    cfg, _ = _one_step("cifar10_vit_s_16")
    cfg.model.kwargs.scan_layers = True
    cfg.remat = "dots_saveable"
    cfg.training.num_steps = 2
    with tfds.testing.mock_data(num_examples=8):
        results = train.train_and_evaluate(cfg, tmp_path)
    assert results["final_step"] == 2 and np.isfinite(results["test"]["loss"])
    params, _ = helpers.saved_params(tmp_path)
    assert params["encoder_layers"]["mlp_0"]["kernel"].shape[0] == cfg.model.kwargs.get("num_layers", 2)


def test_compile_experiment_shows_remat_saving_activation_memory():
    """experiments/vit_compile.py at toy size: a scanned stack with full remat keeps fewer temporaries."""
    compile_experiment = helpers.load_experiment("vit_compile")
    plain = compile_experiment.measure("vit_mini", 8, 32, scan=True, remat="none")
    rematerialised = compile_experiment.measure("vit_mini", 8, 32, scan=True, remat="full")
    assert 0 < rematerialised["temp"] < 0.75 * plain["temp"]
