"""Command line: `jaxdl-train` (also `python -m jaxdl.main`) and `jaxdl-eval`.

  jaxdl-train --config=configs/digits_cnn.py --workdir=runs/digits [--config.key=value ...]
  jaxdl-eval --workdir=runs/digits [--split=test]

Flags are parsed here and nothing else happens here. Every error a user can
cause (a `jaxdl.errors.UserError`: config, file, workdir, data) is printed as one
line, with exit code 2 for config and workdir problems and 1 for the rest; a
traceback means a bug in jaxdl.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from jaxdl import configuration
from jaxdl.errors import UserError


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxdl-train",
        description="Train a jaxdl experiment; any config key can be overridden as --config.key=value.",
    )
    parser.add_argument("--config", required=True, help="path of a config file defining get_config()")
    parser.add_argument("--workdir", required=True, help="where checkpoints, logs and results go")
    return parser


def setup_logging() -> None:
    """INFO logs of the run on stderr; the libraries' own chatter only from WARNING up."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # Libraries' own INFO chatter (orbax, absl) would bury the run's output.
    for name in ("absl", "orbax", "jax"):
        logging.getLogger(name).setLevel(logging.WARNING)


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


def report(prog: str, error: UserError) -> int:
    """Prints a user error as one line on stderr; returns its exit code."""
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)
    return error.exit_code


def eval_cli(argv: Sequence[str] | None = None) -> int:
    """Entry point of jaxdl-eval: test metrics of a workdir's best checkpoint."""
    parser = argparse.ArgumentParser(prog="jaxdl-eval", description="Evaluate a jaxdl workdir's best checkpoint.")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--split", default=None, help="split to evaluate (default: the config's test split)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging()
    from jaxdl import train

    try:
        metrics = train.evaluate_workdir(args.workdir, args.split)
    except UserError as error:
        return report(parser.prog, error)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(train_cli())
