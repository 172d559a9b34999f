"""Compile time and activation memory of a ViT's forward+backward: looped vs scanned blocks, with and without remat.

    python experiments/vit_compile.py                       # vit_l_16, batch 2 at 224 (minutes on a CPU)
    python experiments/vit_compile.py --model=vit_mini --image-size=32

Nothing is allocated: params and inputs are abstract (jax.ShapeDtypeStruct) and
the step is only lowered and compiled. "temp" is XLA's temporary buffer size for
the compiled step (`memory_analysis().temp_size_in_bytes`), which is where the
saved activations live. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax

from jaxdl import models

POLICIES = ("none", "full", "dots_saveable")


def measure(name: str, batch: int, image_size: int, scan: bool, remat: str) -> dict:
    """Lower and compile the loss gradient of model `name`; timings in seconds and temp memory in bytes."""
    model = models.create_model(name, num_outputs=1000, image_size=image_size, scan_layers=scan, remat=remat)
    params = models.abstract_variables(model, (1, image_size, image_size, 3))["params"]
    images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    key = jax.eval_shape(lambda: jax.random.key(0))

    def loss(params, images, labels, key):
        logits = model.apply({"params": params}, images, train=True, rngs={"dropout": key})
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    start = time.perf_counter()
    lowered = jax.jit(jax.value_and_grad(loss)).lower(params, images, labels, key)
    traced = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    memory = compiled.memory_analysis()
    return {"trace": traced - start, "compile": done - traced, "temp": memory.temp_size_in_bytes}


def main() -> None:
    """Measure every (layout, policy) pair and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_l_16")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated remat policies")
    args = parser.parse_args()
    print(f"{args.model}, batch {args.batch} at {args.image_size}, forward+backward, {jax.devices()[0].device_kind}")
    print()
    print("| layout | remat | trace+lower (s) | compile (s) | temp memory (MiB) |")
    print("|---|---|---:|---:|---:|")
    for remat in args.policies.split(","):
        for scan in (False, True):
            row = measure(args.model, args.batch, args.image_size, scan, remat)
            layout = "scanned" if scan else "looped"
            print(
                f"| {layout} | {remat} | {row['trace']:.1f} | {row['compile']:.1f} | {row['temp'] / 2**20:,.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
