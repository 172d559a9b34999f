"""Time to the first train step, threefry init (before fast init) vs rbg init (config.fast_init), on mock data.

    python experiments/time_to_first_step.py                  # imagenet_resnet50 and imagenet_vit_b_16, batch 8
    python experiments/time_to_first_step.py --init-only      # init compile time of several families

Each measurement runs in a fresh process, so no compiled init or step is reused
from another. Time runs from `Experiment(config)` to the first finished train
step: building (model, data source), initialising the state (compile + run),
then compiling and running one step. ImageNet is replaced by
`tfds.testing.mock_data`. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ("imagenet_resnet50", "imagenet_vit_b_16")
FAMILIES = ("resnet18", "resnet50", "vit_b_16", "convnext_tiny", "yolov8n")


def first_step(name: str, fast: bool, batch_size: int) -> dict:
    """Seconds from Experiment(config) to the end of the first train step of configs/<name>.py."""
    import jax
    import tensorflow_datasets as tfds

    from jaxdl import configuration
    from jaxdl.experiment import Experiment

    cfg = configuration.load_config(ROOT / "configs" / f"{name}.py")
    cfg.fast_init = fast
    cfg.training.batch_size = batch_size
    cfg.training.progress_bar = False
    cfg.parallel.num_devices = 1
    cfg.dataset.worker_count = 0
    if "repeated_augmentations" in cfg.dataset:  # A small batch need not be a multiple of the recipe's repeats.
        cfg.dataset.repeated_augmentations = 1
    with tfds.testing.mock_data(num_examples=2 * batch_size):
        start = time.perf_counter()
        run = Experiment(cfg)
        built = time.perf_counter()
        init_rng, dropout_rng = run.rngs()
        state = jax.block_until_ready(run.fresh_state(init_rng))
        initialised = time.perf_counter()
        data = run.train_data()
        try:
            batch = next(data)
            read = time.perf_counter()
            state, metrics = run.train_step(state, batch, dropout_rng)
            jax.block_until_ready((state, metrics))
            stepped = time.perf_counter()
        finally:
            data.close()
    return {
        "build": built - start,
        "init": initialised - built,
        "first batch": read - initialised,
        "first step": stepped - read,
        "total": stepped - start,
    }


def init_compile(name: str) -> dict:
    """Seconds to lower and compile model `name`'s init with a threefry key and with the derived rbg key."""
    import jax
    import jax.numpy as jnp

    from jaxdl import models
    from jaxdl.experiment import init_key

    model = models.create_model(name, num_outputs=1000)
    sample = jnp.zeros(models.default_input_shape(model), jnp.float32)
    times = {}
    for label, derive in (("threefry", lambda key: key), ("rbg", init_key)):
        start = time.perf_counter()
        jax.jit(lambda key, derive=derive: model.init(derive(key), sample, train=False)).lower(
            jax.random.key(0)
        ).compile()
        times[label] = time.perf_counter() - start
    return times


def _in_fresh_process(*args: str) -> dict:
    """Runs this script with `args` in a new Python process and returns the JSON it prints last."""
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Print the before/after tables (or one measurement as JSON with --one / --one-init)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--init-only", action="store_true", help="init compile time per family instead")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--one", nargs=2, metavar=("CONFIG", "INIT"), help=argparse.SUPPRESS)
    parser.add_argument("--one-init", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))  # configs/ is imported by the config files.
    if args.one:
        print(json.dumps(first_step(args.one[0], args.one[1] == "rbg", args.batch_size)))
        return
    if args.one_init:
        print(json.dumps(init_compile(args.one_init)))
        return
    if args.init_only:
        print("| model | init compile, threefry (s) | init compile, rbg (s) |")
        print("|---|---:|---:|")
        for name in args.families.split(","):
            times = _in_fresh_process("--one-init", name)
            print(f"| {name} | {times['threefry']:.1f} | {times['rbg']:.1f} |", flush=True)
        return
    print(f"batch {args.batch_size}, one device, mock ImageNet; seconds")
    print()
    print("| config | init | build | init (compile + run) | first batch | first step (compile + run) | total |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.configs.split(","):
        for init in ("threefry", "rbg"):
            t = _in_fresh_process("--one", name, init, "--batch-size", str(args.batch_size))
            print(
                f"| {name} | {init} | {t['build']:.1f} | {t['init']:.1f} | {t['first batch']:.1f} | "
                f"{t['first step']:.1f} | {t['total']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
