#!/bin/bash
# A jaxdl sweep as a SLURM job array: array task I trains trial I of the sweep, on one node's GPUs.
#
#   jaxdl-sweep --config=configs/digits_cnn.py --sweep=sweeps/digits_lr_seed.py --workdir=runs/S --list
#   sbatch --array=0-7 experiments/launch_slurm_sweep.sh \
#       --config=configs/digits_cnn.py --sweep=sweeps/digits_lr_seed.py --workdir=runs/S
#   jaxdl-sweep --workdir=runs/S --report          # at any time, from any machine that sees runs/S
#
# `--list` records the sweep in runs/S/sweep.json, checks every override against the
# config and prints the trials with their indices and the --array range to submit
# (0 to trials - 1; an index past the trials fails with one line naming the range).
# The arguments are jaxdl-sweep's, passed on unchanged (`--config.key=value` overrides
# apply to every trial); `--array_index=$SLURM_ARRAY_TASK_ID` is appended. With the
# sweep recorded, `--workdir=runs/S` alone is enough.
#
# Each task runs its trial in one process that sees the GPUs requested below (JAX uses
# all of them). A finished trial is skipped and a preempted or requeued one resumes from
# its latest checkpoint, so resubmitting the same array (or only the failed indices,
# e.g. --array=3,5) completes the sweep. The workdir must be on a file system the
# nodes share. Locally, use `jaxdl-sweep ... --parallel N` instead.
#
# Environment: JAXDL_PYTHON (default: python) is the interpreter srun starts,
# e.g. the path of a virtual environment's python.

#SBATCH --job-name=jaxdl-sweep
#SBATCH --array=0-7
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --output=slurm-%A_%a.out
#SBATCH --signal=TERM@120
#   (SIGTERM two minutes before the time limit: jaxdl saves a checkpoint and stops.)

set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: sbatch --array=0-(N-1) $0 --config=CONFIG.py --sweep=SWEEP.py --workdir=DIR [--config.key=value ...]" >&2
    exit 2
fi
if [[ -z "${SLURM_ARRAY_TASK_ID:-}" ]]; then
    echo "$0: not a job array task; submit with sbatch --array=0-(N-1) (jaxdl-sweep ... --list prints N)" >&2
    exit 2
fi

# srun makes the trial a job step, so that --signal's SIGTERM reaches it.
exec srun "${JAXDL_PYTHON:-python}" -m jaxdl.sweeps.cli "$@" --array_index="$SLURM_ARRAY_TASK_ID"
