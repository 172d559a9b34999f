#!/bin/bash
# One jaxdl-train run over the GPUs of several SLURM nodes: one process per GPU.
#
#   sbatch experiments/launch_slurm.sh --config=configs/imagenet_resnet50.py --workdir=runs/resnet50
#
# Edit the #SBATCH lines below (or override them on the sbatch command line, e.g.
# `sbatch --nodes=4 experiments/launch_slurm.sh ...`): --ntasks-per-node must equal
# the GPUs per node. The arguments are jaxdl-train's, passed on unchanged;
# --config.parallel.distributed=true is appended, and the coordinator address,
# process count and process id are left empty so that JAX reads them from SLURM
# (SLURM_STEP_NODELIST's first node, SLURM_NTASKS, SLURM_PROCID; the port comes
# from SLURM_JOB_ID). Each process then uses GPU number SLURM_LOCALID of its
# node, so every task must see all of its node's GPUs: request them per node
# (--gpus-per-node), not bound per task (no --gpus-per-task / --gpu-bind).
#
# The workdir must be on a file system all nodes share (checkpoints are written
# by every process). Resuming is the same command: a preempted or requeued job
# continues from its latest checkpoint. Locally, without SLURM, use
# experiments/launch_local.py.
#
# Environment: JAXDL_PYTHON (default: python) is the interpreter srun starts,
# e.g. the path of a virtual environment's python.

#SBATCH --job-name=jaxdl
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%j.out
#SBATCH --signal=TERM@120
#   (SIGTERM two minutes before the time limit: jaxdl saves a checkpoint and stops.)

set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: sbatch $0 --config=CONFIG.py --workdir=DIR [--config.key=value ...]" >&2
    exit 2
fi

# --kill-on-bad-exit: one failed process ends the step instead of leaving the others
# hanging in a collective.
exec srun --kill-on-bad-exit=1 "${JAXDL_PYTHON:-python}" -m jaxdl.main "$@" --config.parallel.distributed=true
