"""Train step time of the two shapes segmenters, `unet` vs `unet_resnet18`, at one batch size.

    python experiments/benchmark_segmentation.py [--batch 16] [--steps 20] [--repeats 3]

Each config is built as a run builds it (jaxdl.experiment.Experiment), one
batch of its real pipeline is held on the device, and the compiled train step
is timed over --steps steps after two warm-up steps; the median of --repeats
rounds is reported, with the compile time and the forward FLOPs of one image.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

from jaxdl import configuration, models  # noqa: E402
from jaxdl.experiment import Experiment  # noqa: E402

CONFIGS = ("shapes_unet", "shapes_unet_resnet18")


def time_config(name: str, batch: int, steps: int, repeats: int) -> dict:
    """Median steps/s, compile time and GFLOPs per image of one config's train step."""
    config = configuration.load_config(ROOT / "configs" / f"{name}.py")
    config.training.batch_size = batch
    config.parallel.num_devices = 1
    run = Experiment(config)
    rng = jax.random.key(config.seed)
    state = run.fresh_state(rng)
    held = jax.device_put(next(iter(run.eval_batches(config.dataset.train_split))))
    held = {k: v for k, v in held.items() if k != "mask"}
    start = time.perf_counter()
    step = run.train_step
    state, metrics = step(state, held, rng)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    rates = []
    for _ in range(repeats):
        for _ in range(2):
            state, metrics = step(state, held, rng)
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, held, rng)
        jax.block_until_ready(metrics)
        rates.append(steps / (time.perf_counter() - start))
    gflops = models.flops(config.model.name, input_size=64, num_outputs=4, **config.model.kwargs.to_dict()) / 1e9
    median = statistics.median(rates)
    return {
        "model": config.model.name,
        "params": models.count_params(state.params),
        "steps_per_s": median,
        "ms_per_step": 1000 / median,
        "compile_and_first_step_s": compile_s,
        "forward_gflops_per_image": gflops,
        "all_rates": rates,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    results = {name: time_config(name, args.batch, args.steps, args.repeats) for name in CONFIGS}
    print(json.dumps({"batch": args.batch, "devices": str(jax.devices()), **results}, indent=2))
    return results


if __name__ == "__main__":
    main()
