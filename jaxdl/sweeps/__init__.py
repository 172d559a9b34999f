"""Sweeps: a sweep file's `get_sweep()` returns trials (override dicts) built with these helpers.

  jaxdl-sweep --config=configs/digits_cnn.py --sweep=sweeps/digits_lr_seed.py --workdir=runs/digits_sweep

Importing this package loads only the helpers (no JAX): `jaxdl.sweeps.trials`
names the trials and records them, `local` runs them, `report` tabulates them,
`cli` is `jaxdl-sweep`.
"""

from jaxdl.sweeps.space import (
    Choice,
    LogUniform,
    Uniform,
    choice,
    fixed,
    loguniform,
    product,
    random,
    sum,
    sweep,
    uniform,
    zip,
)

__all__ = [
    "Choice",
    "LogUniform",
    "Uniform",
    "choice",
    "fixed",
    "loguniform",
    "product",
    "random",
    "sum",
    "sweep",
    "uniform",
    "zip",
]
