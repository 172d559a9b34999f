"""The digits CNN's learning rate over three decades, each with two seeds (8 trials).

jaxdl-sweep --config=configs/digits_cnn.py --sweep=sweeps/digits_lr_seed.py --workdir=runs/digits_lr_seed --parallel 2
jaxdl-sweep --workdir=runs/digits_lr_seed --report --metric val/accuracy
"""

from jaxdl import sweeps


def get_sweep() -> list[dict]:
    """Adam's learning rate 1e-4, 1e-3, 1e-2, 1e-1 x seeds 0, 1 (the seed shows how much of a gap is noise)."""
    return sweeps.product(
        sweeps.sweep("optimizer.learning_rate", [1e-4, 1e-3, 1e-2, 1e-1]),
        sweeps.sweep("seed", [0, 1]),
    )
