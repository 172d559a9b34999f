"""One LSTM training step, side by side: jaxdl's `lstm`, flax's OptimizedLSTMCell, and PyTorch's nn.LSTM (CPU).

  python experiments/benchmark_lstm.py [--batch=64] [--steps=128] [--hidden=256] [--repeats=5] [--unroll=1]

Each framework runs the same step: a 2-layer LSTM (input 8, 256 units) over
[batch, steps, 8], a Dense head on the last layer's final hidden state, mean
squared error, backward, and an Adam update. After warm-up (compilation), the
frameworks alternate `--repeats` times, each timing `--iters` steps, so a burst
of load from other processes hits them alike; the median steps/s is reported
with the achieved GFLOP/s against the matmul FLOP count below. On a shared
machine the numbers are noisy: compare the ratios, and rerun.

FLOP count (multiply-add = 2 FLOPs, matmuls only; the gate arithmetic is O(B T H)):
forward per layer 2 B T (F_in + H) 4H, plus the head; backward about twice the
forward (gradients for both the inputs and the weights of every matmul).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxdl import models  # noqa: E402


def flop_count(batch: int, steps: int, features: int, hidden: int, layers: int) -> dict[str, float]:
    """Matmul FLOPs of one forward and one forward+backward pass."""
    forward = 0.0
    inputs = features
    for _ in range(layers):
        forward += 2.0 * batch * steps * (inputs + hidden) * 4 * hidden
        inputs = hidden
    forward += 2.0 * batch * hidden  # The 1-output head.
    return {"forward": forward, "train_step": 3.0 * forward}


class FlaxLSTM(nn.Module):
    """Stacked flax.linen.RNN(OptimizedLSTMCell) layers with a Dense head on the final hidden state."""

    hidden: int
    layers: int
    unroll: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, T, F] -> [B, 1]."""
        for i in range(self.layers):
            x = nn.RNN(nn.OptimizedLSTMCell(self.hidden), unroll=self.unroll, name=f"rnn_{i}")(x)
        return nn.Dense(1, name="head")(x[:, -1])


def jax_runner(model: nn.Module, x: np.ndarray, y: np.ndarray):
    """A closure running one jitted train step (forward, MSE, backward, Adam) per call."""
    params = model.init(jax.random.key(0), x[:1])["params"]
    optimizer = optax.adam(1e-3)
    state = {"params": params, "opt": optimizer.init(params)}

    @jax.jit
    def step(state, x, y):
        def loss_fn(params):
            return jnp.mean((model.apply({"params": params}, x) - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt = optimizer.update(grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, loss

    x, y = jnp.asarray(x), jnp.asarray(y)
    holder = [state]

    def run(iters: int) -> None:
        loss = None
        for _ in range(iters):
            holder[0], loss = step(holder[0], x, y)
        jax.block_until_ready(loss)

    return run


def torch_runner(x: np.ndarray, y: np.ndarray, hidden: int, layers: int):
    """The same step in PyTorch: nn.LSTM + nn.Linear, MSE, backward, Adam."""
    import torch

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(x.shape[-1], hidden, num_layers=layers, batch_first=True)
    head = torch.nn.Linear(hidden, 1)
    params = list(lstm.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def run(iters: int) -> None:
        for _ in range(iters):
            optimizer.zero_grad(set_to_none=True)
            _, (h_n, _) = lstm(xt)
            loss = torch.mean((head(h_n[-1]) - yt) ** 2)
            loss.backward()
            optimizer.step()

    return run


def main() -> None:
    """Parse flags, time the three implementations alternately, print a table and JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--unroll", type=int, default=1, help="jaxdl's scan unroll (1 measured fastest on CPU)")
    parser.add_argument("--flax-unroll", type=int, default=1, help="flax.linen.RNN's unroll")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iters", type=int, default=2, help="train steps per timed repeat")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    parser.add_argument("--skip", default="", help="comma-separated names to leave out: jaxdl,flax,torch")
    parser.add_argument("--out", default="", help="also write the results here as JSON")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, args.steps, args.features)).astype(np.float32)
    y = rng.standard_normal((args.batch, 1)).astype(np.float32)
    jaxdl_model = models.create_model(
        "lstm", num_outputs=1, hidden_size=args.hidden, num_layers=args.layers, unroll=args.unroll
    )
    runners = {
        "jaxdl": lambda: jax_runner(jaxdl_model, x, y),
        "flax": lambda: jax_runner(FlaxLSTM(args.hidden, args.layers, args.flax_unroll), x, y),
        "torch": lambda: torch_runner(x, y, args.hidden, args.layers),
    }
    skip = set(filter(None, args.skip.split(",")))
    runs = {}
    for name, build in runners.items():
        if name in skip:
            continue
        start = time.perf_counter()
        runs[name] = build()
        runs[name](1)  # Compiles (JAX) or warms the allocator (torch).
        runs[name](1)
        print(f"{name}: warm-up {time.perf_counter() - start:.1f} s", flush=True)

    rates: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run(args.iters)
            rates[name].append(args.iters / (time.perf_counter() - start))
        print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(f"{n} {r[-1]:.3f}" for n, r in rates.items()))

    flops = flop_count(args.batch, args.steps, args.features, args.hidden, args.layers)
    print(
        f"\nB={args.batch} T={args.steps} F={args.features} H={args.hidden} layers={args.layers}, "
        f"{os.cpu_count()} CPU cores, torch threads {args.threads}, jaxdl unroll {args.unroll}"
    )
    print(f"FLOPs per train step: {flops['train_step'] / 1e9:.2f} GFLOP (forward {flops['forward'] / 1e9:.2f})")
    results = {"args": vars(args), "gflop_per_step": flops["train_step"] / 1e9, "frameworks": {}}
    reference = statistics.median(rates["jaxdl"]) if "jaxdl" in rates else None
    for name, values in rates.items():
        median = statistics.median(values)
        gflops = median * flops["train_step"] / 1e9
        ratio = median / reference if reference else float("nan")
        print(
            f"{name:>6}: {median:.3f} steps/s (min {min(values):.3f}, max {max(values):.3f}), "
            f"{gflops:.1f} GFLOP/s, {ratio:.2f}x jaxdl"
        )
        results["frameworks"][name] = {"steps_per_s": median, "all": values, "gflop_per_s": gflops}
    print("(shared machine: timings are noisy; the ratios from alternating repeats are the more stable figure)")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
