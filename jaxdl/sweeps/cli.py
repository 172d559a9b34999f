"""Command line: `jaxdl-sweep` (also `python -m jaxdl.sweeps.cli`).

  jaxdl-sweep --config=configs/digits_cnn.py --sweep=sweeps/digits_lr_seed.py --workdir=runs/S [--parallel N]
  jaxdl-sweep --workdir=runs/S                       # re-launch: finished trials skipped, killed ones resumed
  jaxdl-sweep --workdir=runs/S --array_index=I       # trial I only, in this process (a SLURM job array's task)
  jaxdl-sweep --workdir=runs/S --report [--metric val/accuracy]
  jaxdl-sweep ... --list                             # the trials and their indices; runs nothing

`--config.key=value` overrides apply to every trial, before the trial's own.
Every user error is one line (exit code 2 for config and workdir problems).
The exit code of a run is 0 when every trial finished, else 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jaxdl.cli import report, setup_logging
from jaxdl.errors import UserError
from jaxdl.sweeps import local
from jaxdl.sweeps import report as sweep_report
from jaxdl.sweeps.trials import Sweep


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxdl-sweep",
        description="Run the trials of a sweep file (a list of config overrides), or report on them. "
        "--config.key=value overrides apply to every trial, before the trial's own.",
    )
    parser.add_argument("--config", help="config file defining get_config()")
    parser.add_argument("--sweep", help="sweep file defining get_sweep() -> list of override dicts")
    parser.add_argument("--workdir", required=True, help="the sweep's folder; each trial gets WORKDIR/<its overrides>")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--parallel", type=int, default=1, help="trials run at once as local processes (default 1)")
    mode.add_argument("--array_index", type=int, default=None, help="run trial I only, in this process (SLURM)")
    mode.add_argument("--report", action="store_true", help="write the table and figure of the trials so far")
    mode.add_argument("--list", action="store_true", help="print the trials with their indices; run nothing")
    parser.add_argument("--metric", default=None, help="metric of the report (default: the runs' best_metric)")
    return parser


def sweep_cli(argv: Sequence[str] | None = None) -> int:
    """Entry point of jaxdl-sweep; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    overrides = [a[len("--config.") :] for a in argv if a.startswith("--config.")]
    args = parser.parse_args([a for a in argv if not a.startswith("--config.")])
    if args.parallel < 1:
        parser.error(f"--parallel must be at least 1, got {args.parallel}")
    setup_logging()
    try:
        if args.report:
            return _report(Sweep.open(args.workdir), args.metric)
        sweep = Sweep.prepare(args.workdir, args.config, args.sweep, overrides)
        if args.list:
            for trial in sweep.trials:
                state = "finished" if sweep.finished(trial) else "started" if sweep.started(trial) else "not started"
                print(f"{trial.index}\t{state}\t{trial.name}")
            print(f"{len(sweep.trials)} trials; as a SLURM job array: sbatch --array=0-{len(sweep.trials) - 1}")
            return 0
        if args.array_index is not None:
            outcomes = local.run_in_process(sweep, [sweep.trial(args.array_index)])
        else:
            outcomes = local.run_parallel(sweep, sweep.trials, args.parallel)
            _report(sweep, args.metric, quiet=True)
    except UserError as error:
        return report(parser.prog, error)
    failed = local.failures(outcomes)
    if failed:
        print(f"{parser.prog}: {failed}", file=sys.stderr)
        return 1
    return 0


def _report(sweep: Sweep, metric: str | None, quiet: bool = False) -> int:
    """Writes the report; `quiet` (after a run) prints where it is instead of the table, and never fails the run."""
    try:
        written = sweep_report.write_report(sweep, metric)
    except UserError as error:
        if not quiet:
            raise
        print(f"[sweep] no report: {' '.join(str(error).split())}", file=sys.stderr)
        return 0
    if not quiet:
        print(written.markdown)
    for path in (written.csv_path, written.markdown_path, written.figure_path):
        if path is not None:
            print(f"[sweep] wrote {path}", file=sys.stderr if quiet else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(sweep_cli())
