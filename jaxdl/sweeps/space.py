"""Building a sweep's trials: lists of override dicts from grids, zips, seeded random draws and concatenation.

A trial is a dict of dotted config keys to values, e.g. `{"optimizer.learning_rate": 0.01, "seed": 0}`;
a sweep is a list of them. The helpers take and return plain lists, so a sweep file may also
write its trials out by hand or build them with any Python:

    from jaxdl import sweeps

    def get_sweep():
        return sweeps.product(sweeps.sweep("optimizer.learning_rate", [1e-3, 1e-2]), sweeps.sweep("seed", [0, 1]))
"""

from __future__ import annotations

import builtins
import dataclasses
import itertools
import math
import zlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from jaxdl.errors import ConfigError

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

Trial = dict[str, object]


def sweep(key: str, values: Iterable) -> list[Trial]:
    """One key over `values`: [{key: v} for v in values]."""
    return [{key: value} for value in values]


def fixed(overrides: Mapping[str, object]) -> list[Trial]:
    """A sweep of one trial with these overrides (to combine a constant setting with product or zip)."""
    return [dict(overrides)]


def product(*factors: Sequence[Mapping[str, object]]) -> list[Trial]:
    """The grid of `factors` (each a list of trials), the first varying slowest; keys merge, later ones win."""
    return [_merge(combination) for combination in itertools.product(*factors)]


def zip(*factors: Sequence[Mapping[str, object]]) -> list[Trial]:
    """Trials merged position by position; the factors must have the same length."""
    lengths = {len(factor) for factor in factors}
    if len(lengths) > 1:
        raise ConfigError(f"sweeps.zip needs factors of the same length, got lengths {[len(f) for f in factors]}")
    return [_merge(combination) for combination in builtins.zip(*factors, strict=True)]


def sum(*sweeps: Sequence[Mapping[str, object]]) -> list[Trial]:
    """The sweeps one after the other (their concatenation; `a + b` of two lists is the same)."""
    return [dict(trial) for trial in itertools.chain(*sweeps)]


def _merge(trials: Iterable[Mapping[str, object]]) -> Trial:
    merged: Trial = {}
    for trial in trials:
        merged.update(trial)
    return merged


@dataclasses.dataclass(frozen=True)
class Uniform:
    """Uniform in [low, high], rounded to `digits` significant digits (None: not rounded)."""

    low: float
    high: float
    digits: int | None = 4

    def draw(self, rng: np.random.Generator, n: int) -> list[float]:
        return [_round(float(x), self.digits, self.low, self.high) for x in rng.uniform(self.low, self.high, n)]


@dataclasses.dataclass(frozen=True)
class LogUniform:
    """Log-uniform in [low, high] (0 < low <= high), rounded to `digits` significant digits (None: not rounded)."""

    low: float
    high: float
    digits: int | None = 4

    def draw(self, rng: np.random.Generator, n: int) -> list[float]:
        logs = rng.uniform(math.log(self.low), math.log(self.high), n)
        return [_round(math.exp(x), self.digits, self.low, self.high) for x in logs]


@dataclasses.dataclass(frozen=True)
class Choice:
    """One of `values`, each equally likely."""

    values: tuple

    def draw(self, rng: np.random.Generator, n: int) -> list:
        return [self.values[i] for i in rng.integers(0, len(self.values), n)]


def uniform(low: float, high: float, digits: int | None = 4) -> Uniform:
    """A uniform draw in [low, high] for `random`."""
    if not low <= high:
        raise ConfigError(f"sweeps.uniform needs low <= high, got {low}, {high}")
    return Uniform(float(low), float(high), digits)


def loguniform(low: float, high: float, digits: int | None = 4) -> LogUniform:
    """A log-uniform draw in [low, high] for `random` (learning rates, weight decays)."""
    if not 0 < low <= high:
        raise ConfigError(f"sweeps.loguniform needs 0 < low <= high, got {low}, {high}")
    return LogUniform(float(low), float(high), digits)


def choice(values: Iterable) -> Choice:
    """A draw among `values` for `random`."""
    values = tuple(values)
    if not values:
        raise ConfigError("sweeps.choice needs at least one value")
    return Choice(values)


def random(num_trials: int, space: Mapping[str, Uniform | LogUniform | Choice], *, seed: int) -> list[Trial]:
    """`num_trials` trials drawn from `space` (key -> distribution), the same for the same seed.

    Each key draws from its own generator, seeded by `seed` and the key's name:
    adding a key to the space leaves the other keys' draws as they were.
    """
    columns = {}
    for key, distribution in space.items():
        if not isinstance(distribution, (Uniform, LogUniform, Choice)):
            raise ConfigError(
                f"sweeps.random: '{key}' needs sweeps.uniform, sweeps.loguniform or sweeps.choice, "
                f"got {type(distribution).__name__}"
            )
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        columns[key] = distribution.draw(rng, num_trials)
    return [{key: _plain(values[i]) for key, values in columns.items()} for i in range(num_trials)]


def _round(x: float, digits: int | None, low: float, high: float) -> float:
    """`x` to `digits` significant digits (short trial names), kept within [low, high]."""
    if digits is not None and x != 0:
        x = round(x, digits - 1 - math.floor(math.log10(abs(x))))
    return min(max(x, low), high)


def _plain(value):
    """numpy scalars as Python numbers: trials are written to JSON."""
    return value.item() if isinstance(value, np.generic) else value
