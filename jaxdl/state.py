"""The training state: params, BatchNorm statistics, optimizer state and step."""

from __future__ import annotations

from typing import Any

from flax.training import train_state


class TrainState(train_state.TrainState):
    """flax's TrainState plus the BatchNorm statistics (empty dict without BatchNorm)."""

    batch_stats: Any = None

    def variables(self) -> dict:
        """The variables dict that `model.apply` takes."""
        if self.batch_stats:
            return {"params": self.params, "batch_stats": self.batch_stats}
        return {"params": self.params}

    def checkpoint_tree(self) -> dict:
        """The arrays a checkpoint holds; the rest is rebuilt from the config."""
        return {
            "step": self.step,
            "params": self.params,
            "batch_stats": self.batch_stats,
            "opt_state": self.opt_state,
        }

    def from_checkpoint_tree(self, tree: dict) -> TrainState:
        """This state with the arrays of a restored checkpoint tree."""
        return self.replace(
            step=tree["step"],
            params=tree["params"],
            batch_stats=tree["batch_stats"],
            opt_state=tree["opt_state"],
        )
