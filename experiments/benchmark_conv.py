"""Per-conv-shape train cost: XLA's forward, input and weight gradients vs jaxdl's conv vs PyTorch.

  python experiments/benchmark_conv.py [--models=resnet18,resnet50,efficientnet_b0,yolov8n] [--repeats=5]
      [--batch_resnet18=64] [--batch_imagenet=8] [--batch_yolo=2] [--out=FILE]

For every distinct convolution of each model's forward pass (traced, so the list
is the model's own): XLA's forward, dX and dW each alone, jaxdl's
`layers.conv_general_dilated` doing forward + dX + dW in one program, XLA's
doing the same, and PyTorch's conv2d forward + backward (NCHW, as many threads
as JAX has cores). Each figure is the median of `repeats` timed calls after a
warm-up, in milliseconds. Prints a Markdown table per model and the convs whose
weight gradient falls back to XLA's rule.

Sizes: resnet18 with the CIFAR stem at 32 px, resnet50 and efficientnet_b0 at
224 px, yolov8n at 640 px.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from jaxdl import models  # noqa: E402
from jaxdl.models import layers  # noqa: E402

NHWC = ("NHWC", "HWIO", "NHWC")


class ConvShape(NamedTuple):
    """One distinct conv of a model: NHWC input, HWIO kernel and lax's parameters (explicit padding)."""

    lhs: tuple[int, ...]
    rhs: tuple[int, ...]
    strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    lhs_dilation: tuple[int, ...]
    rhs_dilation: tuple[int, ...]
    groups: int


# name -> (create_model kwargs, image size, batch flag)
MODELS = {
    "resnet18": (dict(num_outputs=10, cifar_stem=True, image_size=32), 32, "batch_resnet18"),
    "resnet50": (dict(num_outputs=1000), 224, "batch_imagenet"),
    "efficientnet_b0": (dict(num_outputs=1000), 224, "batch_imagenet"),
    "yolov8n": (dict(num_outputs=80), 640, "batch_yolo"),
}


def _conv_eqns(jaxpr: Any) -> list[Any]:
    """The conv_general_dilated equations of `jaxpr`, sub-jaxprs included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            found.append(eqn)
        for value in eqn.params.values():
            for sub in value if isinstance(value, list | tuple) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    found += _conv_eqns(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    found += _conv_eqns(sub)
    return found


def model_conv_shapes(name: str, batch: int) -> collections.Counter[ConvShape]:
    """Each distinct NHWC conv of registered model `name`'s forward pass at its benchmark size, with its count."""
    kwargs, size, _ = MODELS[name]
    model = models.create_model(name, **kwargs)
    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    variables = models.abstract_variables(model, x.shape)
    # Traced with XLA's conv so the jaxpr holds plain conv equations (jaxdl's wraps them in a custom rule).
    with layers.conv_rule("xla"):
        jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
    shapes: collections.Counter[ConvShape] = collections.Counter()
    for eqn in _conv_eqns(jaxpr.jaxpr):
        numbers = eqn.params["dimension_numbers"]
        if numbers != lax.conv_dimension_numbers(eqn.invars[0].aval.shape, eqn.invars[1].aval.shape, NHWC):
            continue
        shapes[
            ConvShape(
                tuple(eqn.invars[0].aval.shape),
                tuple(eqn.invars[1].aval.shape),
                tuple(eqn.params["window_strides"]),
                tuple(tuple(p) for p in eqn.params["padding"]),
                tuple(eqn.params["lhs_dilation"]),
                tuple(eqn.params["rhs_dilation"]),
                eqn.params["feature_group_count"],
            )
        ] += 1
    return shapes


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _jax_times(shape: ConvShape, conv: Callable, repeats: int, parts: tuple[str, ...]) -> dict[str, float]:
    """Milliseconds of `conv`'s `parts`: "fwd", "dx", "dw" alone, and "all" three in one program."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape.lhs), jnp.float32)
    w = jnp.asarray(rng.standard_normal(shape.rhs), jnp.float32)

    def forward(x, w):
        return conv(
            x,
            w,
            shape.strides,
            shape.padding,
            lhs_dilation=shape.lhs_dilation,
            rhs_dilation=shape.rhs_dilation,
            dimension_numbers=NHWC,
            feature_group_count=shape.groups,
        )

    g = jnp.asarray(rng.standard_normal(jax.eval_shape(forward, x, w).shape), jnp.float32)

    def train(x, w, g):
        y, pullback = jax.vjp(forward, x, w)
        return (y, *pullback(g))

    programs = {
        "all": (jax.jit(train), (x, w, g)),
        "fwd": (jax.jit(forward), (x, w)),
        # The forward result is unused in these two, so XLA drops it: only the gradient is timed.
        "dx": (jax.jit(lambda x, w, g: jax.vjp(forward, x, w)[1](g)[0]), (x, w, g)),
        "dw": (jax.jit(lambda x, w, g: jax.vjp(forward, x, w)[1](g)[1]), (x, w, g)),
    }
    return {part: _median_ms(lambda p=programs[part]: p[0](*p[1]), repeats) for part in parts}


def _torch_ms(shape: ConvShape, repeats: int) -> float | None:
    """PyTorch's conv2d forward + backward in milliseconds, or None for a conv torch's conv2d cannot express."""
    import torch

    if shape.lhs_dilation != (1, 1):
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    n, h, w, c = shape.lhs
    kh, kw, cg, o = shape.rhs
    x = torch.randn(n, c, h, w, requires_grad=True)
    weight = torch.randn(o, cg, kh, kw, requires_grad=True)
    (top, bottom), (left, right) = shape.padding
    with torch.no_grad():
        y_shape = torch.nn.functional.conv2d(
            torch.nn.functional.pad(x, (left, right, top, bottom)),
            weight,
            stride=shape.strides,
            dilation=shape.rhs_dilation,
            groups=shape.groups,
        ).shape
    g = torch.randn(y_shape)

    def step():
        x.grad = weight.grad = None
        # Uneven padding (SAME at stride 2) needs an explicit pad, as torch's own "same" does internally.
        padded = torch.nn.functional.pad(x, (left, right, top, bottom)) if (top, left) != (bottom, right) else x
        pad = 0 if padded is not x else (top, left)
        y = torch.nn.functional.conv2d(
            padded, weight, stride=shape.strides, padding=pad, dilation=shape.rhs_dilation, groups=shape.groups
        )
        y.backward(g)

    return _median_ms(step, repeats)


def _describe(shape: ConvShape) -> str:
    n, h, w, c = shape.lhs
    kh, kw, _, o = shape.rhs
    text = f"{n}, {h}x{w}, {c}→{o}, {kh}x{kw}, s{shape.strides[0]}"
    if shape.groups > 1:
        text += ", depthwise" if shape.groups == c else f", g{shape.groups}"
    if shape.rhs_dilation != (1, 1):
        text += f", d{shape.rhs_dilation[0]}"
    return text


def benchmark_model(name: str, batch: int, repeats: int) -> list[dict[str, Any]]:
    """One row per distinct conv shape of model `name`: XLA's, the tap rule's and PyTorch's times, jaxdl's choice."""
    rows = []
    for shape, count in model_conv_shapes(name, batch).items():
        plan = layers.conv_plan(
            shape.lhs,
            shape.rhs,
            shape.strides,
            shape.padding,
            shape.lhs_dilation,
            shape.rhs_dilation,
            NHWC,
            shape.groups,
        )
        xla = _jax_times(shape, lax.conv_general_dilated, repeats, ("fwd", "dx", "dw", "all"))
        taps = None
        depthwise = plan is not None and layers.is_depthwise(plan, shape.lhs, shape.rhs)
        if plan is not None and not depthwise:
            tap_conv = lambda x, w, *args, plan=plan, **kwargs: layers.tap_conv(plan, x, w)  # noqa: E731
            taps = _jax_times(shape, tap_conv, repeats, ("dw", "all"))
        uses_taps = plan is not None and layers.tap_rule_pays(plan, shape.lhs, shape.rhs)
        if depthwise:  # The whole conv is the taps' (`layers.depthwise_conv`): timed as jaxdl runs it.
            jaxdl_ms = _jax_times(shape, layers.conv_general_dilated, repeats, ("all",))["all"]
            rule = "taps: fwd, dX, dW"
        elif uses_taps:
            jaxdl_ms, rule = taps["all"], "taps"
        else:
            jaxdl_ms, rule = xla["all"], ("XLA (taps slower)" if plan is not None else "XLA (unsupported)")
        row = {
            "conv": _describe(shape),
            "count": count,
            "xla": xla,
            "taps": taps,
            "jaxdl": jaxdl_ms,
            "torch": _torch_ms(shape, repeats),
            "rule": rule,
        }
        rows.append(row)
        print(f"  {name}: {row['conv']} done", file=sys.stderr, flush=True)
    return rows


def markdown(name: str, rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (milliseconds), with the total over the model's convs weighted by count."""
    lines = [
        f"### {name}",
        "",
        "| conv (N, HxW, C→O, k, stride) | n | XLA fwd | XLA dX | XLA dW | taps dW | XLA all | jaxdl all "
        "| XLA/jaxdl | PyTorch all | jaxdl's dW rule |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        xla, torch_ms = row["xla"], row["torch"]
        taps_dw = "-" if row["taps"] is None else f"{row['taps']['dw']:.2f}"
        lines.append(
            f"| {row['conv']} | {row['count']} | {xla['fwd']:.2f} | {xla['dx']:.2f} | {xla['dw']:.2f} "
            f"| {taps_dw} "
            f"| {xla['all']:.2f} | {row['jaxdl']:.2f} | {xla['all'] / row['jaxdl']:.2f}x "
            f"| {'-' if torch_ms is None else f'{torch_ms:.2f}'} | {row['rule']} |"
        )
    total = {key: sum(r["count"] * value(r) for r in rows) for key, value in _TOTALS.items()}
    lines.append(
        f"| **total, weighted by n** | | | | | | {total['xla']:.1f} | {total['jaxdl']:.1f} "
        f"| {total['xla'] / total['jaxdl']:.2f}x | {total['torch']:.1f} | |"
    )
    fallbacks = [f"{row['conv']} ({row['rule']})" for row in rows if not row["rule"].startswith("taps")]
    lines += ["", "Falls back to XLA's rule: " + ("; ".join(fallbacks) if fallbacks else "none"), ""]
    return "\n".join(lines)


_TOTALS: dict[str, Callable[[dict[str, Any]], float]] = {
    "xla": lambda r: r["xla"]["all"],
    "jaxdl": lambda r: r["jaxdl"],
    "torch": lambda r: r["torch"] or 0.0,
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Benchmarks the chosen models' conv shapes and prints one Markdown table per model."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch_resnet18", type=int, default=64)
    parser.add_argument("--batch_imagenet", type=int, default=8)
    parser.add_argument("--batch_yolo", type=int, default=2)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    print(f"devices: {jax.devices()}, jax {jax.__version__}", flush=True)
    results = {}
    for name in args.models.split(","):
        batch = getattr(args, MODELS[name][2])
        results[name] = benchmark_model(name, batch, args.repeats)
        print(markdown(f"{name} (batch {batch}, {MODELS[name][1]} px)", results[name]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
