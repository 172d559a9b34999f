"""How long the train loop stalls per checkpoint save, synchronous vs asynchronous (config.training.async_checkpoints).

  python experiments/checkpoint_stall.py [--model vit_b_16] [--saves 3]

The state is the model's params (1000 classes, at its `image_size`) plus Adam's
two moments, as float32 arrays of random values made on the device by one jitted
function (random rather than zeros, so that no compression makes the files
smaller than a trained state's). Each save goes through `jaxdl.checkpoint.Checkpoints.save_latest`
into a fresh temporary workdir, and between saves a jitted step that donates the
state rewrites every array, as the train step does.

Reported per mode: the stall (the time `save_latest` takes to return: what the loop
waits) and, for async, the time until the files are committed
(`wait_until_finished`, measured after the stall). Each save starts with no
earlier save in flight, i.e. checkpoints further apart than one write takes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

from jaxdl import models  # noqa: E402
from jaxdl.checkpoint import Checkpoints  # noqa: E402


class _NoData:
    """A data-iterator stand-in: the checkpoint's `data` item needs only a state."""

    def get_state(self) -> bytes:
        return b"{}"


def _state(name: str):
    model = models.create_model(name, num_outputs=1000)
    params = models.abstract_variables(model, (1, model.image_size, model.image_size, 3))["params"]
    abstract = {"params": params, "mu": params, "nu": params}
    leaves, treedef = jax.tree.flatten(abstract)

    @jax.jit
    def make(key):
        keys = jax.random.split(key, len(leaves))
        return treedef.unflatten([jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)])

    return make(jax.random.key(0))


def main() -> None:
    """Times `save_latest` sync and async for one model's state and prints one line per mode."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b_16")
    parser.add_argument("--saves", type=int, default=3)
    args = parser.parse_args()

    state = jax.block_until_ready(_state(args.model))
    size = sum(x.nbytes for x in jax.tree.leaves(state))
    step_fn = jax.jit(lambda tree: jax.tree.map(lambda x: x * 0.5 + 1.0, tree), donate_argnums=0)
    print(f"{args.model} params + Adam moments: {size / 2**20:.0f} MiB, {len(jax.tree.leaves(state))} arrays")
    for async_save in (False, True):
        stalls, writes = [], []
        with tempfile.TemporaryDirectory() as workdir, Checkpoints(workdir, async_save=async_save) as checkpoints:
            for step in range(1, args.saves + 1):
                state = jax.block_until_ready(step_fn(state))
                start = time.perf_counter()
                checkpoints.save_latest(step, state, _NoData(), {"step": step})
                stalls.append(time.perf_counter() - start)
                state = step_fn(state)  # The next step donates the saved buffers while the write runs.
                checkpoints.wait_until_finished()
                writes.append(time.perf_counter() - start)
        line = f"{'async' if async_save else 'sync '}: stall per save {statistics.median(stalls):.3f} s (median of "
        line += f"{', '.join(f'{s:.3f}' for s in stalls)})"
        if async_save:
            line += f"; committed after {statistics.median(writes):.3f} s"
        print(line, flush=True)


if __name__ == "__main__":
    main()
