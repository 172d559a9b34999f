"""Dense 3x3 stride-1 convs on CPU: XLA's rule against formulations written as other XLA ops.

  python experiments/dense_conv_alternatives.py [--repeats=5] [--shapes=64x32x64x64,...]
      [--formulations=xla,winograd_f2,...] [--out=FILE]

Why jaxdl keeps XLA's rule for dense k x k convs (`jaxdl.models.layers`). For
each shape N x H(=W) x C -> O (NHWC, SAME padding, float32), it times:

- `xla`: `lax.conv_general_dilated`, forward alone and forward + dX + dW (its
  own transpose rules);
- `winograd_f2`, `winograd_f4`: Winograd's minimal filtering F(2x2, 3x3) and
  F(4x4, 3x3) (Lavin & Gray 2016) written as pads, strided slices, sums and one
  batched matmul per transformed tap; gradients by JAX's autodiff of that;
- `taps_dw`: jaxdl's own conv under `layers.conv_rule("taps")`: XLA's forward
  and dX, the weight gradient one product per tap of the tap's strided input
  slice with the cotangent (its rule for 1x1 and grouped convs);
- `flat_dw`, `flat_im2col_dw`: XLA's forward and dX with the weight gradient as
  the tap products with the padded input flattened to rows, so that each tap is
  a contiguous row range (one product per tap), or those nine row ranges side by
  side (one product).

Each figure is the median of `repeats` calls after a warm-up, in ms; `err` is
the largest |difference| from XLA's result over XLA's largest |value|, for the
output, dX and dW. XLA's own library paths can be tried by running the script
again with, e.g., XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION
(or the xnn / onednn fusion types, or --xla_cpu_use_onednn=true).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from jaxdl.models import layers  # noqa: E402

NHWC = ("NHWC", "HWIO", "NHWC")

# ResNet-18 (CIFAR stem, batch 64) 3x3 stride-1 convs; resnet50 stage 1 and yolov8n's 80 px level (their batches).
DEFAULT_SHAPES = "64x32x64x64,64x16x128x128,64x8x256x256,64x4x512x512,8x56x64x64,2x80x64x64"

# Winograd F(m x m, 3 x 3): Y = A^T [(G g G^T) * (B^T d B)] A on (m + 2)-square input tiles.
WINOGRAD = {
    2: dict(
        BT=[[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        G=[[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],
        AT=[[1, 1, 1, 0], [0, 1, -1, -1]],
    ),
    4: dict(
        BT=[
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ],
        G=[
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ],
        AT=[[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    ),
}


def xla_conv(x: jax.Array, w: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC)


def _combine(parts: list[jax.Array], coefficients: list[float]) -> jax.Array:
    """sum(c * p), skipping zero coefficients and multiplications by +-1."""
    total = None
    for part, c in zip(parts, coefficients, strict=True):
        if c == 0:
            continue
        term = part if c == 1 else -part if c == -1 else part * c
        total = term if total is None else total + term
    return total


def winograd_conv(x: jax.Array, w: jax.Array, m: int) -> jax.Array:
    """A 3x3 SAME conv by Winograd's F(m x m, 3 x 3), as XLA ops."""
    BT, G, AT = (np.asarray(WINOGRAD[m][k], np.float32) for k in ("BT", "G", "AT"))
    t = m + 2
    n, h, width, _ = x.shape
    tiles_h, tiles_w = -(-h // m), -(-width // m)
    xp = jnp.pad(x, ((0, 0), (1, tiles_h * m + 1 - h), (1, tiles_w * m + 1 - width), (0, 0)))
    rows = [lax.slice_in_dim(xp, i, i + (tiles_h - 1) * m + 1, m, axis=1) for i in range(t)]
    row_sums = [_combine(rows, list(BT[a])) for a in range(t)]
    transformed = []
    for a in range(t):
        cols = [lax.slice_in_dim(row_sums[a], j, j + (tiles_w - 1) * m + 1, m, axis=2) for j in range(t)]
        transformed += [_combine(cols, list(BT[b])) for b in range(t)]
    v = jnp.stack(transformed).reshape(t * t, n * tiles_h * tiles_w, -1)
    u = jnp.einsum("ai,ijco,bj->abco", G, w, G).reshape(t * t, w.shape[2], w.shape[3])
    product = jnp.einsum("pkc,pco->pko", v, u).reshape(t, t, n, tiles_h, tiles_w, -1)
    out_rows = [_combine([product[a] for a in range(t)], list(AT[r])) for r in range(m)]
    y = jnp.stack([jnp.stack([_combine([r[b] for b in range(t)], list(AT[s])) for s in range(m)]) for r in out_rows])
    y = y.transpose(2, 3, 0, 4, 1, 5).reshape(n, tiles_h * m, tiles_w * m, -1)
    return y[:, :h, :width]


def jaxdl_taps_conv(x: jax.Array, w: jax.Array) -> jax.Array:
    """jaxdl's conv with its tap weight gradient (read when traced, so inside the traced function)."""
    with layers.conv_rule("taps"):
        return layers.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC)


def _flat_rows(x: jax.Array, dy: jax.Array) -> tuple[jax.Array, jax.Array, list[int], int]:
    """The padded input and the cotangent (at each padded frame's top left) as rows; each tap's row offset."""
    n, h, width, c = x.shape
    padded_w = width + 2
    rows_x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(-1, c)
    rows_dy = jnp.pad(dy, ((0, 0), (0, 2), (0, 2), (0, 0))).reshape(-1, dy.shape[-1])
    offsets = [i * padded_w + j for i in range(3) for j in range(3)]
    length = rows_x.shape[0] - offsets[-1]  # No valid output row reaches past its own image's frame.
    return rows_x, rows_dy[:length], offsets, length


def flat_dw(x: jax.Array, dy: jax.Array) -> jax.Array:
    rows_x, rows_dy, offsets, length = _flat_rows(x, dy)
    taps = [lax.dot_general(rows_x[s : s + length], rows_dy, (((0,), (0,)), ((), ()))) for s in offsets]
    return jnp.stack(taps).reshape(3, 3, x.shape[-1], -1)


def flat_im2col_dw(x: jax.Array, dy: jax.Array) -> jax.Array:
    rows_x, rows_dy, offsets, length = _flat_rows(x, dy)
    columns = jnp.concatenate([rows_x[s : s + length] for s in offsets], axis=1)
    return lax.dot_general(columns, rows_dy, (((0,), (0,)), ((), ()))).reshape(3, 3, x.shape[-1], -1)


def with_weight_grad(dw_rule: Callable) -> Callable:
    """XLA's forward and dX, with `dw_rule(x, dy)` as the weight gradient."""

    @jax.custom_vjp
    def conv(x, w):
        return xla_conv(x, w)

    def forward(x, w):
        return xla_conv(x, w), (x, w)

    def backward(residuals, dy):
        x, w = residuals
        (dx,) = jax.linear_transpose(lambda v: xla_conv(v, w), x)(dy)
        return dx, dw_rule(x, dy).astype(w.dtype)

    conv.defvjp(forward, backward)
    return conv


FORMULATIONS: dict[str, Callable] = {
    "xla": xla_conv,
    "winograd_f2": lambda x, w: winograd_conv(x, w, 2),
    "winograd_f4": lambda x, w: winograd_conv(x, w, 4),
    "taps_dw": jaxdl_taps_conv,
    "flat_dw": with_weight_grad(flat_dw),
    "flat_im2col_dw": with_weight_grad(flat_im2col_dw),
}


def _median_ms(fn: Callable, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def measure(shape: tuple[int, int, int, int], repeats: int, names: list[str]) -> dict:
    n, h, c, o = shape
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (n, h, h, c))
    w = jax.random.normal(keys[1], (3, 3, c, o)) / np.sqrt(9 * c)
    dy = jax.random.normal(keys[2], (n, h, h, o))
    results, reference = {}, None
    for name in ["xla", *(n for n in names if n != "xla")]:  # XLA's first: the reference of the errors.
        conv = FORMULATIONS[name]
        forward = jax.jit(conv)
        train = jax.jit(lambda x, w, dy, conv=conv: (lambda y, vjp: (y, *vjp(dy)))(*jax.vjp(conv, x, w)))
        outputs = train(x, w, dy)
        reference = reference or outputs
        errors = [float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in zip(outputs, reference, strict=True)]
        results[name] = {
            "forward_ms": _median_ms(forward, x, w, repeats=repeats),
            "train_ms": _median_ms(train, x, w, dy, repeats=repeats),
            "max_rel_err_y_dx_dw": errors,
        }
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="NxHxCxO,... (3x3, stride 1, SAME)")
    parser.add_argument("--formulations", default=",".join(FORMULATIONS), help="which to time (xla always)")
    parser.add_argument("--out", default="", help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    names = ["xla", *(n for n in args.formulations.split(",") if n and n != "xla")]
    unknown = [n for n in names if n not in FORMULATIONS]
    if unknown:
        parser.error(f"--formulations: {', '.join(unknown)} unknown; choose from {', '.join(FORMULATIONS)}")
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    if any(len(s) != 4 for s in shapes):
        parser.error(f"--shapes={args.shapes!r}: each shape is NxHxCxO, e.g. 64x32x64x64")
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}; ms, median of {args.repeats}")
    print("| N x H x C -> O | " + " | ".join(f"{name} fwd / fwd+dX+dW" for name in names) + " |")
    print("|---|" + "---:|" * len(names))
    everything = {}
    for shape in shapes:
        results = everything["x".join(map(str, shape))] = measure(shape, args.repeats, names)
        cells = [f"{r['forward_ms']:.1f} / {r['train_ms']:.1f}" for r in results.values()]
        print(f"| {shape[0]} x {shape[1]} x {shape[2]} -> {shape[3]} | " + " | ".join(cells) + " |", flush=True)
    worst = {name: max(max(everything[s][name]["max_rel_err_y_dx_dw"]) for s in everything) for name in names}
    print("largest relative difference from XLA (y, dX or dW): " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(everything, f, indent=2)
    return everything


if __name__ == "__main__":
    main(sys.argv[1:])
