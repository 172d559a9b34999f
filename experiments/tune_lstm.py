"""The course's LSTM tuning study: the sweep sweeps/tune_lstm.py, with the course's table and loss curves.

The grid (epochs x learning rate x hidden units x layers) is the sweep file's
`get_sweep()`, called with this script's lists; every setting trains as a trial
of a jaxdl sweep (OUT/<its overrides>, recorded in OUT/sweep.json), one after the
other in this process, from a forecasting config (default configs/sunspots_lstm.py).
The study writes

- OUT/summary.md: one table row per setting (best validation loss, test RMSE of
  the best-validation checkpoint, RMSE of the AR(p = lookback) baseline on the
  same test windows) and the setting chosen by validation loss;
- OUT/curves.png: train and validation loss (scaled MSE) against epochs, one panel
  per setting, the best validation point starred.

A finished setting is not trained again and a killed one resumes, as in any
sweep; `jaxdl-sweep --workdir=OUT --report` tabulates the same trials.

  python experiments/tune_lstm.py --out runs/tune_lstm
  python experiments/tune_lstm.py --epochs 30 60 --learning-rates 0.01 --hidden-sizes 16 32 64 --num-layers 1
  python experiments/tune_lstm.py --set model.name=gru   # any config key, as --config.KEY=VALUE of jaxdl-train
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

# The file-only backend, chosen before pyplot is imported: runs on headless machines.
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

try:
    from jaxdl import configuration
except ImportError:
    # Run as `python experiments/tune_lstm.py` from a checkout that is not pip-installed.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from jaxdl import configuration
from jaxdl.errors import UserError  # noqa: E402
from jaxdl.runlog import read_metrics  # noqa: E402
from jaxdl.sweeps import local  # noqa: E402
from jaxdl.sweeps.trials import Sweep  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SWEEP_FILE = ROOT / "sweeps" / "tune_lstm.py"
# The sweep file's keys, in the order of setting_name's arguments.
GRID_KEYS = ("training.num_epochs", "optimizer.learning_rate", "model.kwargs.hidden_size", "model.kwargs.num_layers")
PANEL_WIDTH_IN, PANEL_HEIGHT_IN, MAX_COLUMNS, DPI = 4.2, 3.0, 4, 100


def setting_name(epochs: float, learning_rate: float, hidden_size: int, num_layers: int) -> str:
    """The table label of one grid point (its workdir is named by the sweep, after its overrides)."""
    return f"ep{epochs:g}_lr{learning_rate:g}_h{hidden_size}_l{num_layers}"


def grid(epochs, learning_rates, hidden_sizes, num_layers) -> list[dict]:
    """The trials of sweeps/tune_lstm.py for these lists."""
    spec = importlib.util.spec_from_file_location("_tune_lstm_sweep", SWEEP_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_sweep(epochs, learning_rates, hidden_sizes, num_layers)


def steps_per_epoch(config) -> float:
    """Optimizer steps per pass over the training windows."""
    from jaxdl.data import timeseries

    windows = len(timeseries.window_source(config.dataset, config.dataset.train_split))
    return windows / config.training.batch_size


def summary_table(rows: list[dict]) -> str:
    """Markdown: one row per setting and the one chosen by validation loss."""
    lines = [
        "| setting | epochs | learning rate | hidden units | layers | best val loss | test RMSE | AR RMSE | beats AR |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['epochs']:g} | {row['learning_rate']:g} | {row['hidden_size']} | "
            f"{row['num_layers']} | {row['best_val_loss']:.4f} | {row['test_rmse']:.3f} | {row['ar_rmse']:.3f} | "
            f"{'yes' if row['test_rmse'] <= row['ar_rmse'] else 'no'} |"
        )
    best = min(rows, key=lambda row: row["best_val_loss"])
    lines += [
        "",
        f"Chosen by validation loss: **{best['name']}**, test RMSE {best['test_rmse']:.3f} "
        f"against AR's {best['ar_rmse']:.3f} (val loss is the MSE of scaled values; RMSE in original units).",
    ]
    return "\n".join(lines) + "\n"


def plot_losses(rows: list[dict], out: Path) -> Path:
    """Train (solid) and validation (dashed) loss per setting, against epochs, log scale."""
    ncols = min(len(rows), MAX_COLUMNS)
    nrows = math.ceil(len(rows) / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(PANEL_WIDTH_IN * ncols, PANEL_HEIGHT_IN * nrows),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    try:
        for index, row in enumerate(rows):
            ax = axes[index // ncols][index % ncols]
            records = read_metrics(row["workdir"])
            for key, style, label in (("train/loss", "-", "train"), ("val/loss", "--", "validation")):
                points = sorted({r["step"]: r[key] for r in records if key in r}.items())
                if points:
                    epochs = [step / row["steps_per_epoch"] for step, _ in points]
                    ax.plot(epochs, [value for _, value in points], style, label=label)
            ax.plot(
                [row["best_step"] / row["steps_per_epoch"]],
                [row["best_val_loss"]],
                "k*",
                markersize=10,
                label="best val",
            )
            ax.set_yscale("log")
            ax.set_title(
                f"{row['name']}\ntest RMSE {row['test_rmse']:.2f} (AR {row['ar_rmse']:.2f})", fontsize="medium"
            )
            ax.set_xlabel("epoch")
            ax.grid(True, which="both", alpha=0.3)
            if index % ncols == 0:
                ax.set_ylabel("loss (MSE, scaled)")
        for index in range(len(rows), nrows * ncols):
            axes[index // ncols][index % ncols].set_visible(False)
        axes[0][0].legend(fontsize="small")
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=DPI)
    finally:
        plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the grid as a sweep; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "sunspots_lstm.py"), help="forecasting config")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "tune_lstm", help="study folder")
    parser.add_argument("--epochs", type=float, nargs="+", default=[20.0, 60.0])
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[1e-2])
    parser.add_argument("--hidden-sizes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--num-layers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    rows = []
    try:
        trials = grid(args.epochs, args.learning_rates, args.hidden_sizes, args.num_layers)
        sweep = Sweep.prepare(args.out, args.config, SWEEP_FILE, ["training.progress_bar=false", *args.set], trials)
        config = sweep.trial_config(sweep.trials[0])
        if config.task.name != "forecasting":
            raise configuration.ConfigError(
                f"{args.config} is a '{config.task.name}' config; the study needs forecasting"
            )
        local.run_in_process(sweep, sweep.trials)
        for trial in sweep.trials:
            results = json.loads((sweep.trial_dir(trial) / "results.json").read_text())
            point = [trial.overrides[key] for key in GRID_KEYS]
            epochs, learning_rate, hidden_size, num_layers = point
            rows.append(
                {
                    "name": setting_name(*point),
                    "workdir": sweep.trial_dir(trial),
                    "epochs": epochs,
                    "learning_rate": learning_rate,
                    "hidden_size": hidden_size,
                    "num_layers": num_layers,
                    "best_val_loss": results["best_val_loss"],
                    "best_step": results["best_step"],
                    "test_rmse": results["test"]["rmse"],
                    "ar_rmse": results["baseline"]["rmse"],
                    "steps_per_epoch": steps_per_epoch(sweep.trial_config(trial)),
                }
            )
    except UserError as error:
        print(f"tune_lstm.py: error: {' '.join(str(error).split())}", file=sys.stderr)
        return error.exit_code
    table = summary_table(rows)
    (args.out / "summary.md").write_text(table)
    png = plot_losses(rows, args.out / "curves.png")
    print(table)
    print(f"curves: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
