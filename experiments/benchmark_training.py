"""Benchmarks of the training core: end-to-end time, compile time, input-pipeline overhead.

  python experiments/benchmark_training.py [--config=configs/digits_cnn.py] [--steps=300]

Prints (and writes to --out as JSON):
- the shipped default experiment end to end, including compilation (wall time, time
  to first step, test accuracy), in a fresh workdir;
- steps/s of the compiled train step fed by the real grain pipeline versus the
  same step fed one batch held on device; their ratio says how much the pipeline
  costs (1.0: nothing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402

from jaxdl import configuration, train  # noqa: E402


def end_to_end(config_path: str) -> dict:
    """Runs the whole experiment in a fresh workdir and returns its results."""
    config = configuration.load_config(config_path)
    config.training.progress_bar = False
    with tempfile.TemporaryDirectory() as workdir:
        start = time.time()
        results = train.train_and_evaluate(config, workdir)
        wall = time.time() - start
    return {
        "wall_s": wall,
        "time_to_first_step_s": results["time_to_first_step_s"],
        "test_accuracy": results["test"].get("accuracy"),
        "steps": results["final_step"],
    }


def _timed(step, state, batches, rng, steps: int):
    """Steps per second over `steps` steps after two warm-up steps."""
    for _ in range(2):
        state, metrics = step(state, next(batches), rng)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, next(batches), rng)
    jax.block_until_ready(metrics)
    return steps / (time.perf_counter() - start), state


def pipeline_overhead(config_path: str, steps: int, repeats: int = 5, worker_count: int = 0) -> dict:
    """Steps/s with the real pipeline vs one on-device batch, alternated `repeats` times.

    The ratio is the median over repeats of each adjacent pair, which cancels
    slow drifts of the machine's speed.
    """
    config = configuration.load_config(config_path)
    run = train.Experiment(config)
    rng = jax.random.key(config.seed)
    state = run.fresh_state(rng)
    step = run.train_step
    real = run.train_data(worker_count)
    held = next(real)

    class _Same:
        def __next__(self):
            return held

    rates = {"pipeline": [], "on_device": []}
    for _ in range(repeats):
        rate, state = _timed(step, state, real, rng, steps)
        rates["pipeline"].append(rate)
        rate, state = _timed(step, state, _Same(), rng, steps)
        rates["on_device"].append(rate)
    real.close()
    ratios = [p / d for p, d in zip(rates["pipeline"], rates["on_device"], strict=True)]
    return {
        "steps_per_s_pipeline": statistics.median(rates["pipeline"]),
        "steps_per_s_on_device": statistics.median(rates["on_device"]),
        "ratio": statistics.median(ratios),
        "all_runs": rates,
    }


def main() -> None:
    """Runs both benchmarks and prints a JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/digits_cnn.py")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--out", default="")
    parser.add_argument("--worker_count", type=int, default=0, help="grain worker processes of the pipeline")
    args = parser.parse_args()
    report = {
        "device": str(jax.devices()[0].device_kind),
        "num_devices": jax.device_count(),
        "end_to_end": end_to_end(args.config),
        "input_pipeline": pipeline_overhead(args.config, args.steps, worker_count=args.worker_count),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
