"""The errors a user can cause with a config, a file or a workdir; the CLIs print each as one line.

A leaf module: it imports nothing of jaxdl, so every package can raise these
without depending on the configuration or the training loop. The rule they
serve: every exception a user can cause is one of these, with one line that
names the key or the file; any other exception is a bug in jaxdl.
"""

from __future__ import annotations

import re
from collections.abc import Collection


class UserError(Exception):
    """A problem in what the user gave (config, file, workdir), described in one line."""

    exit_code = 1


class ConfigError(UserError, ValueError):
    """A config problem, described in one line that names the key."""

    exit_code = 2


class WorkdirError(UserError, ValueError):
    """A workdir that cannot be used: a file, a corrupt config.json, no checkpoint."""

    exit_code = 2


class DatasetNotPreparedError(UserError, RuntimeError):
    """A tfds dataset that is not prepared locally (jaxdl never downloads)."""


class StateDictError(UserError, ValueError):
    """A state dict does not fit the model: names the missing, extra or mis-shaped tensors."""


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss or the parameters became NaN or inf; nothing after it was checkpointed."""


def check_choice(key: str, value, choices: Collection) -> None:
    """Raises ConfigError unless `value` is one of `choices`; `key` is the dotted config key."""
    if value not in choices:
        raise ConfigError(f"config.{key}='{value}' is not valid; choose one of: {', '.join(map(str, choices))}")


def check_at_least(key: str, value, low: float, *, strict: bool = False) -> None:
    """Raises ConfigError unless value >= low (value > low when `strict`)."""
    if value < low or (strict and value == low):
        raise ConfigError(f"config.{key}={value} is not valid; it must be {'>' if strict else '>='} {low}")


def check_fraction(key: str, value, *, closed: bool = False) -> None:
    """Raises ConfigError unless 0 <= value < 1 (value <= 1 when `closed`)."""
    if not (0 <= value <= 1 if closed else 0 <= value < 1):
        raise ConfigError(f"config.{key}={value} is not valid; it must be in [0, 1{']' if closed else ')'}")


def check_regex(key: str, value: str) -> re.Pattern | None:
    """The compiled regex of config key `key` (None when empty); a bad pattern raises ConfigError."""
    if not value:
        return None
    try:
        return re.compile(value)
    except re.error as error:
        raise ConfigError(f"config.{key}='{value}' is not a valid regex: {error}") from None


def first_line(error: BaseException, limit: int | None = None) -> str:
    """An exception's first message line (at most `limit` characters), or its type name when it has no message."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
