"""The EMA of the params (config.ema.decay): closed form, gradient accumulation, evaluation, checkpoints, resume."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdl import checkpoint, optim, steps, tasks
from jaxdl.errors import ConfigError
from jaxdl.state import TrainState

from . import helpers


def _state(decay: float, tx=None, params=1.0) -> TrainState:
    return TrainState.create(
        apply_fn=None, params={"w": jnp.float32(params)}, tx=tx or optax.sgd(1.0), ema_decay=decay, batch_stats={}
    )


def test_ema_equals_the_hand_computed_three_updates():
    # sgd(lr 1) from w = 1 with gradients 1, 2, 3: w = 0, -2, -5. With d = 0.5:
    # e1 = .5 * 1 + .5 * 0 = .5; e2 = .25 - 1 = -.75; e3 = -.375 - 2.5 = -2.875.
    state = _state(0.5)
    got = []
    for g in (1.0, 2.0, 3.0):
        state = state.apply_gradients(grads={"w": jnp.float32(g)})
        got.append(float(state.ema_params["w"]))
    assert got == [0.5, -0.75, -2.875]
    assert float(state.params["w"]) == -5.0


def test_ema_moves_once_per_update_under_gradient_accumulation():
    # The optimizer the config builds: sgd(lr 1) accumulated over 2 batches (optax.MultiSteps).
    cfg = helpers.config(
        optimizer__name="sgd",
        optimizer__learning_rate=1.0,
        optimizer__grad_accum_steps=2,
        schedule__name="constant",
        schedule__warmup_steps=0,
    )
    tx, _ = optim.build_optimizer(cfg, 10)
    state = _state(0.5, tx)
    emas = []
    for g in (1.0, 1.0, 3.0, 3.0):  # Updates with the means 1 and 3: w = 0, then -3.
        state = jax.jit(lambda s, g: s.apply_gradients(grads={"w": g}))(state, jnp.float32(g))
        emas.append(float(state.ema_params["w"]))
    # Unchanged after the first micro-batch of each update; e1 = .5 * 1 + .5 * 0, e2 = .25 - 1.5.
    assert emas == [1.0, 0.5, 0.5, -1.25]
    assert float(state.params["w"]) == -3.0


def test_off_means_no_ema_in_the_state_or_the_checkpoint():
    state = _state(0.0)
    assert state.ema_params is None and "ema_params" not in state.checkpoint_tree()
    on = _state(0.9)
    assert "ema_params" in on.checkpoint_tree()
    restored = on.from_checkpoint_tree({**on.checkpoint_tree(), "ema_params": {"w": jnp.float32(7)}})
    assert float(restored.ema_params["w"]) == 7.0


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_decay_outside_0_1_is_a_config_error(decay):
    with pytest.raises(ConfigError, match=r"config\.ema\.decay"):
        _state(decay)


class _Linear(nn.Module):
    """A model with the `train` argument the steps pass."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(3)(x)


def test_evaluation_uses_the_ema_params():
    task = tasks.build_task(helpers.config(task__num_classes=3))
    model = _Linear()
    x = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32)
    batch = {"input": x, "target": np.arange(8) % 3, "mask": np.ones(8, np.float32)}
    raw, ema = (model.init(jax.random.key(i), x)["params"] for i in (1, 2))
    eval_step = steps.make_eval_step(task)
    state = TrainState.create(apply_fn=model.apply, params=raw, tx=optax.sgd(1.0), ema_decay=0.5, batch_stats={})
    with_ema = eval_step(state.replace(ema_params=ema), batch)
    plain = TrainState.create(apply_fn=model.apply, params=ema, tx=optax.sgd(1.0), batch_stats={})
    without = TrainState.create(apply_fn=model.apply, params=raw, tx=optax.sgd(1.0), batch_stats={})
    helpers.assert_trees_close(with_ema, eval_step(plain, batch), rtol=0, atol=0)
    assert not np.allclose(with_ema["loss"], eval_step(without, batch)["loss"])


EMA_RUN = dict(ema__decay=0.8)


def test_ema_is_checkpointed_and_a_resume_equals_the_full_run(tmp_path_factory, tmp_path):
    cfg = helpers.tiny_cnn(**EMA_RUN)
    full_dir, full = helpers.shared_run(tmp_path_factory, "ema", cfg)
    with checkpoint.Checkpoints(full_dir) as checkpoints:
        tree, _, _ = checkpoints.restore_any(kinds=("latest",))
    # The checkpoint holds both; jaxdl-eval/predict's variables are the EMA ones.
    variables, _ = checkpoint.restore_variables(full_dir, kinds=("latest",))
    helpers.assert_trees_close(variables["params"], tree["ema_params"], rtol=0, atol=0)
    raw, ema = (jax.tree.leaves(tree[key]) for key in ("params", "ema_params"))
    assert not all(np.allclose(a, b) for a, b in zip(raw, ema, strict=True))
    # assert_resume_equals also compares the saved (EMA) params bit for bit.
    helpers.assert_resume_equals(cfg, full_dir, full, tmp_path, step=3)
