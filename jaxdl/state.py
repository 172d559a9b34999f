"""The training state: params, BatchNorm statistics, optimizer state, step, and an optional EMA of the params.

The EMA (config.ema.decay > 0) follows timm's ModelEmaV2, which the DeiT and
ConvNeXt recipes train with: it starts as a copy of the initial params and
after every optimizer update becomes `decay * ema + (1 - decay) * params`,
with no warm-up or debiasing (TF's ExponentialMovingAverage would use
min(decay, (1 + n) / (10 + n)); the papers' numbers come from timm's form).
Only params are averaged: BatchNorm statistics stay the live ones (timm's
ModelEmaV2 also averages buffers; the shipped EMA recipes have no BatchNorm).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from jaxdl.errors import check_fraction


def _copy(tree):
    # A buffer of its own: the train step donates the state, and one buffer may not be donated twice.
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def _is_update(opt_state) -> jax.Array | bool:
    """Whether the optimizer step that produced `opt_state` changed the params.

    Under optax.MultiSteps (gradient accumulation) only every k-th call is a
    real update; its counter of micro-batches is back at 0 right after one.
    """
    for state in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, optax.MultiStepsState)):
        if isinstance(state, optax.MultiStepsState):
            return state.mini_step == 0
    return True


class TrainState(train_state.TrainState):
    """flax's TrainState plus the BatchNorm statistics (empty dict without BatchNorm) and the EMA params."""

    batch_stats: Any = None
    ema_params: Any = None  # None when the EMA is off (ema_decay == 0).
    ema_decay: float = struct.field(pytree_node=False, default=0.0)

    @classmethod
    def create(cls, *, apply_fn, params, tx, ema_decay: float = 0.0, **kwargs) -> TrainState:
        """A fresh state; with `ema_decay` > 0 (config.ema.decay, in [0, 1)) the EMA starts as a copy of `params`."""
        check_fraction("ema.decay", ema_decay)
        ema = _copy(params) if ema_decay > 0 else None
        return super().create(apply_fn=apply_fn, params=params, tx=tx, ema_params=ema, ema_decay=ema_decay, **kwargs)

    def apply_gradients(self, *, grads, **kwargs) -> TrainState:
        """One optimizer step; then the EMA moves toward the new params (only on real updates)."""
        state = super().apply_gradients(grads=grads, **kwargs)
        if state.ema_params is None:
            return state
        update = _is_update(state.opt_state)
        d = state.ema_decay

        def average(ema, new):
            return jnp.where(update, d * ema + (1 - d) * new, ema).astype(ema.dtype)

        return state.replace(ema_params=jax.tree.map(average, state.ema_params, state.params))

    def restart_ema(self) -> TrainState:
        """This state with the EMA reset to the current params (after loading pretrained weights)."""
        return self if self.ema_params is None else self.replace(ema_params=_copy(self.params))

    def variables(self) -> dict:
        """The variables dict that `model.apply` takes."""
        if self.batch_stats:
            return {"params": self.params, "batch_stats": self.batch_stats}
        return {"params": self.params}

    def eval_variables(self) -> dict:
        """The variables evaluation uses: the EMA params when the EMA is on (what the papers report)."""
        variables = self.variables()
        if self.ema_params is not None:
            variables["params"] = self.ema_params
        return variables

    def checkpoint_tree(self) -> dict:
        """The arrays a checkpoint holds; the rest is rebuilt from the config.

        `ema_params` is there only when the EMA is on, so checkpoints of runs
        without it keep their layout.
        """
        tree = {
            "step": self.step,
            "params": self.params,
            "batch_stats": self.batch_stats,
            "opt_state": self.opt_state,
        }
        if self.ema_params is not None:
            tree["ema_params"] = self.ema_params
        return tree

    def from_checkpoint_tree(self, tree: dict) -> TrainState:
        """This state with the arrays of a restored checkpoint tree."""
        return self.replace(
            step=tree["step"],
            params=tree["params"],
            batch_stats=tree["batch_stats"],
            opt_state=tree["opt_state"],
            ema_params=tree["ema_params"] if self.ema_params is not None else None,
        )
