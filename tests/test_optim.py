"""Tests for jaxdl.optim: weight-decay masks, schedules, clipping and accumulation."""

import math

import jax
import numpy as np
import optax
import pytest

from jaxdl import optim
from jaxdl.models import create_model
from tests import helpers


def _cnn_params(use_batch_norm=False):
    """Params of a small CNN initialised on one 8x8 image."""
    model = create_model("cnn", num_outputs=10, features=(4, 8), dense_features=16, use_batch_norm=use_batch_norm)
    variables = model.init(jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32))
    # Random biases and BN params, so "unchanged" cannot pass just because they are 0 or 1.
    leaves, tree = jax.tree.flatten(variables["params"])
    rng = np.random.default_rng(0)
    leaves = [np.asarray(x) if x.ndim > 1 else rng.normal(size=x.shape).astype(np.float32) for x in leaves]
    return jax.tree.unflatten(tree, leaves)


def _config(**overrides):
    base = dict(schedule__name="constant", schedule__warmup_steps=0)
    base.update(overrides)
    return helpers.config("digits_cnn", **base)


def _flat(tree):
    """{'conv_0/kernel': array, ...}"""
    return {"/".join(k.key for k in path): np.asarray(v) for path, v in jax.tree_util.tree_leaves_with_path(tree)}


def _step(tx, params, grads, state=None):
    state = tx.init(params) if state is None else state
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


# --------------------------------------------------------------------------
# Weight-decay mask and weight decay
# --------------------------------------------------------------------------


@pytest.mark.parametrize("use_batch_norm", [False, True])
def test_decay_mask_selects_kernels(use_batch_norm):
    """Kernels take decay; biases and BatchNorm scale/bias do not."""
    mask = _flat(optim.decay_mask(_cnn_params(use_batch_norm)))
    expected = {}
    for layer in ("conv_0", "conv_1", "dense", "head"):
        expected[f"{layer}/kernel"] = True
        expected[f"{layer}/bias"] = False
    if use_batch_norm:
        for layer in ("bn_0", "bn_1"):
            expected[f"{layer}/scale"] = False
            expected[f"{layer}/bias"] = False
    assert {k: bool(v) for k, v in mask.items()} == expected


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "adamw"])
def test_weight_decay_with_zero_gradient(name):
    """One update on zero gradients shrinks kernels by the closed form; other params stay put."""
    lr, wd = 0.01, 0.1
    config = _config(optimizer__name=name, optimizer__learning_rate=lr, optimizer__weight_decay=wd)
    tx, _ = optim.build_optimizer(config, num_updates=100)
    params = _cnn_params(use_batch_norm=True)
    new, _ = _step(tx, params, jax.tree.map(np.zeros_like, params))
    old, new = _flat(params), _flat(new)
    for key, value in old.items():
        if not key.endswith("kernel"):
            np.testing.assert_array_equal(new[key], value, err_msg=key)
            continue
        if name == "adam":
            # Coupled L2: Adam sees g = wd * w, and its first step is lr * g / (|g| + eps).
            g = wd * value.astype(np.float64)
            expected = value - lr * g / (np.abs(g) + config.optimizer.eps)
        else:
            # SGD, momentum's first step and AdamW's decoupled decay: w - lr * wd * w.
            expected = value - lr * wd * value.astype(np.float64)
        # Adam's float32 bias corrections round to ~1e-5 of its step: allow 1e-4 of lr.
        np.testing.assert_allclose(new[key], expected, rtol=1e-5, atol=1e-4 * lr, err_msg=key)
        assert np.linalg.norm(new[key]) < np.linalg.norm(value)


def test_no_weight_decay_leaves_params_unchanged():
    """Without weight decay, zero gradients change nothing."""
    tx, _ = optim.build_optimizer(_config(optimizer__name="sgd", optimizer__learning_rate=0.1), num_updates=10)
    params = _cnn_params()
    new, _ = _step(tx, params, jax.tree.map(np.zeros_like, params))
    helpers.assert_trees_close(new, params, rtol=0, atol=0)


# --------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------


def _schedule(num_updates, **overrides):
    return optim.build_schedule(_config(optimizer__learning_rate=0.4, **overrides), num_updates)


def test_constant_schedule():
    """Constant is the peak at every step."""
    schedule = _schedule(50)
    for t in (0, 1, 25, 49, 50, 200):
        assert float(schedule(t)) == pytest.approx(0.4)


def test_linear_warmup():
    """Warmup rises linearly from 0 to the peak, then the main schedule takes over."""
    schedule = _schedule(100, schedule__warmup_steps=10)
    for t in range(0, 11):
        assert float(schedule(t)) == pytest.approx(0.4 * t / 10, abs=1e-7)
    assert float(schedule(5)) == pytest.approx(0.2)
    assert float(schedule(60)) == pytest.approx(0.4)


@pytest.mark.parametrize("final_fraction", [0.0, 0.1])
def test_cosine_after_warmup(final_fraction):
    """Cosine from the peak to final_fraction * peak over the steps after warmup."""
    peak, warmup, total = 0.4, 10, 110
    schedule = _schedule(
        total, schedule__name="cosine", schedule__warmup_steps=warmup, schedule__final_fraction=final_fraction
    )
    decay = total - warmup
    for t in (10, 11, 35, 60, 85, 109, 110):
        s = t - warmup
        expected = final_fraction * peak + (1 - final_fraction) * peak * 0.5 * (1 + math.cos(math.pi * s / decay))
        assert float(schedule(t)) == pytest.approx(expected, rel=1e-5, abs=1e-7), t
    assert float(schedule(60)) == pytest.approx(peak * (1 + final_fraction) / 2, rel=1e-5)
    assert float(schedule(total)) == pytest.approx(final_fraction * peak, abs=1e-7)
    assert float(schedule(total + 50)) == pytest.approx(final_fraction * peak, abs=1e-7)


@pytest.mark.parametrize("warmup", [0, 10])
def test_step_decay(warmup):
    """Step decay: peak, x0.1 from 50% and x0.01 from 75% of the updates (warmup included)."""
    schedule = _schedule(200, schedule__name="step", schedule__warmup_steps=warmup)
    for t in range(warmup, 100):
        assert float(schedule(t)) == pytest.approx(0.4), t
    for t in range(100, 150):
        assert float(schedule(t)) == pytest.approx(0.04), t
    for t in (150, 151, 199, 300):
        assert float(schedule(t)) == pytest.approx(0.004), t


def test_unknown_schedule_and_optimizer():
    """Unknown names raise ValueError listing the choices."""
    with pytest.raises(ValueError, match="constant, cosine, step"):
        _schedule(10, schedule__name="linear")
    with pytest.raises(ValueError, match="sgd, momentum, adam, adamw"):
        optim.build_optimizer(_config(optimizer__name="lamb"), num_updates=10)


# --------------------------------------------------------------------------
# Gradient clipping and accumulation
# --------------------------------------------------------------------------


def _small_params():
    rng = np.random.default_rng(1)
    return {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=(4,)).astype(np.float32)}


def _random_grads(rng, scale=1.0):
    return {
        "w": (scale * rng.normal(size=(3, 4))).astype(np.float32),
        "b": (scale * rng.normal(size=(4,))).astype(np.float32),
    }


def _global_norm(tree):
    return math.sqrt(sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in jax.tree.leaves(tree)))


def test_grad_clip_norm_limits_the_step():
    """A huge gradient is rescaled to global norm 1; a small one passes unchanged."""
    config = _config(optimizer__name="sgd", optimizer__learning_rate=1.0, optimizer__grad_clip_norm=1.0)
    tx, _ = optim.build_optimizer(config, num_updates=10)
    params = _small_params()
    rng = np.random.default_rng(2)

    huge = _random_grads(rng, scale=1e6)
    new, _ = _step(tx, params, huge)
    delta = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - b, new, params)
    assert _global_norm(delta) == pytest.approx(1.0, rel=1e-5)
    norm = _global_norm(huge)
    for key in params:
        # Same direction as the gradient: delta = -g / |g|.
        np.testing.assert_allclose(delta[key], -huge[key] / norm, atol=1e-6)

    small = jax.tree.map(lambda g: g / _global_norm(huge) * 0.5, huge)  # Global norm 0.5.
    new, _ = _step(tx, params, small)
    for key in params:
        np.testing.assert_allclose(np.asarray(new[key]) - params[key], -small[key], atol=1e-6)


def test_grad_accumulation_applies_mean_every_third_update():
    """With grad_accum_steps=3 params move on every 3rd update, by one SGD step on the mean."""
    lr = 0.1
    config = _config(optimizer__name="sgd", optimizer__learning_rate=lr, optimizer__grad_accum_steps=3)
    tx, _ = optim.build_optimizer(config, num_updates=10)
    params = _small_params()
    state = tx.init(params)
    rng = np.random.default_rng(3)
    reference = {k: v.astype(np.float64) for k, v in params.items()}
    pending = []
    for update in range(1, 10):
        grads = _random_grads(rng)
        pending.append(grads)
        before = params
        params, state = _step(tx, params, grads, state)
        if update % 3:
            for key in params:
                np.testing.assert_array_equal(params[key], before[key], err_msg=f"update {update}")
        else:
            for key in reference:
                mean = np.mean([g[key].astype(np.float64) for g in pending], axis=0)
                reference[key] = reference[key] - lr * mean
                np.testing.assert_allclose(
                    params[key], reference[key], rtol=1e-5, atol=1e-6, err_msg=f"update {update}"
                )
            pending = []
