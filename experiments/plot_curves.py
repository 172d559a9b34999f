"""Plot train/val curves from one or more workdirs' metrics.jsonl into one PNG."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

# Select the file-only backend before pyplot is imported: runs on headless machines.
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

try:
    from jaxdl.runlog import read_metrics
except ImportError:
    # Run as `python experiments/plot_curves.py` from a checkout that is not
    # pip-installed: the repository root is then missing from sys.path.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from jaxdl.runlog import read_metrics

SUBPLOT_WIDTH_IN = 5.0
SUBPLOT_HEIGHT_IN = 3.5
DPI = 100
MAX_COLUMNS = 3
# Split prefix -> line style; train solid and val dashed as in most papers.
SPLIT_STYLES = {"train": "-", "val": "--", "test": ":"}
BEST_MARKER = "*"


def _detect_metrics(runs: Sequence[list[dict[str, Any]]]) -> list[str]:
    """Returns base names of split-prefixed keys, loss first, then alphabetical."""
    names: set[str] = set()
    for records in runs:
        for record in records:
            for key in record:
                split, sep, base = key.partition("/")
                if sep and split in SPLIT_STYLES and base:
                    names.add(base)
    return sorted(names, key=lambda name: (name != "loss", name))


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Returns (steps, values) for `key`, sorted by step, last write per step winning."""
    by_step: dict[int, float] = {}
    for record in records:
        value = record.get(key)
        step = record.get("step")
        if step is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            by_step[int(step)] = float(value)
    steps = sorted(by_step)
    return steps, [by_step[step] for step in steps]


def _run_labels(workdirs: Sequence[Path]) -> list[str]:
    """Labels runs by directory name, falling back to the full path on clashes."""
    names = [workdir.resolve().name for workdir in workdirs]
    if len(set(names)) == len(names):
        return names
    return [str(workdir) for workdir in workdirs]


def plot_curves(
    workdirs: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    metrics: Sequence[str] | None = None,
) -> Path:
    """Draws one subplot per metric for all workdirs and saves it as a PNG."""
    if not workdirs:
        raise ValueError("at least one workdir is required")
    paths = [Path(workdir) for workdir in workdirs]
    runs = []
    for path in paths:
        if not (path / "metrics.jsonl").is_file():
            raise FileNotFoundError(f"{path} has no metrics.jsonl")
        runs.append(read_metrics(path))
    metric_names = list(metrics) if metrics else _detect_metrics(runs)
    if not metric_names:
        raise ValueError("no train/ or val/ metrics found; pass --metrics to choose keys explicitly")
    out_path = Path(out) if out is not None else paths[0] / "curves.png"

    ncols = min(len(metric_names), MAX_COLUMNS)
    nrows = math.ceil(len(metric_names) / ncols)
    # No bbox_inches="tight" on save, so the image size is exactly figsize * DPI.
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(SUBPLOT_WIDTH_IN * ncols, SUBPLOT_HEIGHT_IN * nrows),
        squeeze=False,
        layout="constrained",
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = _run_labels(paths)
    splits_drawn: set[str] = set()
    best_drawn = False
    missing = []
    try:
        for index, name in enumerate(metric_names):
            ax = axes[index // ncols][index % ncols]
            drawn = False
            for run_index, records in enumerate(runs):
                color = colors[run_index % len(colors)]
                # A bare key (e.g. lr, steps_per_sec) has no split; draw it solid.
                candidates = [(split, f"{split}/{name}") for split in SPLIT_STYLES]
                candidates.append(("", name))
                for split, key in candidates:
                    steps, values = _series(records, key)
                    if not steps:
                        continue
                    ax.plot(steps, values, linestyle=SPLIT_STYLES.get(split, "-"), color=color)
                    drawn = True
                    if split:
                        splits_drawn.add(split)
                if name == "loss":
                    steps, values = _series(records, "val/loss")
                    finite = [(v, s) for s, v in zip(steps, values, strict=True) if math.isfinite(v)]
                    if finite:
                        best_value, best_step = min(finite)
                        ax.plot(
                            [best_step],
                            [best_value],
                            marker=BEST_MARKER,
                            markersize=12,
                            color=color,
                            linestyle="none",
                        )
                        best_drawn = True
            if not drawn:
                missing.append(name)
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(name)
            ax.set_xlabel("step")
            ax.grid(True, alpha=0.3)
        if len(missing) == len(metric_names):
            raise ValueError(f"none of the metrics {metric_names} occur in the workdirs")
        for index in range(len(metric_names), nrows * ncols):
            axes[index // ncols][index % ncols].set_visible(False)

        # One legend: colours identify runs, line styles identify splits.
        handles = [Line2D([], [], color=colors[i % len(colors)], label=label) for i, label in enumerate(labels)]
        handles += [
            Line2D([], [], color="black", linestyle=style, label=split)
            for split, style in SPLIT_STYLES.items()
            if split in splits_drawn
        ]
        if best_drawn:
            handles.append(
                Line2D(
                    [],
                    [],
                    color="black",
                    marker=BEST_MARKER,
                    linestyle="none",
                    markersize=10,
                    label="best val loss",
                )
            )
        axes[0][0].legend(handles=handles, fontsize="small")

        out_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_path, dpi=DPI)
    finally:
        plt.close(fig)
    return out_path


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("workdirs", nargs="+", type=Path, help="run directories")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output PNG (default: WORKDIR/curves.png of the first)",
    )
    parser.add_argument("--metrics", default=None, help="comma-separated base names, e.g. accuracy,loss")
    args = parser.parse_args(argv)
    metrics = None
    if args.metrics:
        metrics = [name.strip() for name in args.metrics.split(",") if name.strip()]
    try:
        out_path = plot_curves(args.workdirs, args.out, metrics)
    except (FileNotFoundError, ValueError) as exc:
        print(f"plot_curves.py: error: {exc}", file=sys.stderr)
        return 2
    print(out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
