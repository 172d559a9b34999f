"""Plain vs residual networks at two depths: the course's "34-layer plain vs residual" figure in small.

  python experiments/residual_vs_plain.py [--out runs/residual_vs_plain] [--epochs 15] [--width 16]

Trains plain18, plain34, resnet18 and resnet34 (CIFAR stem, `--width` channels in
the first stage) on the shipped digits dataset with the same recipe, each as its
own jaxdl workdir, then draws their training and validation loss curves in one
PNG (plain dashed, residual solid; the deeper net of each kind darker) and
prints a markdown table of the final losses and test accuracy. He et al. (2016,
Fig. 4) saw the deeper plain net train *worse* than the shallower one and the
deeper residual net train better; the table says whether this run shows the same.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402

from jaxdl import (  # noqa: E402
    configuration,
    runlog,  # noqa: E402
    train,
)

ROOT = Path(__file__).resolve().parent.parent
NETS = ("plain18", "plain34", "resnet18", "resnet34")


def config_for(name: str, epochs: float, width: int, seed: int) -> ml_collections.ConfigDict:
    """digits, the given net with the CIFAR stem, momentum SGD with cosine decay."""
    config = configuration.load_config(ROOT / "configs" / "digits_cnn.py")
    config.seed = seed
    config.model.name = name
    config.model.kwargs = ml_collections.ConfigDict(dict(cifar_stem=True, width=width, image_size=8))
    config.optimizer.name = "momentum"
    config.optimizer.learning_rate = 0.05
    config.optimizer.weight_decay = 1e-4
    config.schedule.name = "cosine"
    config.schedule.warmup_steps = 20
    config.training.batch_size = 64
    config.training.num_epochs = float(epochs)
    config.training.eval_every_steps = 20
    config.training.log_every_steps = 5
    config.training.checkpoint_every_steps = 1000
    return config


def curves(workdir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """(steps, values) of train/loss and val/loss from a workdir's metrics.jsonl."""
    out = {}
    for key in ("train/loss", "val/loss"):
        rows = [(r["step"], r[key]) for r in runlog.read_metrics(workdir) if key in r]
        out[key] = ([s for s, _ in rows], [v for _, v in rows])
    return out


def plot(results: dict[str, dict], path: Path) -> None:
    """Train (left) and validation (right) loss of every net, on a log scale."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colours = {"plain18": "#f4a582", "plain34": "#b2182b", "resnet18": "#92c5de", "resnet34": "#2166ac"}
    for name, result in results.items():
        style = "--" if name.startswith("plain") else "-"
        for ax, key in zip(axes, ("train/loss", "val/loss"), strict=True):
            steps, values = result["curves"][key]
            ax.plot(steps, values, style, color=colours[name], label=name, linewidth=1.6)
    for ax, title in zip(axes, ("training loss", "validation loss"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.set_ylim(top=10.0)  # Early validation losses of untrained BatchNorm statistics are off the chart.
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cross-entropy")
    axes[1].legend()
    fig.suptitle("Plain vs residual at 18 and 34 layers (digits)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(results: dict[str, dict]) -> str:
    """Markdown: final train loss (mean of the last 5 logs), best val loss, test accuracy."""
    lines = ["| net | final train loss | best val loss | test accuracy |", "|---|---|---|---|"]
    for name, result in results.items():
        train_values = result["curves"]["train/loss"][1]
        final = sum(train_values[-5:]) / len(train_values[-5:])
        result["final_train_loss"] = final
        lines.append(f"| {name} | {final:.4f} | {result['best_val_loss']:.4f} | {result['test']['accuracy']:.4f} |")
    verdict = []
    get = {name: r["final_train_loss"] for name, r in results.items()}
    if {"plain18", "plain34"} <= set(get):
        verdict.append(f"deeper plain trains {'worse' if get['plain34'] > get['plain18'] else 'better'}")
    if {"resnet18", "resnet34"} <= set(get):
        verdict.append(f"deeper residual trains {'better' if get['resnet34'] < get['resnet18'] else 'worse'}")
    return "\n".join(lines) + ("\n\n" + "; ".join(verdict) + "." if verdict else "")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/residual_vs_plain")
    parser.add_argument("--epochs", type=float, default=15)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nets", default=",".join(NETS), help="comma-separated subset of " + ", ".join(NETS))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.nets.split(","):
        config = config_for(name, args.epochs, args.width, args.seed)
        config.training.progress_bar = False
        workdir = out / name
        result = train.train_and_evaluate(config, workdir)
        results[name] = {**result, "curves": curves(workdir)}
        print(f"{name}: test {runlog.format_metrics(result['test'])}", flush=True)
    plot(results, out / "residual_vs_plain.png")
    text = table(results)
    (out / "residual_vs_plain.md").write_text(text + "\n")
    print(text)
    print(f"figure: {out / 'residual_vs_plain.png'}")
    return results


if __name__ == "__main__":
    main()
