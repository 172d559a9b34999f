"""Command line: `jaxdl-train` (also `python -m jaxdl.main`) and `jaxdl-eval`.

  jaxdl-train --config=configs/digits_cnn.py --workdir=runs/digits [--config.key=value ...]
  jaxdl-eval --workdir=runs/digits [--split=test] [--predictions=FILE]

Flags are parsed here and nothing else happens here. Every error a user can
cause (a `jaxdl.errors.UserError`: config, file, workdir, data) is printed as one
line, with exit code 2 for config and workdir problems and 1 for the rest; a
traceback means a bug in jaxdl.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from jaxdl import configuration
from jaxdl.cli import report, setup_logging
from jaxdl.errors import UserError


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxdl-train",
        description="Train a jaxdl experiment; any config key can be overridden as --config.key=value.",
    )
    parser.add_argument("--config", required=True, help="path of a config file defining get_config()")
    parser.add_argument("--workdir", required=True, help="where checkpoints, logs and results go")
    return parser


def train_cli(argv: Sequence[str] | None = None) -> int:
    """Entry point of jaxdl-train; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _train_parser()
    overrides = [a[len("--config.") :] for a in argv if a.startswith("--config.")]
    args = parser.parse_args([a for a in argv if not a.startswith("--config.")])
    setup_logging()
    try:
        config = configuration.load_config(args.config)
        configuration.apply_overrides(config, overrides)
        from jaxdl import train  # Imported late: flag errors need no JAX start-up.

        result = train.train_and_evaluate(config, args.workdir)
    except UserError as error:
        return report(parser.prog, error)
    if "test" in result:
        print(json.dumps(result["test"], indent=2))
    return 0


def eval_cli(argv: Sequence[str] | None = None) -> int:
    """Entry point of jaxdl-eval: test metrics of a workdir's best checkpoint."""
    parser = argparse.ArgumentParser(prog="jaxdl-eval", description="Evaluate a jaxdl workdir's best checkpoint.")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--split", default=None, help="split to evaluate (default: the config's test split)")
    parser.add_argument(
        "--predictions",
        default=None,
        help="also write the split's predictions here: detection a COCO results JSON (+ .gt.json), "
        "segmentation a folder of mask PNGs with iou.csv, classification a top-k CSV (+ .confusion.csv)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging()
    from jaxdl import provenance, train

    try:
        metrics = train.evaluate_workdir(args.workdir, args.split, predictions=args.predictions)
    except UserError as error:
        return report(parser.prog, error)
    # What differs from the environment the run was trained in, so a changed number can be traced to it.
    for line in provenance.present_differences(args.workdir):
        print(f"{parser.prog}: provenance: {line}", file=sys.stderr)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(train_cli())
