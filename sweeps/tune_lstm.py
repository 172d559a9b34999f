"""The course's LSTM tuning grid: epochs x learning rate x hidden units x layers (8 trials by default).

jaxdl-sweep --config=configs/sunspots_lstm.py --sweep=sweeps/tune_lstm.py --workdir=runs/tune_lstm
python experiments/tune_lstm.py --out runs/tune_lstm   # the same grid, with the course's table and loss curves
"""

from collections.abc import Sequence

from jaxdl import sweeps


def get_sweep(
    epochs: Sequence[float] = (20.0, 60.0),
    learning_rates: Sequence[float] = (1e-2,),
    hidden_sizes: Sequence[int] = (16, 32),
    num_layers: Sequence[int] = (1, 2),
) -> list[dict]:
    """The grid, epochs varying slowest; experiments/tune_lstm.py passes its own lists."""
    return sweeps.product(
        sweeps.sweep("training.num_epochs", [float(e) for e in epochs]),
        sweeps.sweep("optimizer.learning_rate", [float(lr) for lr in learning_rates]),
        sweeps.sweep("model.kwargs.hidden_size", [int(h) for h in hidden_sizes]),
        sweeps.sweep("model.kwargs.num_layers", [int(n) for n in num_layers]),
    )
