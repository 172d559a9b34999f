"""Starts N `jaxdl-train` processes of one multi-process run on this machine (CPU collectives, gloo).

  python experiments/launch_local.py -n N [--devices_per_process K] -- <jaxdl-train args>

For example, 2 processes with 2 simulated CPU devices each (4 devices in all):

  python experiments/launch_local.py -n 2 --devices_per_process 2 -- \\
      --config=configs/digits_cnn.py --workdir=runs/digits_2x2

Process i runs `python -m jaxdl.main <jaxdl-train args>` with
`--config.parallel.distributed=true --config.parallel.coordinator_address=127.0.0.1:<free port>
--config.parallel.num_processes=N --config.parallel.process_id=i` appended; with
`--devices_per_process K` it also gets `JAX_PLATFORMS=cpu` and
`XLA_FLAGS=--xla_force_host_platform_device_count=K` (other XLA flags are kept).
Every output line (stdout and stderr) is printed as `[i] line`. SIGINT and SIGTERM
are forwarded to every process (on SIGTERM jaxdl saves a checkpoint and stops; run
the same command again to resume); a second signal kills them. When a process
fails, the others are killed (a collective with a dead peer would hang;
checkpoints are atomic, so nothing half written survives) and the launcher exits
with the first non-zero exit code (128 + the signal number for a process killed
by a signal); otherwise with 0.

For tests and laptops; on a cluster use experiments/launch_slurm.sh.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_env(devices_per_process: int | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The children's environment: `base` (default os.environ), with K simulated CPU devices when K is given."""
    env = dict(os.environ if base is None else base)
    if devices_per_process:
        flags = [flag for flag in env.get("XLA_FLAGS", "").split() if not flag.startswith(_DEVICE_COUNT_FLAG)]
        env["XLA_FLAGS"] = " ".join([*flags, f"{_DEVICE_COUNT_FLAG}={devices_per_process}"])
        env["JAX_PLATFORMS"] = "cpu"
    return env


def train_commands(num_processes: int, train_args: Sequence[str], port: int) -> list[list[str]]:
    """One `python -m jaxdl.main` command line per process, joined by a coordinator on `port`."""
    return [
        [
            sys.executable, "-m", "jaxdl.main", *train_args,
            "--config.parallel.distributed=true",
            f"--config.parallel.coordinator_address=127.0.0.1:{port}",
            f"--config.parallel.num_processes={num_processes}",
            f"--config.parallel.process_id={index}",
        ]
        for index in range(num_processes)
    ]  # fmt: skip


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _forward_output(index: int, stream, lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            sys.stdout.write(f"[{index}] {line}")
            sys.stdout.flush()


def supervise(commands: Sequence[Sequence[str]], env: dict[str, str] | None = None) -> int:
    """Runs `commands` concurrently, prefixing their output; returns the first non-zero exit code, else 0.

    A failure kills the other processes. The first SIGINT or SIGTERM received meanwhile
    is forwarded to all of them; a second one kills them.
    """
    lock = threading.Lock()
    processes: list[subprocess.Popen] = []
    readers: list[threading.Thread] = []

    received = []

    def forward(signum, frame):
        received.append(signum)
        for p in processes:
            if p.poll() is not None:
                continue
            if len(received) == 1:
                p.send_signal(signum)
            else:  # The first signal lets the processes stop cleanly; a second one insists.
                p.kill()

    # Installed first: a signal that arrives while the processes start is forwarded to those started.
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    first_failure = 0
    try:
        for index, command in enumerate(commands):
            # Own session: a terminal's Ctrl-C reaches each process once, forwarded from here.
            process = subprocess.Popen(
                list(command), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                start_new_session=True,
            )  # fmt: skip
            processes.append(process)
            readers.append(threading.Thread(target=_forward_output, args=(index, process.stdout, lock), daemon=True))
            readers[-1].start()
        while None in (codes := [p.poll() for p in processes]):
            failed = [code for code in codes if code not in (None, 0)]
            if failed and not first_failure:
                first_failure = _exit_code(failed[0])
                for p in processes:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.05)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for p in processes:  # The launcher itself failing must not leave orphans.
            if p.poll() is None:
                p.kill()
                p.wait()
        for reader in readers:
            reader.join(timeout=5)
    if not first_failure:
        failed = [p.returncode for p in processes if p.returncode != 0]
        first_failure = _exit_code(failed[0]) if failed else 0
    return first_failure


def main(argv: Sequence[str] | None = None) -> int:
    """Parses `-n N [--devices_per_process K] -- <jaxdl-train args>` and runs the N processes."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(
        prog="launch_local.py",
        description=__doc__.splitlines()[0],
        usage="%(prog)s -n N [--devices_per_process K] -- <jaxdl-train args>",
    )
    parser.add_argument("-n", "--num_processes", type=int, required=True, help="processes to start")
    parser.add_argument(
        "--devices_per_process",
        type=int,
        default=None,
        help="simulated CPU devices per process (sets JAX_PLATFORMS=cpu)",
    )
    args = parser.parse_args(argv[:split])
    train_args = argv[split + 1 :]
    if args.num_processes < 1:
        parser.error(f"-n must be at least 1, got {args.num_processes}")
    if args.devices_per_process is not None and args.devices_per_process < 1:
        parser.error(f"--devices_per_process must be at least 1, got {args.devices_per_process}")
    if not train_args:
        parser.error("give the jaxdl-train arguments after --, e.g. -- --config=configs/digits_cnn.py --workdir=runs/x")
    commands = train_commands(args.num_processes, train_args, free_port())
    return supervise(commands, process_env(args.devices_per_process))


if __name__ == "__main__":
    sys.exit(main())
