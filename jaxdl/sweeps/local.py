"""Running a sweep's trials: N at a time as local processes with the devices divided, or one in this process.

Each local trial is `python -m jaxdl.main --config=C --workdir=SWEEP/<trial> --config.k=v ...`
with its share of the devices:

- CPU: each process gets `--xla_force_host_platform_device_count` = the parent's count // N (at least 1);
- GPUs, at least N of them: each process gets len(GPUs) // N of them through CUDA_VISIBLE_DEVICES;
- fewer GPUs than N: processes share a GPU, each preallocating XLA_PYTHON_CLIENT_MEM_FRACTION =
  0.9 / (processes on that GPU) instead of JAX's default 75% (which would leave the second none).

A finished trial (results.json) is skipped; a started one resumes from its checkpoints, since
the training loop resumes any workdir that holds them.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence

from jaxdl.sweeps.trials import Sweep, Trial

_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
# What N processes sharing one GPU preallocate together: JAX's own default leaves 25% to CUDA and others.
_SHARED_GPU_MEMORY = 0.9


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a trial ended: 'finished', 'skipped' (finished before), 'stopped' (by a signal, resumable), 'failed'."""

    trial: Trial
    status: str
    exit_code: int = 0


def gpu_ids(env: Mapping[str, str]) -> list[str]:
    """The GPUs the processes may use: CUDA_VISIBLE_DEVICES, else nvidia-smi's; none when JAX is told CPU."""
    platforms = env.get("JAX_PLATFORMS", "").lower()
    if platforms and not any(name in platforms for name in ("cuda", "gpu")):
        return []
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = []
        for item in visible.split(","):
            if item.strip() in ("", "-1"):  # CUDA stops reading the list at an invalid entry.
                break
            ids.append(item.strip())
        return ids
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listed.splitlines() if line.strip()]


def _cpu_device_count(env: Mapping[str, str]) -> int:
    count = 1
    for flag in env.get("XLA_FLAGS", "").split():
        if flag.startswith(_DEVICE_COUNT_FLAG + "="):
            count = int(flag.split("=", 1)[1])
    return count


def device_shares(parallel: int, env: Mapping[str, str], gpus: Sequence[str] | None = None) -> list[dict[str, str]]:
    """The environment changes of each of `parallel` process slots, dividing this machine's devices."""
    gpus = gpu_ids(env) if gpus is None else list(gpus)
    if gpus and len(gpus) >= parallel:
        per = len(gpus) // parallel
        return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[i * per : (i + 1) * per])} for i in range(parallel)]
    if gpus:
        placed = [gpus[i % len(gpus)] for i in range(parallel)]
        shares = []
        for gpu in placed:
            sharing = placed.count(gpu)
            share = {"CUDA_VISIBLE_DEVICES": gpu}
            if sharing > 1:
                share["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{_SHARED_GPU_MEMORY / sharing:.3g}"
            shares.append(share)
        return shares
    count = _cpu_device_count(env)
    per = max(count // parallel, 1)
    if per == count:
        return [{} for _ in range(parallel)]
    flags = [flag for flag in env.get("XLA_FLAGS", "").split() if not flag.startswith(_DEVICE_COUNT_FLAG)]
    return [{"XLA_FLAGS": " ".join([*flags, f"{_DEVICE_COUNT_FLAG}={per}"])} for _ in range(parallel)]


def describe_share(share: Mapping[str, str]) -> str:
    """One process slot's devices in words, for the sweep's first line."""
    if "CUDA_VISIBLE_DEVICES" in share:
        memory = share.get("XLA_PYTHON_CLIENT_MEM_FRACTION")
        return f"GPU {share['CUDA_VISIBLE_DEVICES']}" + (f" ({memory} of its memory)" if memory else "")
    flag = share.get("XLA_FLAGS", "")
    if _DEVICE_COUNT_FLAG in flag:
        return f"{flag.rsplit('=', 1)[1]} CPU device(s)"
    return "the devices JAX finds"


def describe_shares(shares: Sequence[Mapping[str, str]]) -> str:
    """The process slots' devices in words: 'each on X' when they are alike."""
    words = [describe_share(share) for share in shares]
    return f"each on {words[0]}" if len(set(words)) == 1 else "on " + ", ".join(words)


def trial_command(sweep: Sweep, trial: Trial) -> list[str]:
    """The jaxdl-train command line of one trial."""
    return [
        sys.executable, "-m", "jaxdl.main", f"--config={sweep.config}", f"--workdir={sweep.trial_dir(trial)}",
        *[f"--config.{item}" for item in [*sweep.overrides, *trial.override_args()]],
    ]  # fmt: skip


def _forward_output(prefix: str, stream, lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            sys.stdout.write(f"[{prefix}] {line}")
            sys.stdout.flush()


def _say(lock: threading.Lock, text: str) -> None:
    with lock:
        print(f"[sweep] {text}", flush=True)


def run_parallel(
    sweep: Sweep, trials: Sequence[Trial], parallel: int, env: Mapping[str, str] | None = None
) -> list[Outcome]:
    """Runs `trials` (finished ones skipped) as up to `parallel` processes at once; returns how each ended.

    A failed trial is reported and the others go on. The first SIGINT or SIGTERM
    starts no new trial and is forwarded to the running ones (jaxdl saves a
    checkpoint and stops on SIGTERM); a second one kills them.
    """
    env = dict(os.environ if env is None else env)
    shares = device_shares(parallel, env)
    lock = threading.Lock()
    outcomes = {t.index: Outcome(t, "skipped") for t in trials if sweep.finished(t)}
    pending = deque(t for t in trials if t.index not in outcomes)
    resuming = sum(sweep.started(t) for t in pending)
    _say(
        lock,
        f"{len(trials)} trial(s): {len(outcomes)} finished (skipped), {resuming} to resume, "
        f"{len(pending) - resuming} to start; {parallel} at a time, {describe_shares(shares)}",
    )
    running: dict[int, tuple[Trial, subprocess.Popen, threading.Thread]] = {}
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        for _, process, _ in running.values():
            if process.poll() is None and len(received) == 1:
                process.send_signal(signum)
            elif process.poll() is None:  # The first signal lets the trials stop cleanly; a second one insists.
                process.kill()

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while (pending and not received) or running:
            for slot in range(parallel):
                if slot in running or not pending or received:
                    continue
                trial = pending.popleft()
                _say(lock, f"{'resuming' if sweep.started(trial) else 'starting'} {trial.name}")
                # Own session: a terminal's Ctrl-C reaches each trial once, forwarded from here.
                process = subprocess.Popen(
                    trial_command(sweep, trial), env={**env, **shares[slot]}, stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True,
                )  # fmt: skip
                reader = threading.Thread(target=_forward_output, args=(trial.name, process.stdout, lock), daemon=True)
                reader.start()
                running[slot] = (trial, process, reader)
            for slot, (trial, process, reader) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                reader.join(timeout=5)
                del running[slot]
                # A trial ended by the signal forwarded to it is stopped, not failed: a re-launch resumes it.
                outcomes[trial.index] = Outcome(trial, "stopped") if received and code else _outcome(sweep, trial, code)
                _say(lock, f"{trial.name}: {_describe(outcomes[trial.index])}")
            time.sleep(0.1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for _, process, _ in running.values():  # The sweep itself failing must not leave orphans.
            if process.poll() is None:
                process.kill()
                process.wait()
    return [outcomes.get(t.index, Outcome(t, "stopped")) for t in trials]


def _outcome(sweep: Sweep, trial: Trial, code: int) -> Outcome:
    if code == 0:
        # jaxdl-train exits 0 after a SIGTERM too, with a checkpoint and no results.
        return Outcome(trial, "finished" if sweep.finished(trial) else "stopped")
    return Outcome(trial, "failed", 128 - code if code < 0 else code)


def _describe(outcome: Outcome) -> str:
    if outcome.status == "failed":
        return f"failed (exit code {outcome.exit_code})"
    return {"stopped": "stopped; run the sweep again to resume it"}.get(outcome.status, outcome.status)


def run_in_process(sweep: Sweep, trials: Sequence[Trial]) -> list[Outcome]:
    """Trains `trials` one after the other in this process (a job array's task; scripts); skips finished ones."""
    from jaxdl import train  # Imported late: listing and reporting a sweep need no JAX start-up.

    outcomes = []
    for trial in trials:
        if sweep.finished(trial):
            print(f"[sweep] {trial.name}: finished before, skipped", flush=True)
            outcomes.append(Outcome(trial, "skipped"))
            continue
        print(f"[sweep] {'resuming' if sweep.started(trial) else 'starting'} {trial.name}", flush=True)
        result = train.train_and_evaluate(sweep.trial_config(trial), sweep.trial_dir(trial))
        outcomes.append(Outcome(trial, "stopped" if result.get("preempted") else "finished"))
        if result.get("preempted"):
            break  # SIGTERM: the job is being stopped; the trials left run on the next launch.
    return outcomes


def failures(outcomes: Sequence[Outcome]) -> str:
    """One line naming the trials that did not finish, or '' when all did."""
    bad = [o for o in outcomes if o.status not in ("finished", "skipped")]
    if not bad:
        return ""
    named = ", ".join(f"{o.trial.name} ({_describe(o)})" for o in bad)
    return f"{len(bad)} of {len(outcomes)} trial(s) did not finish: {named}; run the same command again to retry them"
