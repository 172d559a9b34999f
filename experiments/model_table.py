"""A markdown table of the registered image models: parameters, forward GFLOPs and torchvision's reference counts.

  python experiments/model_table.py [--out FILE] [--names resnet50,vit_b_16]
  python experiments/model_table.py --summary resnet50     # one model's layer table

Each model is built with 1000 classes at its `image_size` and measured without
compiling: parameters from `jax.eval_shape`, FLOPs from XLA's cost analysis of the
lowered forward pass (see jaxdl/models/summary.py; one image, train=False).
When torchvision is installed, its default ImageNet weights' metadata (read
offline, nothing downloaded) gives the reference parameter count and GFLOPs
(2 x its published multiply-accumulates). "2 x MACs" counts the same way
(convolutions and matrix products only, padding included; XLA's count also has
elementwise work and skips padding taps); `match` says whether the parameter
counts agree exactly and the 2 x MACs are within 5% of the reference. GoogLeNet
is counted without its training-only auxiliary heads, as published. Models
without an `image_size` field (tabular and sequence models) have no fixed input
and are listed as skipped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxdl import models  # noqa: E402
from jaxdl.models.summary import model_mac_flops, params_and_flops  # noqa: E402

HEADER = (
    "| model | params | GFLOPs (XLA) | GFLOPs (2 x MACs) | input | reference params | reference GFLOPs | match |\n"
    "|---|---:|---:|---:|---|---:|---:|:---:|"
)


def torchvision_reference(name: str) -> tuple[int, float | None, int] | None:
    """(num_params, 2 x GMACs, evaluation crop) of torchvision's default weights; None without them."""
    try:
        import torchvision
    except ImportError:
        return None
    try:
        weights = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        return None
    meta = weights.DEFAULT.meta
    ops = meta.get("_ops")
    # The published FLOPs are at the weights' evaluation crop (EfficientNet-B2: 288, not the paper's 260).
    crop = int(weights.DEFAULT.transforms().crop_size[0])
    return int(meta["num_params"]), (2.0 * ops if ops is not None else None), crop


def image_models() -> list[str]:
    """Registered names whose class has an `image_size` field."""
    return [name for name in models.list_models() if models.model_accepts(name, "image_size")]


def table_row(name: str) -> str:
    """One markdown row for model `name` (1000 classes, one image at its image_size)."""
    # Published counts are of the inference network: GoogLeNet without its training-only auxiliary heads.
    extra = {"aux_logits": False} if models.model_accepts(name, "aux_logits") else {}
    model = models.create_model(name, num_outputs=1000, **extra)
    size = model.image_size
    params, flops = params_and_flops(model, (1, size, size, 3))
    macs = model_mac_flops(model, (1, size, size, 3))
    reference = torchvision_reference(name)
    if reference is None:
        ref_params, ref_flops, match = "-", "-", "-"
    else:
        ref_params = f"{reference[0]:,}"
        ref_flops = "-" if reference[1] is None else f"{reference[1]:.4g}"
        compared = macs
        if reference[2] != size:  # Compare FLOPs at the resolution the reference was counted at.
            compared = model_mac_flops(model, (1, reference[2], reference[2], 3))
            ref_flops += f" (ours at {reference[2]}px: {compared / 1e9:.4g})"
        # Parameters to the unit; FLOPs (same convention as the reference) within 5%.
        flops_ok = reference[1] is None or abs(compared / 1e9 / reference[1] - 1) <= 0.05  # Reference in GFLOPs.
        match = "✓" if reference[0] == params and flops_ok else "✗"
    return (
        f"| {name} | {params:,} | {flops / 1e9:.4g} | {macs / 1e9:.4g} | {size}x{size} | "
        f"{ref_params} | {ref_flops} | {match} |"
    )


def build_table(names: list[str] | None = None) -> str:
    """The markdown table for `names` (default: every registered image model), plus a note on skipped ones."""
    available = image_models()
    if names is None:
        names = available
        skipped = [name for name in models.list_models() if name not in available]
    else:
        unknown = [name for name in names if name not in models.list_models()]
        if unknown:
            raise ValueError(f"unknown model(s): {', '.join(unknown)}")
        skipped = [name for name in names if name not in available]
        names = [name for name in names if name in available]
    lines = [HEADER] + [table_row(name) for name in names]
    text = "\n".join(lines) + "\n"
    if skipped:
        text += f"\nSkipped (no image_size, so no fixed input): {', '.join(skipped)}\n"
    return text


def main(argv: list[str] | None = None) -> str:
    """Builds the table (or one model's layer summary), prints it and writes it to --out if given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the markdown here as well")
    parser.add_argument("--names", help="comma-separated model names (default: every image model)")
    parser.add_argument("--summary", metavar="NAME", help="print the layer table of one model instead")
    parser.add_argument("--input-size", type=int, help="with --summary: image side (default: the model's)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.summary:
        text = models.summary(args.summary, input_size=args.input_size)
    else:
        names = [n.strip() for n in args.names.split(",") if n.strip()] if args.names else None
        text = build_table(names)
    print(text, end="")
    print(f"({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
