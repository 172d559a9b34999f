"""A sweep's record: its config, its trials (each named by its overrides) and their workdirs, in SWEEP/sweep.json.

A sweep file defines `get_sweep()` returning a list of override dicts (see
jaxdl.sweeps.space). `Sweep.prepare` loads it, checks every override against the
config before anything runs, names each trial after its overrides and writes
sweep.json, so that a re-launch and `jaxdl-sweep --report` know the trials
without the sweep file.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import ml_collections

from jaxdl import configuration
from jaxdl.errors import ConfigError, WorkdirError, first_line

SWEEP_FILENAME = "sweep.json"
RESULTS_FILENAME = "results.json"
# Trial names longer than this end in a hash of the overrides instead (file systems cap names at 255 bytes).
MAX_NAME_LENGTH = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")


def override_text(value: object) -> str:
    """`value` as the text after `--config.key=`, read back to the same value by apply_overrides."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _value_label(value: object) -> str:
    return override_text(value).replace(" ", "")


def _digest(overrides: Mapping[str, object]) -> str:
    return hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]


def trial_name(overrides: Mapping[str, object], short_keys: bool = False) -> str:
    """A readable, filesystem-safe workdir name: `key=value,key=value`, hashed at the end when too long.

    With `short_keys` each dotted key is shortened to its last part (`model.kwargs.hidden_size` to
    `hidden_size`) unless two keys of the trial end alike.
    """
    if not overrides:
        return "default"
    ends = [key.rsplit(".", 1)[-1] for key in overrides]
    labels = [end if short_keys and ends.count(end) == 1 else key for key, end in zip(overrides, ends, strict=True)]
    text = ",".join(f"{label}={_value_label(value)}" for label, value in zip(labels, overrides.values(), strict=True))
    name = _UNSAFE.sub("_", text)
    if len(name) > MAX_NAME_LENGTH:
        name = f"{name[: MAX_NAME_LENGTH - 9]}-{_digest(overrides)}"
    return name


@dataclasses.dataclass(frozen=True)
class Trial:
    """One trial: its position in the sweep, its workdir name and its overrides."""

    index: int
    name: str
    overrides: dict[str, object]

    def override_args(self) -> list[str]:
        """The overrides as `key=value` strings, the form of apply_overrides and `--config.key=value`."""
        return [f"{key}={override_text(value)}" for key, value in self.overrides.items()]


def load_sweep_file(path: str | Path) -> list[dict[str, object]]:
    """Imports a sweep file and returns its `get_sweep()` as JSON-plain override dicts; problems are one line."""
    trials = configuration.call_python_file(path, flag="--sweep", function="get_sweep", kind="sweep")
    return check_trials(trials, f"get_sweep() of '{path}'")


def check_trials(trials: object, where: str) -> list[dict[str, object]]:
    """`trials` as a non-empty list of JSON-plain override dicts; anything else is a one-line ConfigError."""
    if not isinstance(trials, Sequence) or isinstance(trials, (str, bytes)):
        raise ConfigError(f"--sweep: {where} returned {type(trials).__name__}; return a list of override dicts")
    if not trials:
        raise ConfigError(
            f"--sweep: {where} returned no trials; return a list of override dicts such as "
            "[{'optimizer.learning_rate': 0.01, 'seed': 0}]"
        )
    plain = []
    for index, trial in enumerate(trials):
        if not isinstance(trial, Mapping) or not all(isinstance(key, str) for key in trial):
            raise ConfigError(f"--sweep: trial {index} of {where} is not a dict of 'key': value overrides: {trial!r}")
        try:
            # JSON-plain from the start (tuples as lists, numpy scalars as numbers): sweep.json then
            # holds exactly what ran, and a re-launch names the trials as the first launch did.
            plain.append(json.loads(json.dumps(dict(trial), default=_json_scalar, allow_nan=False)))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"--sweep: trial {index} of {where}: {first_line(error)}") from None
    return plain


def _json_scalar(value: object) -> object:
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    raise TypeError(f"value {value!r} is not a number, string, bool, None, list or dict")


def name_trials(trials: Sequence[Mapping[str, object]]) -> list[Trial]:
    """Trials with unique names; identical override dicts are a ConfigError (a trial is its overrides)."""
    seen: dict[str, int] = {}
    for index, overrides in enumerate(trials):
        key = json.dumps(overrides, sort_keys=True)
        if key in seen:
            raise ConfigError(
                f"--sweep: trials {seen[key]} and {index} have the same overrides {dict(overrides)}; remove one"
            )
        seen[key] = index
    # One style for the whole sweep: full keys, or last parts of keys when a full name would be cut.
    short = any(len(trial_name(overrides)) >= MAX_NAME_LENGTH for overrides in trials)
    names = [trial_name(overrides, short) for overrides in trials]
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    # Distinct overrides that read alike once made filesystem-safe ('a b' and 'a_b') keep apart by their hash.
    names = [f"{n}-{_digest(o)}" if counts[n] > 1 else n for n, o in zip(names, trials, strict=True)]
    return [Trial(i, name, dict(o)) for i, (name, o) in enumerate(zip(names, trials, strict=True))]


@dataclasses.dataclass
class Sweep:
    """A sweep's workdir and record: the config, the overrides every trial shares, the trials."""

    workdir: Path
    config: str
    sweep: str
    overrides: list[str]
    trials: list[Trial]

    @classmethod
    def open(cls, workdir: str | Path) -> Sweep:
        """The sweep recorded in workdir/sweep.json; a missing or corrupt record is a one-line WorkdirError."""
        workdir = Path(workdir)
        path = workdir / SWEEP_FILENAME
        try:
            record = json.loads(path.read_text())
            trials = [Trial(i, t["name"], t["overrides"]) for i, t in enumerate(record["trials"])]
            return cls(workdir, record["config"], record["sweep"], list(record["overrides"]), trials)
        except FileNotFoundError:
            raise WorkdirError(
                f"--workdir '{workdir}' holds no {SWEEP_FILENAME}: start the sweep there with --config and --sweep"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
            raise WorkdirError(f"{path} is not a sweep record ({first_line(error)}); restore or delete it") from None

    @classmethod
    def prepare(
        cls,
        workdir: str | Path,
        config: str | Path | None = None,
        sweep: str | Path | None = None,
        overrides: Sequence[str] = (),
        trials: Sequence[Mapping[str, object]] | None = None,
    ) -> Sweep:
        """The sweep to run, every override checked against the config; writes workdir/sweep.json.

        Without `config` and `sweep` it is the sweep recorded in `workdir` (a
        re-launch). `trials` replaces the sweep file's get_sweep() (for scripts
        that build their trials themselves); `sweep` is then only recorded.
        """
        workdir = Path(workdir)
        if workdir.exists() and not workdir.is_dir():
            raise WorkdirError(f"--workdir '{workdir}' is a file, not a directory; choose another path")
        previous = cls.open(workdir) if (workdir / SWEEP_FILENAME).exists() else None
        if config is None and sweep is None and trials is None:
            if previous is None:
                cls.open(workdir)  # Raises the one-line error that asks for --config and --sweep.
            if overrides and list(overrides) != previous.overrides:
                raise ConfigError(
                    f"--config.KEY overrides differ from those {workdir} was started with ({previous.overrides}); "
                    "re-launch with --workdir alone, or start a new sweep in another --workdir"
                )
            config, sweep, overrides = previous.config, previous.sweep, previous.overrides
            trials = [t.overrides for t in previous.trials]
        elif config is None or (sweep is None and trials is None):
            raise ConfigError("give both --config and --sweep to start a sweep (or --workdir alone to re-launch one)")
        config = str(Path(config).resolve())
        sweep = str(Path(sweep).resolve()) if sweep else ""
        if previous is not None and (previous.config, previous.overrides) != (config, list(overrides)):
            raise ConfigError(
                f"--workdir '{workdir}' holds a sweep of --config={previous.config} with overrides "
                f"{previous.overrides}; re-launch it with the same, or use another --workdir"
            )
        if trials is None:
            trials = load_sweep_file(sweep)
        else:
            trials = check_trials(list(trials), f"the trials given for '{sweep or config}'")
        named = name_trials(trials)
        if previous is not None:
            # A trial keeps the workdir it was given: it is identified by its overrides, not by today's naming.
            recorded = {json.dumps(t.overrides, sort_keys=True): t.name for t in previous.trials}
            kept = [
                dataclasses.replace(t, name=recorded.get(json.dumps(t.overrides, sort_keys=True), t.name))
                for t in named
            ]
            named = kept if len({t.name for t in kept}) == len(kept) else named
        result = cls(workdir, config, sweep, list(overrides), named)
        result.check()
        result.save()
        return result

    def check(self) -> None:
        """Applies every trial's overrides to the config; the first that does not fit is a one-line ConfigError."""
        base = configuration.load_config(self.config)
        configuration.apply_overrides(base, self.overrides)
        for trial in self.trials:
            try:
                configuration.apply_overrides(copy.deepcopy(base), trial.override_args())
            except ConfigError as error:
                raise ConfigError(f"--sweep: trial {trial.index} ({trial.name}): {first_line(error)}") from None

    def save(self) -> None:
        """Writes sweep.json atomically (the tasks of a job array all write the same record)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        record = {
            "config": self.config,
            "sweep": self.sweep,
            "overrides": self.overrides,
            "trials": [{"name": t.name, "overrides": t.overrides} for t in self.trials],
        }
        temporary = self.workdir / f".{SWEEP_FILENAME}.{os.getpid()}"
        temporary.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(temporary, self.workdir / SWEEP_FILENAME)

    def trial_dir(self, trial: Trial) -> Path:
        """The trial's own workdir."""
        return self.workdir / trial.name

    def trial_config(self, trial: Trial) -> ml_collections.ConfigDict:
        """The config a trial trains: the config file, the shared overrides, then the trial's."""
        config = configuration.load_config(self.config)
        configuration.apply_overrides(config, [*self.overrides, *trial.override_args()])
        return config

    def finished(self, trial: Trial) -> bool:
        """Whether the trial wrote its results (a finished trial is not run again)."""
        return (self.trial_dir(trial) / RESULTS_FILENAME).is_file()

    def started(self, trial: Trial) -> bool:
        """Whether the trial began training (its workdir holds a config; a re-run resumes it)."""
        return (self.trial_dir(trial) / "config.json").is_file()

    def trial(self, index: int) -> Trial:
        """Trial `index`; one past the trials is a one-line ConfigError that names the valid indices."""
        count = len(self.trials)
        if not 0 <= index < count:
            raise ConfigError(
                f"--array_index={index} is past the sweep's {count} trials (indices 0..{count - 1}); "
                f"submit the job array as sbatch --array=0-{count - 1}"
            )
        return self.trials[index]
