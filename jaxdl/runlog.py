"""Run logging: metrics.jsonl, TensorBoard event files, progress bar, parameter table, profiler traces."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from tqdm import tqdm

from jaxdl.errors import ConfigError

__all__ = [
    "METRICS_FILENAME",
    "TENSORBOARD_DIRNAME",
    "MetricWriter",
    "ProgressBar",
    "format_metrics",
    "parameter_table",
    "read_metrics",
]

_log = logging.getLogger(__name__)

METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_DIRNAME = "tensorboard"

# JSON has no NaN/Infinity literals; strings keep the sign of infinities,
# which `null` would lose, and read_metrics maps them back to floats.
_NONFINITE_TO_STR = {"nan": "nan", "inf": "inf", "-inf": "-inf"}
_STR_TO_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}

# Distinguishes event files of writers reopened within the same second,
# which tensorboardX would otherwise give the same name and overwrite; the
# zero padding keeps name order equal to creation order, which TensorBoard
# relies on when it applies a purge marker from a later file.
_event_file_counter = itertools.count()


def _summary_writer_class() -> type:
    """tensorboardX's SummaryWriter, imported lazily and, where PyTorch is installed but not loaded, without it.

    tensorboardX's writer module imports torch whenever it is installed, only to accept torch
    tensors, which jaxdl never passes; that import took 1.9 s of each training process's start
    on the 2-core CPU. `sys.modules["torch"] = None` makes the import fail inside tensorboardX
    alone; torch stays importable afterwards.
    """
    if "torch" in sys.modules or "tensorboardX.writer" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def _to_python_number(value: Any) -> int | float:
    """Converts a scalar (Python, NumPy or JAX) to a plain int or float."""
    array = np.asarray(value)
    if array.size != 1:
        raise ValueError(f"metric values must be scalars, got shape {array.shape}")
    item = array.reshape(()).item()
    if isinstance(item, bool):
        return int(item)
    if isinstance(item, int):
        return item
    if isinstance(item, float):
        return item
    raise TypeError(f"metric values must be numeric, got {type(value).__name__}")


def _encode_value(value: int | float) -> int | float | str:
    """Encodes non-finite floats as the strings "nan", "inf" or "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        if math.isnan(value):
            return _NONFINITE_TO_STR["nan"]
        return _NONFINITE_TO_STR["inf" if value > 0 else "-inf"]
    return value


def _decode_record(record: dict[str, Any]) -> dict[str, Any]:
    """Turns the non-finite string encoding back into floats."""
    return {
        key: _STR_TO_NONFINITE[value] if isinstance(value, str) and value in _STR_TO_NONFINITE else value
        for key, value in record.items()
    }


def _repair_torn_tail(path: Path) -> None:
    """Drops a partial last line left behind by a crash in the middle of a write."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        keep = data.rfind(b"\n") + 1
        _log.warning("%s: dropping a partial last line (%d bytes)", path, size - keep)
        f.truncate(keep)


class MetricWriter:
    """Appends scalar metrics to workdir/metrics.jsonl and TensorBoard event files.

    Each line of metrics.jsonl is ``{"step": step, **metrics}``. Non-finite
    floats are stored as the strings ``"nan"``, ``"inf"`` and ``"-inf"`` so the
    file stays valid JSON; :func:`read_metrics` decodes them back to floats.
    With ``enabled=False`` (non-zero processes of a multi-process run) every
    method is a no-op and nothing is created on disk.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
    ) -> None:
        """Opens (or creates) the metrics file in append mode."""
        self.workdir = Path(workdir)
        self.enabled = enabled
        self.tensorboard = tensorboard
        self.metrics_path = self.workdir / METRICS_FILENAME
        self.tensorboard_dir = self.workdir / TENSORBOARD_DIRNAME
        self._file: Any = None
        self._summary_writer: Any = None
        # Set by truncate_after so the next event file hides stale TB points.
        self._purge_step: int | None = None
        self._closed = False
        if not enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.metrics_path.exists():
            _repair_torn_tail(self.metrics_path)
        self._file = open(self.metrics_path, "a", encoding="utf-8")

    def _get_summary_writer(self) -> Any:
        """Creates the TensorBoard writer on first use, honouring a pending purge."""
        if self._summary_writer is None:
            self._summary_writer = _summary_writer_class()(
                logdir=str(self.tensorboard_dir),
                purge_step=self._purge_step,
                flush_secs=30,
                filename_suffix=f".{os.getpid()}.{next(_event_file_counter):06d}",
            )
            self._purge_step = None
        return self._summary_writer

    def _check_open(self) -> None:
        """Raises if the writer was closed, since writes would be silently lost."""
        if self._closed:
            raise ValueError("MetricWriter is closed")

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        """Appends one line for `step` and logs each scalar to TensorBoard."""
        if not self.enabled:
            return
        self._check_open()
        step = int(step)
        values = {str(key): _to_python_number(value) for key, value in metrics.items()}
        if "step" in values:
            raise ValueError("'step' is reserved and cannot be a metric name")
        record = {"step": step, **{k: _encode_value(v) for k, v in values.items()}}
        # allow_nan=False guards the invariant that every line is strict JSON.
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        # Flush per line so a crashed run keeps everything logged before it.
        self._file.flush()
        if self.tensorboard:
            summary_writer = self._get_summary_writer()
            for key, value in values.items():
                summary_writer.add_scalar(key, value, step)

    def write_text(self, tag: str, text: str, step: int = 0) -> None:
        """Logs a text blob (e.g. the config) to TensorBoard's text tab."""
        if not self.enabled or not self.tensorboard:
            return
        self._check_open()
        self._get_summary_writer().add_text(tag, text, int(step))

    def truncate_after(self, step: int) -> None:
        """Drops logged lines with a step greater than `step` (resume from a checkpoint)."""
        if not self.enabled:
            return
        self._check_open()
        step = int(step)
        self._file.close()
        kept: list[str] = []
        dropped = 0
        with open(self.metrics_path, encoding="utf-8") as f:
            lines = f.readlines()
        for index, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                logged = int(json.loads(line)["step"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                if index < len(lines) - 1:  # Only a write cut short by a kill tears the last line.
                    raise
                logged = step + 1  # Torn: the kill came mid-write, after the last checkpoint.
            if logged > step:
                dropped += 1
            else:
                kept.append(line if line.endswith("\n") else line + "\n")
        if dropped:
            # Write-then-rename so a crash here cannot lose the kept lines.
            tmp_path = self.metrics_path.with_name(self.metrics_path.name + ".tmp")
            with open(tmp_path, "w", encoding="utf-8") as f:
                f.writelines(kept)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_path, self.metrics_path)
            _log.info("%s: dropped %d lines after step %d", self.metrics_path, dropped, step)
        self._file = open(self.metrics_path, "a", encoding="utf-8")
        if self.tensorboard:
            # TensorBoard hides events at steps >= purge_step written before
            # the marker, so the stale tail disappears from its plots too.
            if self._summary_writer is not None:
                self._summary_writer.close()
                self._summary_writer = None
            self._purge_step = step + 1

    def flush(self) -> None:
        """Flushes the metrics file and any pending TensorBoard events."""
        if not self.enabled or self._closed:
            return
        self._file.flush()
        if self._summary_writer is not None:
            self._summary_writer.flush()

    def close(self) -> None:
        """Flushes and closes all files; further writes raise."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        self._file.close()
        if self._summary_writer is not None:
            self._summary_writer.close()
            self._summary_writer = None

    def __enter__(self) -> MetricWriter:
        """Returns the writer itself for use in a `with` block."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Closes the writer."""
        self.close()


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """Parses workdir/metrics.jsonl into one dict per line, decoding NaN/inf."""
    path = Path(workdir) / METRICS_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"no {METRICS_FILENAME} in {Path(workdir)}")
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    records: list[dict[str, Any]] = []
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            # Only the last line can be torn by a crash mid-write; anything
            # earlier means the file is corrupt and must not be glossed over.
            if line_number == len(lines) and not line.endswith("\n"):
                _log.warning("%s: ignoring a partial last line", path)
                continue
            raise ValueError(f"{path}:{line_number}: invalid JSON: {exc}") from exc
        records.append(_decode_record(record))
    return records


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """Formats metrics as a one-line ``key=value`` summary with 4 significant digits."""
    parts = []
    for key, value in metrics.items():
        try:
            number = _to_python_number(value)
        except (TypeError, ValueError):
            parts.append(f"{key}={value}")
            continue
        # Integers such as step counts read better exactly than as 1.234e+04.
        text = str(number) if isinstance(number, int) else f"{number:.4g}"
        parts.append(f"{key}={text}")
    return " ".join(parts)


class ProgressBar:
    """A tqdm progress bar on stderr, positioned at absolute training steps."""

    def __init__(
        self,
        total_steps: int,
        initial_step: int = 0,
        enabled: bool = True,
        desc: str = "train",
    ) -> None:
        """Starts the bar at `initial_step` (non-zero when resuming)."""
        self.enabled = enabled
        self._bar: tqdm | None = None
        if enabled:
            self._bar = tqdm(
                total=int(total_steps),
                initial=int(initial_step),
                desc=desc,
                unit="step",
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=0.5,
            )

    @property
    def step(self) -> int | None:
        """The step the bar currently shows, or None when disabled."""
        return None if self._bar is None else int(self._bar.n)

    def update(self, step: int, postfix: Mapping[str, float] | None = None) -> None:
        """Moves the bar to absolute `step` and optionally shows `postfix` metrics."""
        if self._bar is None:
            return
        if postfix is not None:
            # The update below redraws, so skip a second redraw here.
            self._bar.set_postfix_str(format_metrics(postfix), refresh=False)
        delta = int(step) - self._bar.n
        if delta >= 0:
            # tqdm rate-limits redraws in update(), keeping the loop cheap.
            self._bar.update(delta)
        else:
            self._bar.n = int(step)
            self._bar.refresh()

    def write(self, message: str) -> None:
        """Prints a message to stderr without garbling the bar."""
        if self._bar is None:
            return
        self._bar.write(message, file=sys.stderr)

    def close(self) -> None:
        """Finishes the bar, leaving its last state on screen."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressBar:
        """Returns the bar itself for use in a `with` block."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Closes the bar."""
        self.close()


def _key_name(entry: Any) -> str:
    """Returns the readable name of one pytree path entry."""
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _format_bytes(num_bytes: int) -> str:
    """Formats a byte count exactly, plus a binary unit when large: ``2,048 (2.00 KiB)``."""
    units = ("KiB", "MiB", "GiB", "TiB", "PiB")
    # Integer arithmetic picks the unit; float logs misjudge exact powers of 1024.
    exponent = min((num_bytes.bit_length() - 1) // 10, len(units)) if num_bytes else 0
    if exponent == 0:
        return f"{num_bytes:,}"
    return f"{num_bytes:,} ({num_bytes / 1024**exponent:.2f} {units[exponent - 1]})"


def parameter_table(params: Any) -> str:
    """Renders a params pytree as an aligned table of path, shape, dtype and count."""
    # Imported here so metrics-only users (e.g. plotting scripts) skip loading JAX.
    import jax

    leaves_with_paths, _ = jax.tree_util.tree_flatten_with_path(params)
    header = ("path", "shape", "dtype", "count", "bytes")
    rows: list[tuple[str, str, str, str, str]] = []
    total_count = 0
    total_bytes = 0
    for path, leaf in leaves_with_paths:
        # ShapeDtypeStruct leaves (from jax.eval_shape) have shape/dtype but no data.
        shape = tuple(int(d) for d in getattr(leaf, "shape", np.shape(leaf)))
        dtype = np.dtype(getattr(leaf, "dtype", np.asarray(leaf).dtype))
        count = math.prod(shape)
        num_bytes = count * dtype.itemsize
        total_count += count
        total_bytes += num_bytes
        name = "/".join(_key_name(entry) for entry in path) or "<root>"
        rows.append((name, str(shape), dtype.name, f"{count:,}", f"{num_bytes:,}"))
    total_row = ("total", "", "", f"{total_count:,}", _format_bytes(total_bytes))
    widths = [max(len(row[i]) for row in (header, *rows, total_row)) for i in range(len(header))]
    # Numbers are right-aligned so digits of equal magnitude line up.
    right_aligned = (False, False, False, True, True)

    def render(row: tuple[str, ...]) -> str:
        cells = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(row, widths, right_aligned, strict=True)
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * width for width in widths)
    lines = [render(header), rule, *(render(row) for row in rows), rule, render(total_row)]
    return "\n".join(lines)


def profile_window(value, total_steps: int) -> tuple[int, int] | None:
    """config.profile_steps as (first, last) step, numbered 1..total_steps as in metrics.jsonl; () is None.

    Anything else, a malformed value or steps outside 1..total_steps or first > last, raises ConfigError.
    """
    if value is None or (isinstance(value, (tuple, list)) and len(value) == 0) or value == "":
        return None
    shown = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
    usage = f"give FIRST,LAST with 1 <= FIRST <= LAST <= {total_steps} (the run's steps), e.g. 2,3"
    if not (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ConfigError(f"config.profile_steps='{shown}' is not valid; {usage}")
    first, last = value
    if first < 1 or last < 1:
        raise ConfigError(f"config.profile_steps={shown} is not valid: steps are numbered from 1; {usage}")
    if first > last:
        raise ConfigError(f"config.profile_steps={shown} is not valid: the first step is after the last; {usage}")
    if last > total_steps:
        raise ConfigError(f"config.profile_steps={shown} is not valid: the run has only {total_steps} steps; {usage}")
    return first, last


class StepProfiler:
    """Writes a JAX profiler trace (TensorBoard's profile plugin) of the steps in config.profile_steps.

    Call `before(n)` before step n runs and `after(n, outputs)` once it was
    dispatched; use as a context manager so an interrupted run still closes the trace.
    """

    def __init__(self, value, total_steps: int, log_dir: Path):
        self.window = profile_window(value, total_steps)
        self.log_dir = Path(log_dir)
        self.active = False

    def before(self, step: int) -> None:
        """Starts the trace at the window's first step (or the first one a resumed run reaches)."""
        if self.window and not self.active and self.window[0] <= step <= self.window[1]:
            import jax  # Here, as in parameter_table: plotting scripts import this module without JAX.

            self.log_dir.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.log_dir))
            self.active = True

    def after(self, step: int, outputs) -> None:
        """Stops the trace after the window's last step, once its device work is done."""
        if self.active and step >= self.window[1]:
            import jax

            jax.block_until_ready(outputs)  # Else the trace ends before the step's kernels do.
            self.stop()

    def stop(self) -> None:
        """Stops and writes the trace if one is running."""
        if self.active:
            import jax

            self.active = False
            jax.profiler.stop_trace()

    def __enter__(self) -> StepProfiler:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
