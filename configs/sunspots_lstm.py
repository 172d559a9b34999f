"""LSTM one-year-ahead forecast of yearly sunspot numbers, against an AR(9) baseline.

jaxdl-train --config=configs/sunspots_lstm.py --workdir=runs/sunspots_lstm

lookback 9: the order of the AR model with the lowest validation RMSE (p = 3 .. 30
tried; AR(9) is also the classic sunspot model), so the baseline in results.json is
AR at its best; 9 years cover most of the ~11-year cycle. horizon 1: the next year.
The series (309 years) is cut 70/15/15 in time order: the test windows forecast
1962-2008. The validation loss bottoms out after ~10 epochs, so it is evaluated
every 25 steps (~2 epochs) and the best checkpoint is tested.
"""

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
    """One LSTM layer of 32 units, last hidden state -> one value; Adam 1e-2."""
    config = base.get_config()
    config.model.name = "lstm"
    # output='last': a Dense head on the final hidden state; num_outputs = horizon (set by the task).
    config.model.kwargs = ml_collections.ConfigDict({"hidden_size": 32, "num_layers": 1, "output": "last"})
    config.task.name = "forecasting"
    config.dataset.name = "sunspots"
    config.dataset.input_key = "input"
    config.dataset.target_key = "target"
    config.dataset.lookback = 9
    config.dataset.horizon = 1
    config.optimizer.learning_rate = 1e-2
    config.training.batch_size = 16
    config.training.num_epochs = 30.0
    config.training.eval_every_steps = 25
    config.training.log_every_steps = 25
    config.training.checkpoint_every_steps = 250
    return config
