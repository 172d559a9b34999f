"""What every jaxdl command line shares: how it logs and how it prints a user error.

The entry points (jaxdl-train, -eval, -predict, -wordseg, -bench, -repro,
-sweep, -data, -export) parse their own flags; this module holds only what they
have in common, so a CLI does not import another CLI's module for it.
"""

from __future__ import annotations

import logging
import sys

from jaxdl.errors import UserError


def setup_logging() -> None:
    """INFO logs of the run on stderr; the libraries' own chatter only from WARNING up."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # Libraries' own INFO chatter (orbax, absl) would bury the run's output.
    for name in ("absl", "orbax", "jax"):
        logging.getLogger(name).setLevel(logging.WARNING)


def report(prog: str, error: UserError) -> int:
    """Prints a user error as one line on stderr; returns its exit code."""
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)
    return error.exit_code
