"""ResNet-18 training-step speed: jaxdl vs a minimal hand-written flax ResNet-18 vs PyTorch.

  python experiments/benchmark_resnet18.py [--batch=64] [--steps=10] [--repeats=5] [--out=FILE]

One training step = forward, backward and an SGD-momentum update with weight
decay, CIFAR stem (3x3 stride-1 conv, no max-pool), 32x32x3 inputs, 10 classes,
float32, BatchNorm in training mode. The three are timed in alternation after a
warm-up; each figure is the median over `repeats` rounds of `steps` steps. Also
prints the compile time of jaxdl's step. PyTorch uses torchvision's resnet18 with
the same stem change, on as many threads as JAX has cores. jaxdl is also timed
with XLA's own conv gradients (`layers.conv_rule("xla")`, jaxdl before its CPU conv rule),
and with the tap weight gradient for every conv (`layers.conv_rule("taps")`,
the dense 3x3 convs included); the hand-written net uses flax's plain
`nn.Conv`, i.e. XLA's rule.

With --compile_imagenet it also reports, for each configs/imagenet_*.py, the
compile time of its full-size train step at 224x224 (batch 8 per device).
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

from jaxdl import configuration, experiment, models, tasks, train  # noqa: E402
from jaxdl.models import layers  # noqa: E402
from jaxdl.state import TrainState  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


class _Block(nn.Module):
    """Basic residual block of the hand-written reference."""

    features: int
    stride: int

    @nn.compact
    def __call__(self, x, train):
        norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)  # noqa: E731
        y = nn.Conv(self.features, (3, 3), self.stride, padding=1, use_bias=False)(x)
        y = nn.relu(norm()(y))
        y = norm()(nn.Conv(self.features, (3, 3), padding=1, use_bias=False)(y))
        if x.shape[-1] != self.features or self.stride != 1:
            x = norm()(nn.Conv(self.features, (1, 1), self.stride, use_bias=False)(x))
        return nn.relu(x + y)


class HandWrittenResNet18(nn.Module):
    """The smallest flax ResNet-18 (CIFAR stem) one would write by hand: the speed reference."""

    num_outputs: int = 10

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(64, (3, 3), padding=1, use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        for i, features in enumerate((64, 128, 256, 512)):
            x = _Block(features, 1 if i == 0 else 2)(x, train)
            x = _Block(features, 1)(x, train)
        return nn.Dense(self.num_outputs)(jnp.mean(x, axis=(1, 2)))


def _jax_step(model: nn.Module, batch: dict):
    """A compiled jaxdl train step and its state for `model`; also returns the compile time."""
    task = tasks.Classification(num_classes=10)
    variables = jax.jit(lambda k: model.init(k, batch["input"], train=False))(jax.random.key(0))
    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))
    state = TrainState.create(
        apply_fn=model.apply, params=variables["params"], batch_stats=variables["batch_stats"], tx=tx
    )
    step = jax.jit(train.make_train_step(task), donate_argnums=0)
    start = time.perf_counter()
    compiled = step.lower(state, batch, jax.random.key(1)).compile()
    return compiled, state, time.perf_counter() - start


def _torch_step(batch: int):
    import torch
    import torchvision

    torch.set_num_threads(os.cpu_count() or 1)
    net = torchvision.models.resnet18(num_classes=10)
    net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = torch.nn.Identity()
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        return loss

    return step


def compare(batch_size: int, steps: int, repeats: int) -> dict:
    """Steps/s of jaxdl, the hand-written flax net and PyTorch, timed in alternation."""
    rng = np.random.default_rng(0)
    batch = {
        "input": jnp.asarray(rng.standard_normal((batch_size, 32, 32, 3)), jnp.float32),
        "target": jnp.asarray(rng.integers(0, 10, batch_size)),
    }
    ours = models.create_model("resnet18", num_outputs=10, cifar_stem=True, image_size=32)
    jaxdl_step, jaxdl_state, compile_s = _jax_step(ours, batch)
    # The conv rule is chosen at trace time, which _jax_step does in a fresh jit.
    with layers.conv_rule("xla"):
        xla_conv_step, xla_conv_state, _ = _jax_step(ours, batch)
    with layers.conv_rule("taps"):  # The tap weight gradient for the dense 3x3 convs too.
        taps_step, taps_state, _ = _jax_step(ours, batch)
    ref_step, ref_state, _ = _jax_step(HandWrittenResNet18(), batch)
    torch_step = _torch_step(batch_size)
    key = jax.random.key(1)
    states = {
        "jaxdl": jaxdl_state,
        "jaxdl_xla_conv": xla_conv_state,
        "jaxdl_taps_conv": taps_state,
        "flax_hand_written": ref_state,
    }
    steps_fn = {
        "jaxdl": jaxdl_step,
        "jaxdl_xla_conv": xla_conv_step,
        "jaxdl_taps_conv": taps_step,
        "flax_hand_written": ref_step,
    }

    def run_jax(name: str) -> float:
        state = states[name]
        for _ in range(2):
            state, metrics = steps_fn[name](state, batch, key)
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = steps_fn[name](state, batch, key)
        jax.block_until_ready(metrics)
        states[name] = state
        return steps / (time.perf_counter() - start)

    def run_torch() -> float:
        for _ in range(2):
            torch_step()
        start = time.perf_counter()
        for _ in range(steps):
            torch_step().item()
        return steps / (time.perf_counter() - start)

    rates = {name: [] for name in (*steps_fn, "pytorch")}
    for _ in range(repeats):
        for name in steps_fn:
            rates[name].append(run_jax(name))
        rates["pytorch"].append(run_torch())
    median = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "batch": batch_size,
        "steps_per_s": median,
        "jaxdl_vs_hand_written": median["jaxdl"] / median["flax_hand_written"],
        "jaxdl_vs_xla_conv": median["jaxdl"] / median["jaxdl_xla_conv"],
        "jaxdl_vs_taps_conv": median["jaxdl"] / median["jaxdl_taps_conv"],
        "jaxdl_vs_pytorch": median["jaxdl"] / median["pytorch"],
        "jaxdl_compile_s": compile_s,
        "all_rounds": rates,
    }


def imagenet_compile_times(per_device_batch: int = 8) -> dict:
    """Compile time of each shipped ImageNet config's full-size train step (no data needed)."""
    times = {}
    for path in sorted((ROOT / "configs").glob("imagenet_*.py")):
        config = configuration.load_config(path)
        task = tasks.build_task(config)
        model = experiment.build_model(config, task)
        size = model.image_size
        x = jax.ShapeDtypeStruct((per_device_batch, size, size, 3), jnp.float32)
        y = jax.ShapeDtypeStruct((per_device_batch,), jnp.int32)

        def init(key, model=model, x=x):
            variables = model.init(key, jnp.zeros(x.shape, x.dtype), train=False)
            return TrainState.create(
                apply_fn=model.apply,
                params=variables["params"],
                batch_stats=variables.get("batch_stats", {}),
                tx=optax.sgd(0.1, momentum=0.9),
            )

        state = jax.eval_shape(init, jax.random.key(0))
        step = jax.jit(train.make_train_step(task, train.StepOptions.from_config(config, task)))
        start = time.perf_counter()
        step.lower(state, {"input": x, "target": y}, jax.random.key(0)).compile()
        times[path.stem] = time.perf_counter() - start
        print(f"{path.stem}: compile {times[path.stem]:.1f} s", flush=True)
    return times


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile_imagenet", action="store_true")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    print(f"devices: {jax.devices()}, jax {jax.__version__}", flush=True)
    result = {"resnet18": compare(args.batch, args.steps, args.repeats)}
    speed = result["resnet18"]
    print(
        "resnet18 CIFAR stem, batch {batch}: jaxdl {j:.2f} steps/s, jaxdl with XLA's conv rule {x:.2f}, "
        "with the tap rule for every conv {t:.2f}, "
        "hand-written flax {h:.2f}, PyTorch {p:.2f}; jaxdl/XLA's rule {r0:.3f}, "
        "jaxdl/hand-written {r1:.3f}, jaxdl/PyTorch {r2:.3f}; jaxdl compile {c:.1f} s".format(
            batch=speed["batch"],
            j=speed["steps_per_s"]["jaxdl"],
            x=speed["steps_per_s"]["jaxdl_xla_conv"],
            t=speed["steps_per_s"]["jaxdl_taps_conv"],
            r0=speed["jaxdl_vs_xla_conv"],
            h=speed["steps_per_s"]["flax_hand_written"],
            p=speed["steps_per_s"]["pytorch"],
            r1=speed["jaxdl_vs_hand_written"],
            r2=speed["jaxdl_vs_pytorch"],
            c=speed["jaxdl_compile_s"],
        ),
        flush=True,
    )
    if args.compile_imagenet:
        result["imagenet_compile_s"] = imagenet_compile_times()
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
