"""Per-device memory of params plus Adam state, replicated vs FSDP, on 8 simulated CPU devices.

  python experiments/fsdp_memory.py [--models vit_l_16,convnext_large] [--fsdp 8] [--min-size N] [--train-step]

Each model is built with 1000 classes at its `image_size`. Its TrainState
(params, BatchNorm statistics, Adam's two moments and counts, the step) is
produced by one jitted function whose `out_shardings` are the jit strategy's
state shardings: all replicated (mesh data=8), or `parallel.fsdp_spec` over
fsdp=8 (mesh data=1, fsdp=8; `--min-size`, default config.mesh.fsdp_min_size).
The bytes per device are XLA's own accounting of that executable's outputs,
`compile().memory_analysis().output_size_in_bytes` (the SPMD-partitioned program
runs once per device, so its sizes are per device). The function fills the
state with zeros rather than running the model's random init: the outputs,
hence the measured bytes, are the same, and it compiles in a second instead of
the minutes a ViT-L init takes on a CPU.

The analytic column is the expectation from the shapes alone: a sharded array's
bytes / fsdp plus every replicated array whole.

`--train-step` also compiles jaxdl's train step (cross-entropy, Adam, one image
per device) on the state with those shardings, as `JitStrategy.compile_train`
does in a run, and adds its per-device argument bytes (the state plus the
batch) and temporary bytes (activations, gradients, collectives' buffers). It
takes about a minute per model and mesh on a CPU.
"""

from __future__ import annotations

import os

# Before JAX starts: 8 simulated devices.
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from configs import base  # noqa: E402
from jaxdl import models, parallel, steps, tasks  # noqa: E402
from jaxdl.state import TrainState  # noqa: E402

MIB = 2**20
HEADER = (
    "| model | params | replicated MiB/device | FSDP MiB/device | ratio | analytic FSDP MiB/device "
    "| of which replicated (small) MiB |\n|---|---:|---:|---:|---:|---:|---:|"
)

STEP_HEADER = (
    "| model | arguments MiB/device, replicated | arguments MiB/device, FSDP "
    "| temporaries MiB/device, replicated | temporaries MiB/device, FSDP |\n|---|---:|---:|---:|---:|"
)


def abstract_train_state(name: str) -> TrainState:
    """The model's TrainState with Adam, as shape structs (nothing allocated)."""
    model = models.create_model(name, num_outputs=1000)
    sample = jax.ShapeDtypeStruct((1, model.image_size, model.image_size, 3), jnp.float32)

    def init(x):
        variables = model.init(jax.random.key(0), x, train=False)
        return TrainState.create(
            apply_fn=model.apply,
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            tx=optax.adam(1e-3),
        )

    return jax.eval_shape(init, sample)


def measured_bytes(abstract: TrainState, strategy: parallel.JitStrategy) -> tuple[int, float]:
    """(output bytes per device, compile seconds) of a jitted function making the state on `strategy`'s shardings."""
    shardings = strategy.state_shardings(abstract)

    def zeros():
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract)

    start = time.perf_counter()
    compiled = jax.jit(zeros, out_shardings=shardings).lower().compile()
    seconds = time.perf_counter() - start
    return compiled.memory_analysis().output_size_in_bytes, seconds


def train_step_bytes(name: str, abstract: TrainState, strategy: parallel.JitStrategy) -> tuple[int, int]:
    """(argument bytes, temporary bytes) per device of the compiled train step, one image per device."""
    config = base.get_config()
    config.task.num_classes = 1000
    task = tasks.build_task(config)
    size = models.create_model(name, num_outputs=1000).image_size
    count = strategy.mesh.size

    def placed(shape, dtype, sharding):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    state = jax.tree.map(lambda s, sh: placed(s.shape, s.dtype, sh), abstract, strategy.state_shardings(abstract))
    batch = {
        "input": placed((count, size, size, 3), jnp.float32, strategy.batch_sharding),
        "target": placed((count,), jnp.int32, strategy.batch_sharding),
    }
    step = strategy.compile_train(steps.make_train_step(task))
    memory = step.lower(state, batch, jax.random.key(0)).compile().memory_analysis()
    return memory.argument_size_in_bytes, memory.temp_size_in_bytes


def analytic_bytes(abstract: TrainState, fsdp: int, min_size: int) -> tuple[float, float]:
    """(bytes per device, bytes of the replicated arrays) from the shapes and `fsdp_spec`."""
    total = replicated = 0.0
    for leaf in jax.tree.leaves(abstract):
        nbytes = int(np.prod(leaf.shape, dtype=np.int64)) * leaf.dtype.itemsize
        if parallel.fsdp_spec(leaf.shape, fsdp, min_size) == jax.sharding.PartitionSpec():
            total += nbytes
            replicated += nbytes
        else:
            total += nbytes / fsdp
    return total, replicated


def main() -> None:
    """Prints the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit_l_16,convnext_large")
    parser.add_argument("--fsdp", type=int, default=8)
    parser.add_argument("--min-size", type=int, default=base.get_config().mesh.fsdp_min_size)
    parser.add_argument("--train-step", action="store_true", help="also measure the compiled train step")
    args = parser.parse_args()
    devices = len(jax.devices())
    replicated = parallel.JitStrategy(parallel.make_mesh(data=devices, fsdp=1))
    sharded = parallel.JitStrategy(parallel.make_mesh(data=0, fsdp=args.fsdp), fsdp_min_size=args.min_size)
    platform = jax.devices()[0].platform
    print(f"{devices} {platform} devices, jax {jax.__version__}, Adam, fsdp={args.fsdp}, fsdp_min_size={args.min_size}")
    rows, step_rows = [], []
    for name in args.models.split(","):
        abstract = abstract_train_state(name)
        full, full_s = measured_bytes(abstract, replicated)
        part, part_s = measured_bytes(abstract, sharded)
        expected, small = analytic_bytes(abstract, args.fsdp, args.min_size)
        num_params = models.count_params(abstract.params)
        rows.append(
            f"| {name} | {num_params / 1e6:.1f} M | {full / MIB:.1f} | {part / MIB:.1f} | {full / part:.2f} "
            f"| {expected / MIB:.1f} | {small / MIB:.2f} |"
        )
        print(f"{name}: compiled in {full_s:.1f} s (replicated), {part_s:.1f} s (fsdp)", file=sys.stderr)
        if args.train_step:
            (full_args, full_temp), (part_args, part_temp) = (
                train_step_bytes(name, abstract, strategy) for strategy in (replicated, sharded)
            )
            step_rows.append(
                f"| {name} | {full_args / MIB:.1f} | {part_args / MIB:.1f} | {full_temp / MIB:.1f} "
                f"| {part_temp / MIB:.1f} |"
            )
    print(HEADER)
    print("\n".join(rows))
    if step_rows:
        print(f"\nThe compiled train step, one image per device ({devices} images):\n")
        print(STEP_HEADER)
        print("\n".join(step_rows))


if __name__ == "__main__":
    main()
