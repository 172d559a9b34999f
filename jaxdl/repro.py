"""`jaxdl-repro --workdir=RUN [--steps K]`: retrains a stretch of a run and checks that it gives the same state.

Without `--steps`, the run's earliest kept checkpoint is restored and trained to
the next kept one; with `--steps K`, training starts from scratch and goes to
the checkpoint at step K. Either way it runs the training loop itself
(`train.train_and_evaluate` on a scratch copy of the workdir that holds only
the starting checkpoint), then compares the checksum of the state and of the
data-iterator state that each checkpoint's meta records (`checkpoint.state_checksum`),
then the validation metrics logged in between. It prints `reproduced`, or the
first leaves that differ with their largest absolute difference (exit code 1).

Guarantees: on CPU a run reproduces bit for bit. On a GPU only with XLA's
deterministic ops (`--xla_gpu_deterministic_ops=true`), which jaxdl-repro adds
to XLA_FLAGS before JAX starts; the run being checked must have been trained
with the flag too (its provenance.json says whether it was). jaxdl-repro
retrains in one process: a run trained over several processes recorded process
0's iterator state and shards (see `checkpoint.state_checksum`), so it is
checked leaf by leaf and its iterator state will not match.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from jaxdl.cli import report, setup_logging
from jaxdl.errors import UserError, WorkdirError

DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"
SHOWN_LEAVES = 10  # Differing leaves printed by name (the line above them counts all).


class _Reached(Exception):
    """Raised by the stop hook once the loop has saved the target step."""


def deterministic_xla() -> str:
    """Adds XLA's deterministic GPU ops to XLA_FLAGS unless set; returns the flags the backend will read."""
    import jax._src.xla_bridge as xla_bridge  # Only to ask whether the flags can still take effect.

    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_gpu_deterministic_ops" not in flags and not xla_bridge.backends_are_initialized():
        flags = os.environ["XLA_FLAGS"] = f"{flags} {DETERMINISTIC_FLAG}".strip()
    return flags


def _plan(workdir: Path, steps: int | None) -> tuple[int, int, str]:
    """(start step, target step, kind of the target checkpoint); a run that cannot be checked is a WorkdirError."""
    from jaxdl import checkpoint

    if not (workdir / "config.json").is_file():
        raise WorkdirError(f"{workdir} holds no config.json: is it a jaxdl workdir?")
    kept = best = []
    if (workdir / "checkpoints").is_dir():
        with checkpoint.Checkpoints(workdir) as saved:
            kept, best = saved.steps("latest"), saved.steps("best")
    listed = ", ".join(map(str, kept)) or "none"
    if steps is None:
        if len(kept) < 2:
            raise WorkdirError(
                f"{workdir} keeps {len(kept)} checkpoint(s) (steps: {listed}); jaxdl-repro needs two: train with "
                "--config.training.keep_checkpoints=2 (or more) and --config.training.checkpoint_every_steps "
                "below the run's length, or give --steps K for a kept step K"
            )
        return kept[0], kept[1], "latest"
    if steps in kept or steps in best:
        return 0, steps, "latest" if steps in kept else "best"
    raise WorkdirError(
        f"{workdir} holds no checkpoint at step {steps} (kept: {listed}); give --steps one of those, or train "
        f"with --config.training.checkpoint_every_steps dividing {steps}"
    )


def _scratch_copy(workdir: Path, start: int) -> Path:
    """A new workdir beside `workdir` holding its config, logs and record and only the checkpoint at `start`."""
    try:
        scratch = Path(tempfile.mkdtemp(prefix=f".{workdir.name}.repro-", dir=workdir.parent))
    except OSError:  # A read-only parent: the system's temporary directory.
        scratch = Path(tempfile.mkdtemp(prefix=f"{workdir.name}.repro-"))
    # Logs are truncated to the start step by the loop; the record makes a changed environment a warning line.
    for name in ("config.json", "inputs.json", "provenance.json") + (("metrics.jsonl",) if start else ()):
        if (workdir / name).is_file():
            shutil.copy2(workdir / name, scratch / name)
    if start:
        shutil.copytree(workdir / "checkpoints" / str(start), scratch / "checkpoints" / str(start))
    return scratch


def _retrain(workdir: Path, scratch: Path, target: int) -> None:
    """Trains the scratch copy with the run's config until the loop has saved step `target`."""
    from jaxdl import configuration, train

    config = configuration.read_config(workdir / "config.json")

    def stop(step: int, state) -> None:
        del state
        if step >= target:  # Hooks run after the step's save: the checkpoint at `target` is written.
            raise _Reached

    try:
        train.train_and_evaluate(config, scratch, hooks=[stop])
    except _Reached:
        return
    raise WorkdirError(f"retraining {workdir} ended before step {target}")


def _validation(workdir: Path, start: int, target: int) -> dict[int, dict]:
    """The val/ metrics logged at steps in (start, target]."""
    path = workdir / "metrics.jsonl"
    logged = {}
    if not path.is_file():
        return logged
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        values = {k: v for k, v in record.items() if k.startswith("val/")}
        if values and start < record["step"] <= target:
            logged.setdefault(record["step"], {}).update(values)
    return logged


def leaf_differences(saved, again) -> tuple[list[tuple[str, float]], int]:
    """([(leaf name, max |difference|)] of the leaves that differ, in tree order; number of leaves compared)."""
    import jax
    import numpy as np

    from jaxdl.checkpoint import leaf_name

    def flat(tree) -> dict:
        return {leaf_name(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}

    saved, again = flat(saved), flat(again)
    differing = []
    for name in list(saved) + [n for n in again if n not in saved]:
        if name not in saved or name not in again or saved[name].shape != again[name].shape:
            differing.append((name, math.inf))
        elif saved[name].dtype != again[name].dtype or saved[name].tobytes() != again[name].tobytes():
            difference = np.abs(saved[name].astype(np.float64) - again[name].astype(np.float64))
            differing.append((name, float(np.nanmax(difference)) if difference.size else 0.0))
    return differing, len(saved)


def _say_gpu_mode(workdir: Path, say: Callable[[str], None]) -> None:
    """On a GPU: whether XLA's deterministic ops are on here, and whether they were for the run."""
    import jax

    from jaxdl import provenance

    if jax.default_backend() != "gpu":
        return
    flags = os.environ.get("XLA_FLAGS", "")
    on = DETERMINISTIC_FLAG in flags.split()
    say(f"GPU: XLA's deterministic ops are {'on' if on else 'OFF'} ({DETERMINISTIC_FLAG if on else flags!r})")
    recorded = (provenance.read(workdir) or {}).get("environment", {}).get("XLA_FLAGS") or ""
    if DETERMINISTIC_FLAG not in recorded.split():
        say(f"note: the run was not trained with {DETERMINISTIC_FLAG}; on a GPU it need not reproduce exactly")


def _compare_states(workdir: Path, scratch: Path, target: int, kind: str, say: Callable[[str], None]) -> str | None:
    """The state checksum both checkpoints at `target` share, or None after saying how they differ."""
    from jaxdl import checkpoint

    with checkpoint.Checkpoints(workdir) as saved, checkpoint.Checkpoints(scratch) as again:
        again_kind = next((k for k in ("latest", "best") if target in again.steps(k)), None)
        if again_kind is None:
            raise WorkdirError(
                f"retraining {workdir} saved no checkpoint at step {target}: the run saved it off its "
                "checkpoint_every_steps schedule (a preemption); check another stretch with --steps K"
            )
        recorded, new = saved.meta(target, kind).get("checksum"), again.meta(target, again_kind)["checksum"]
        if recorded is None:
            say("the run's checkpoints carry no checksum (saved by an older jaxdl): comparing their arrays")
        if recorded is None or recorded["state"] != new["state"]:
            differing, total = leaf_differences(
                saved.restore_step(target, kind)[0], again.restore_step(target, again_kind)[0]
            )
            if differing:
                say(f"NOT reproduced: {len(differing)} of {total} state leaves differ at step {target}; first ones:")
                for name, difference in differing[:SHOWN_LEAVES]:
                    say(f"  {name}: max |difference| {difference:.3g}")
                return None
    if recorded is not None and recorded["data"] != new["data"]:
        say(f"NOT reproduced: the data-iterator state at step {target} differs (the run read other batches)")
        return None
    return new["state"]


def _compare_validation(workdir: Path, scratch: Path, start: int, target: int, say: Callable[[str], None]) -> bool:
    """Whether the val/ metrics logged in (start, target] are equal; says each that is not."""
    run_val, new_val = _validation(workdir, start, target), _validation(scratch, start, target)
    for step in sorted(run_val.keys() | new_val.keys()):
        for key in sorted(run_val.get(step, {}).keys() | new_val.get(step, {}).keys()):
            old, new = run_val.get(step, {}).get(key), new_val.get(step, {}).get(key)
            if old != new:
                say(f"NOT reproduced: {key} at step {step}: {old} (run) vs {new} (again)")
    return run_val == new_val


def reproduce(workdir: str | Path, steps: int | None = None, *, say: Callable[[str], None] = print) -> bool:
    """Retrains part of `workdir` (see the module doc) and says whether it reproduced; returns True if it did."""
    workdir = Path(workdir)
    start, target, kind = _plan(workdir, steps)
    _say_gpu_mode(workdir, say)
    say(f"retraining {workdir} from {f'step {start}' if start else 'scratch'} to step {target}")
    began = time.time()
    scratch = _scratch_copy(workdir, start)
    try:
        _retrain(workdir, scratch, target)
        checksum = _compare_states(workdir, scratch, target, kind, say)
        if checksum is None or not _compare_validation(workdir, scratch, start, target, say):
            return False
        validated = sorted(_validation(workdir, start, target))
        checked = f"validation at steps {', '.join(map(str, validated))}" if validated else "no validation between"
        say(
            f"reproduced: steps {start} -> {target} give the run's state bit for bit (checksum {checksum}), "
            f"its data-iterator state, {checked}; {time.time() - began:.1f} s"
        )
        return True
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def repro_cli(argv: Sequence[str] | None = None) -> int:
    """Entry point of jaxdl-repro: exit code 0 when the run reproduced, 1 when not, 2 for a run it cannot check."""
    parser = argparse.ArgumentParser(
        prog="jaxdl-repro",
        description="Retrain the stretch between a run's first two kept checkpoints (or its first K steps) "
        "and check it gives the same state bit for bit.",
    )
    parser.add_argument("--workdir", required=True, help="a trained (or training) jaxdl workdir")
    parser.add_argument("--steps", type=int, default=None, help="train K steps from scratch; compare with step K")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    deterministic_xla()  # Before JAX starts its backend: XLA reads its flags once.
    setup_logging()
    try:
        return 0 if reproduce(args.workdir, args.steps) else 1
    except UserError as error:
        return report(parser.prog, error)


if __name__ == "__main__":
    sys.exit(repro_cli())
