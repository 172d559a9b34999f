"""A sweep's report: a table (CSV and Markdown) of every trial's overrides and metrics, and a figure.

For the chosen metric (default: the runs' own best_metric, e.g. val/loss) each
row holds its final and best logged value (metrics.jsonl) and the step of the
best, with the test metrics of results.json. The best finished trial is marked
by the metric's direction (the task says which metrics grow when better).
Trials still running, killed or not started are listed as such. The PNG plots
the best value of the metric against each swept key, log x for keys spanning a
decade or more.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxdl import configuration, runlog
from jaxdl.errors import UserError, WorkdirError
from jaxdl.sweeps.trials import RESULTS_FILENAME, Sweep, Trial, override_text

PANEL_WIDTH_IN, PANEL_HEIGHT_IN, DPI = 4.5, 3.5, 100
# Whole-number keys with at most this many values are plotted as categories (seeds, layers, units).
MAX_CATEGORIES = 12


@dataclasses.dataclass
class Row:
    """One trial's line of the table."""

    trial: Trial
    status: str  # 'finished', 'unfinished (step N)' or 'not started'.
    final: float | None = None
    best: float | None = None
    best_step: int | None = None
    test: dict[str, float] = dataclasses.field(default_factory=dict)
    test_best_metric: str = ""  # The metric that picked the checkpoint `test` was measured on.

    @property
    def finished(self) -> bool:
        return self.status == "finished"


@dataclasses.dataclass
class Report:
    """What `write_report` wrote and found."""

    metric: str
    maximize: bool
    rows: list[Row]
    best: Row | None
    markdown: str
    csv_path: Path
    markdown_path: Path
    figure_path: Path | None


def _results(sweep: Sweep, trial: Trial) -> dict | None:
    path = sweep.trial_dir(trial) / RESULTS_FILENAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise WorkdirError(f"{path} is not valid JSON ({error.msg}); delete it to run the trial's test again") from None


def _metrics(sweep: Sweep, trial: Trial) -> list[dict]:
    try:
        return runlog.read_metrics(sweep.trial_dir(trial))
    except FileNotFoundError:
        return []
    except ValueError as error:  # A corrupt line before the last: the trial's log, not the sweep, is broken.
        raise WorkdirError(str(error)) from None


def maximized(sweep: Sweep, metric: str) -> bool:
    """Whether `metric` grows when better, by the task of the sweep's trials."""
    from jaxdl import tasks  # Imported late: the task table imports JAX.

    started = [sweep.trial_dir(t) / "config.json" for t in sweep.trials if sweep.started(t)]
    config = configuration.read_config(started[0]) if started else configuration.load_config(sweep.config)
    task = tasks.TASKS.get(config.task.name)
    return task is not None and metric.split("/", 1)[-1] in task.maximized


def collect(sweep: Sweep, metric: str, maximize: bool) -> list[Row]:
    """The table's rows: each trial's status and the metric's final and best (max if `maximize`) logged values."""
    rows = []
    logged: set[str] = set()
    for trial in sweep.trials:
        results, records = _results(sweep, trial), _metrics(sweep, trial)
        for record in records:
            logged.update(record)
        points = [(r["step"], r[metric]) for r in records if metric in r and math.isfinite(r[metric])]
        if results is not None:
            status = "finished"
        elif sweep.started(trial):
            status = f"unfinished (step {max((r['step'] for r in records), default=0)})"
        else:
            status = "not started"
        row = Row(trial, status)
        if results:
            row.test, row.test_best_metric = dict(results.get("test", {})), results.get("best_metric") or ""
        if points:
            pick = max if maximize else min
            row.final = points[-1][1]
            row.best_step, row.best = pick(points, key=lambda point: point[1])
        rows.append(row)
    if logged and metric not in logged:
        names = ", ".join(sorted(k for k in logged if "/" in k))
        raise UserError(f"--metric {metric} is in no trial's metrics.jsonl; choose one of: {names}")
    return rows


def _default_metric(sweep: Sweep) -> str:
    for trial in sweep.trials:
        results = _results(sweep, trial)
        if results and results.get("best_metric"):
            return results["best_metric"]
    return "val/loss"


def swept_keys(trials: Sequence[Trial]) -> list[str]:
    """Every override key, in order of appearance."""
    keys: dict[str, None] = {}
    for trial in trials:
        keys.update(dict.fromkeys(trial.overrides))
    return list(keys)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def table(rows: Sequence[Row], metric: str, best: Row | None) -> tuple[list[str], list[list[str]]]:
    """The header and the cells of the table, shared by the CSV and the Markdown."""
    keys = swept_keys([row.trial for row in rows])
    tests: dict[str, None] = {}
    for row in rows:
        tests.update(dict.fromkeys(row.test))
    header = ["best", "trial", *keys, "status", f"final {metric}", f"best {metric}", "best step"]
    header += [f"test/{name}" for name in tests]
    cells = []
    for row in rows:
        overrides = [override_text(row.trial.overrides[k]) if k in row.trial.overrides else "" for k in keys]
        line = ["yes" if row is best else "", row.trial.name, *overrides, row.status]
        line += [_number(row.final), _number(row.best), "" if row.best_step is None else str(row.best_step)]
        line += [_number(row.test.get(name)) for name in tests]
        cells.append(line)
    return header, cells


def markdown(rows: Sequence[Row], metric: str, maximize: bool, best: Row | None) -> str:
    """The table as Markdown with the best trial in bold, and lines that name it and the unfinished trials."""
    header, cells = table(rows, metric, best)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for line in cells:
        line = [cell.replace("|", "\\|") for cell in line]
        if line[0]:
            line = ["**best**", f"**{line[1]}**", *line[2:]]
        lines.append("| " + " | ".join(line) + " |")
    direction = "highest" if maximize else "lowest"
    if best is not None:
        lines += [
            "",
            f"Best by {direction} {metric}: **{best.trial.name}** ({_number(best.best)} at step {best.best_step}).",
        ]
    else:
        lines += ["", f"No finished trial has logged {metric} yet."]
    ran_by = {row.test_best_metric for row in rows if row.test_best_metric}
    if ran_by:
        lines.append(f"test/* are of each trial's best checkpoint by {', '.join(sorted(ran_by))} (its results.json).")
    unfinished = [
        f"{row.trial.name} ({row.status[len('unfinished (') : -1]})"
        for row in rows
        if row.status.startswith("unfinished")
    ]
    if unfinished:
        lines.append(f"Unfinished (running or killed; a re-launch resumes them): {', '.join(unfinished)}.")
    waiting = [row.trial.name for row in rows if row.status == "not started"]
    if waiting:
        lines.append(f"Not started: {', '.join(waiting)}.")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[Row], metric: str, best: Row | None, path: Path) -> Path:
    """The table as CSV (the `best` column says `yes` on the best trial's row)."""
    header, cells = table(rows, metric, best)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(cells)
    path.write_text(text.getvalue())
    return path


def _numeric(values: Sequence[object]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _positions(values: Sequence[object], ax) -> list[float]:
    """x positions of `values` on `ax`: a scale for real numbers (log when spanning a decade), else categories."""
    # Few whole numbers (seeds, layer counts) read best as categories; real values on a scale.
    whole = all(isinstance(v, int) and not isinstance(v, bool) for v in values) and len(set(values)) <= MAX_CATEGORIES
    if _numeric(values) and not whole:
        xs = [float(v) for v in values]
        if min(xs) > 0 and max(xs) / min(xs) >= 10:  # A key spanning a decade: learning rates, decays.
            ax.set_xscale("log")
        return xs
    ordered = sorted(set(values)) if whole else list(dict.fromkeys(override_text(v) for v in values))
    labels = [override_text(v) for v in ordered]
    ax.set_xticks(range(len(labels)), labels, rotation=0 if whole else 30, ha="center" if whole else "right")
    return [float(labels.index(override_text(v))) for v in values]


def plot(rows: Sequence[Row], metric: str, maximize: bool, best: Row | None, path: Path) -> Path | None:
    """Best `metric` of each trial against each swept key (hollow: not finished); None when nothing is logged.

    A grey line joins the mean over the finished trials at each value of the key (e.g. over seeds).
    """
    plotted = [row for row in rows if row.best is not None]
    if not plotted:
        return None
    keys = swept_keys([row.trial for row in rows])
    varied = [k for k in keys if len({json.dumps(r.trial.overrides.get(k)) for r in rows}) > 1] or keys
    varied = varied or ["trial"]  # Trials without overrides: one point per trial.
    fig = Figure(figsize=(PANEL_WIDTH_IN * len(varied), PANEL_HEIGHT_IN), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(varied), squeeze=False, sharey=True)[0]
    for ax, key in zip(axes, varied, strict=True):
        values = [row.trial.name if key == "trial" else row.trial.overrides.get(key) for row in plotted]
        xs = _positions(values, ax)
        means: dict[float, list[float]] = {}
        for x, row in zip(xs, plotted, strict=True):
            if row.finished:
                means.setdefault(x, []).append(row.best)
        line = sorted((x, sum(v) / len(v)) for x, v in means.items())
        ax.plot([x for x, _ in line], [m for _, m in line], "-", color="0.6", zorder=1)
        for x, row in zip(xs, plotted, strict=True):
            face = "C0" if row.finished else "none"
            ax.plot([x], [row.best], "o", markerfacecolor=face, markeredgecolor="C0", markersize=7, zorder=2)
            if row is best:
                ax.plot([x], [row.best], "*", color="C3", markersize=15, zorder=3, label=f"best: {row.trial.name}")
        ax.set_xlabel(key)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(f"best {metric} ({'higher' if maximize else 'lower'} is better)")
    if best is not None:
        axes[0].legend(fontsize="small")
    unfinished = len(plotted) - sum(row.finished for row in plotted)
    title = f"{len(plotted)} trial(s)" + (f", {unfinished} not finished (hollow)" if unfinished else "")
    fig.suptitle(f"{title}; grey: mean of the finished trials", fontsize="medium")
    fig.savefig(path, dpi=DPI)
    return path


def write_report(sweep: Sweep, metric: str | None = None) -> Report:
    """Writes SWEEP/report.csv, report.md and report_<metric>.png from the trials' logs as they are now."""
    metric = metric or _default_metric(sweep)
    maximize = maximized(sweep, metric)
    rows = collect(sweep, metric, maximize)
    finished = [row for row in rows if row.finished and row.best is not None]
    pick = max if maximize else min
    best = pick(finished, key=lambda row: row.best) if finished else None
    text = markdown(rows, metric, maximize, best)
    markdown_path = sweep.workdir / "report.md"
    markdown_path.write_text(text)
    csv_path = write_csv(rows, metric, best, sweep.workdir / "report.csv")
    figure = plot(rows, metric, maximize, best, sweep.workdir / f"report_{metric.replace('/', '_')}.png")
    return Report(metric, maximize, rows, best, text, csv_path, markdown_path, figure)
