"""One table of chosen metrics across finished runs, Markdown or LaTeX, with mean ± std over seeds.

  python experiments/results_table.py runs/*                                  # Markdown, the test metrics
  python experiments/results_table.py runs/* --metrics test/accuracy,test/loss --latex > table.tex

Each run is a workdir with results.json and config.json. Runs whose configs
are equal but for the keys in IGNORED_KEYS (the seed, and keys that never
change the numbers) form one row: its cells are the mean ± the sample standard
deviation (n - 1) over those runs, and its `n` column says how many there are.
Rows are named by the config keys that differ between rows (by their
workdirs when more than MAX_LABEL_KEYS differ). A metric is a
'/'-path into results.json (`test/accuracy` is results["test"]["accuracy"],
`best_value` a top-level number); the default is every test metric.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

try:
    from jaxdl import configuration
except ImportError:  # Run from a checkout that is not pip-installed.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from jaxdl import configuration
from jaxdl.errors import WorkdirError

# Config keys that do not make runs different experiments: the seed (what rows average over)
# and keys that only say where files go or how progress shows.
IGNORED_KEYS = (
    "seed",
    "compilation_cache_dir",
    "dataset.data_dir",
    "training.progress_bar",
    "training.async_checkpoints",
    "profile_steps",
)


# Rows are named by the config keys that differ between them when there are at most this many.
MAX_LABEL_KEYS = 3


class TableError(Exception):
    """A problem with the runs or flags given, described in one line."""


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'a.b': value} of a nested dict; lists become JSON text so that they compare and print."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else value
    return flat


def read_run(workdir: Path) -> dict | None:
    """{'name', 'results', 'config' (flat)} of a finished run, or None when it has no results.json."""
    path = workdir / "results.json"
    if not path.is_file():
        return None
    config = configuration.read_config(workdir / "config.json")  # Fills keys added since old runs were saved.
    return {"name": workdir.name, "results": json.loads(path.read_text()), "config": flatten(config.to_dict())}


def group_hash(config: dict, ignored: Sequence[str]) -> str:
    """The config's hash computed without the ignored keys (what makes runs seeds of one experiment)."""
    kept = {k: v for k, v in config.items() if k not in ignored}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def metric_value(results: dict, metric: str) -> float | None:
    """results.json's number at '/'-path `metric`, or None."""
    value = results
    for part in metric.split("/"):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def default_metrics(runs: Sequence[dict]) -> list[str]:
    """Every test metric of the runs, in the order the first run that has it lists them."""
    names = {}
    for run in runs:
        names.update(dict.fromkeys(f"test/{k}" for k in run["results"].get("test", {})))
    return list(names)


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def build_rows(runs: Sequence[dict], metrics: Sequence[str], ignored: Sequence[str]) -> list[dict]:
    """One row per group of runs equal but for `ignored`: {'label', 'n', 'cells': {metric: (mean, std) | None}}."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(group_hash(run["config"], ignored), []).append(run)
    configs = [members[0]["config"] for members in groups.values()]
    keys = sorted({k for c in configs for k in c} - set(ignored))
    differing = [k for k in keys if len({json.dumps(c.get(k), default=str) for c in configs}) > 1]
    rows = []
    for members in groups.values():
        config = members[0]["config"]
        if differing and len(differing) <= MAX_LABEL_KEYS:
            label = ", ".join(f"{k}={config.get(k)}" for k in differing)
        else:  # Runs alike in all but the seed, or too unlike to name by keys: named by their workdirs.
            names = [r["name"] for r in members]
            label = ", ".join(names[:3]) + (f", … ({len(names)} runs)" if len(names) > 3 else "")
        cells = {}
        for metric in metrics:
            values = [v for v in (metric_value(r["results"], metric) for r in members) if v is not None]
            cells[metric] = mean_std(values) if values else None
        rows.append({"label": label, "n": len(members), "cells": cells})
    return sorted(rows, key=lambda row: row["label"])


def _cell(value: tuple[float, float | None] | None, digits: int, plus_minus: str) -> str:
    if value is None:
        return "–"
    mean, std = value
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f}{plus_minus}{std:.{digits}f}"


def markdown(rows: Sequence[dict], metrics: Sequence[str], digits: int) -> str:
    """The rows as a Markdown table."""
    lines = ["| run | n | " + " | ".join(metrics) + " |", "|---|---:|" + "---:|" * len(metrics)]
    for row in rows:
        cells = [_cell(row["cells"][m], digits, " ± ") for m in metrics]
        label = row["label"].replace("|", "\\|")  # A transform chain's '|' would end the cell.
        lines.append(f"| {label} | {row['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _latex_text(text: str) -> str:
    for char in "\\&%$#_{}":
        text = text.replace(char, "\\" + char if char != "\\" else "\\textbackslash{}")
    return text


def latex(rows: Sequence[dict], metrics: Sequence[str], digits: int) -> str:
    """The rows as a LaTeX tabular (booktabs rules)."""
    lines = [
        "\\begin{tabular}{l r " + "r " * len(metrics) + "}",
        "\\toprule",
        "run & $n$ & " + " & ".join(_latex_text(m) for m in metrics) + " \\\\",
        "\\midrule",
    ]
    for row in rows:
        cells = [_cell(row["cells"][m], digits, " $\\pm$ ").replace("–", "--") for m in metrics]
        lines.append(f"{_latex_text(row['label'])} & {row['n']} & " + " & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines)


def table(
    workdirs: Sequence[str | Path],
    metrics: Sequence[str] = (),
    *,
    as_latex: bool = False,
    digits: int = 4,
    ignore: Sequence[str] = (),
) -> str:
    """The table of `workdirs` (runs without results.json are skipped, with a note on stderr)."""
    runs = []
    for workdir in map(Path, workdirs):
        run = read_run(workdir) if workdir.is_dir() else None
        if run is None:
            print(f"results_table: {workdir}: no results.json (not a finished run); skipped", file=sys.stderr)
        else:
            runs.append(run)
    if not runs:
        raise TableError("none of the runs given has a results.json; give finished workdirs (runs/*)")
    metrics = list(metrics) or default_metrics(runs)
    for metric in metrics:
        if all(metric_value(r["results"], metric) is None for r in runs):
            known = ", ".join(default_metrics(runs)) or "none"
            raise TableError(f"--metrics: '{metric}' is in no run's results.json; test metrics there: {known}")
    rows = build_rows(runs, metrics, IGNORED_KEYS + tuple(ignore))
    return (latex if as_latex else markdown)(rows, metrics, digits)


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the table; exit code 2 for runs or flags it cannot use."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", help="run workdirs (runs/*)")
    parser.add_argument("--metrics", default="", help="comma-separated, e.g. test/accuracy,test/loss")
    parser.add_argument("--latex", action="store_true", help="a LaTeX tabular instead of Markdown")
    parser.add_argument("--digits", type=int, default=4, help="decimals shown")
    parser.add_argument("--ignore", default="", help="further config keys that do not split rows, comma-separated")
    args = parser.parse_args(argv)
    split = [m.strip() for m in args.metrics.split(",") if m.strip()]
    ignore = [k.strip() for k in args.ignore.split(",") if k.strip()]
    try:
        print(table(args.workdirs, split, as_latex=args.latex, digits=args.digits, ignore=ignore))
    except (TableError, WorkdirError) as error:
        print(f"results_table: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
