"""jaxdl-export: a trained workdir's weights under the reference library's names, or its eval function for any JAX.

  jaxdl-export --workdir=runs/shapes_yolov8n --format=safetensors   # -> runs/shapes_yolov8n/export/model.safetensors
  jaxdl-export --workdir=runs/digits --format=stablehlo --out=digits.stablehlo

Both read the workdir through `TrainedRun`: the best checkpoint, else the
latest (`--checkpoint=latest` for the latest), with the EMA of the params
where the run kept one, as its evaluation used them.

`safetensors`: the variables as a PyTorch state dict with the reference
library's names (torchvision for the classifiers, segmentation_models_pytorch
for `unet_resnet*`, Ultralytics for yolov8/yolo11), i.e. whatever the family's
converter in jaxdl/convert reads, inverted (`jaxdl.convert.inverse.to_torch`):
`model.load_state_dict(safetensors.torch.load_file(path), strict=True)` takes
it. Tensors are float32; BatchNorm's `num_batches_tracked` is an int64 holding
the checkpoint's step. A family without a converter is a one-line error.

`stablehlo`: three files side by side,
- `model.stablehlo`: `jax.export`'s serialisation of the eval forward pass
  `f(weights, inputs) -> outputs` with a symbolic batch size `b`, lowered for
  CPU and CUDA; loading it needs jax and numpy only (no jaxdl, no flax):
      exported = jax.export.deserialize(open("model.stablehlo", "rb").read())
      outputs = exported.call(dict(numpy.load("model.weights.npz")), inputs)
- `model.weights.npz`: the variables `f` takes, by their '/'-joined flax
  paths ('params/conv1/kernel'). They are an argument, not constants closed
  over: a closed-over ResNet-50 would put 100 MB of constants into the module,
  and a new checkpoint of the same model needs no new export.
- `model.json`: the input spec: shape (with "b"), dtype and key; the eval
  transforms the function applies itself (`applies`) and those the caller
  applies first (`before`); the outputs' shapes; model, task, step, class
  names.

Where the eval transforms go: the trailing per-pixel ops (`rescale`,
`normalize`, `standardize`, with the training split's statistics) are traced
into `f` by their own code, so `f` takes what those ops take (uint8 pixels for
`rescale(scale=1/255)`). Geometric ops (resize, crops, letterbox) change sizes
and stay the caller's (`before`); then `f` takes float32 images of their
output size. Every file is written under a temporary name and renamed when
complete, so a failed export leaves nothing half written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np
from flax import traverse_util

from jaxdl.cli import report, setup_logging
from jaxdl.convert.inverse import to_torch
from jaxdl.data import transforms
from jaxdl.errors import UserError
from jaxdl.trained import CHECKPOINT_ORDER, TrainedRun

FORMATS = ("safetensors", "stablehlo")
EXPORT_DIR = "export"  # Under the workdir, where the files go without --out.
PLATFORMS = ("cpu", "cuda")  # jax.export lowers for both without a GPU here.
PIXEL_OPS = (transforms.Rescale, transforms.Normalize)  # Standardize is a Normalize with the run's statistics.


def flat_variables(variables) -> dict[str, np.ndarray]:
    """{'/'-joined flax path: host array} of a variables tree."""
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(variables)).items()}


def write_files(files: Sequence[tuple[Path, Callable[[Path], None]]]) -> list[int]:
    """Writes each `(path, write)` via `write(temporary path)` in the path's folder, then renames them all into place.

    Returns the sizes. Nothing is renamed until every file is written, so a
    failure leaves none of them, under either name; an unwritable folder or a
    full disk is a one-line UserError naming the file.
    """
    temporaries: list[tuple[Path, Path]] = []
    path = None
    try:
        for path, write in files:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(handle)
            temporaries.append((Path(name), path))
            write(Path(name))
        for temporary, target in temporaries:
            path = target
            os.replace(temporary, target)
    except BaseException as error:
        for temporary, _ in temporaries:
            temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise UserError(f"cannot write {path}: {error.strerror or error}") from None
        raise
    return [Path(target).stat().st_size for target, _ in files]


def write_atomic(path: Path, write: Callable[[Path], None]) -> int:
    """`write_files` of one file: writes `path` via `write(temporary path)`, then renames it; returns its size."""
    return write_files([(path, write)])[0]


def save_safetensors(tensors: dict[str, np.ndarray], path: Path, metadata: dict[str, str] | None = None) -> int:
    """Writes a state dict as .safetensors (atomically); returns the file's size."""
    from safetensors.numpy import save_file

    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    return write_atomic(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))


def export_safetensors(run: TrainedRun, path: Path) -> tuple[int, int]:
    """The run's variables under the reference's names at `path`; returns (size, tensor count)."""
    tensors = to_torch(run.model, run.variables, step=run.step)
    metadata = {"format": "pt", "jaxdl_model": run.config.model.name, "jaxdl_step": str(run.step)}
    return save_safetensors(tensors, path, metadata), len(tensors)


def split_eval_transforms(specs: list[transforms.Spec], ops: list) -> tuple[list[transforms.Spec], list]:
    """(the specs the caller applies first, the ops traced into the function): the trailing per-pixel ops go in."""
    inside = len(ops)
    while inside > 0 and isinstance(ops[inside - 1], PIXEL_OPS):
        inside -= 1
    return specs[:inside], ops[inside:]


def _spec_text(specs: list[transforms.Spec]) -> str:
    return "|".join(f"{s.name}({', '.join(f'{k}={v!r}' for k, v in s.kwargs.items())})" for s in specs)


def export_function(
    model, variables, input_shape: Sequence[int], input_dtype, pixel_ops: Sequence = (), platforms=PLATFORMS
) -> tuple[jax.export.Exported, dict[str, np.ndarray]]:
    """(the Exported eval pass `f(weights, inputs)`, the weights it takes); inputs are [b, *input_shape].

    `pixel_ops` are transform ops applied to the inputs first, by their own `map`.
    """
    weights = flat_variables(variables)

    def forward(weights, inputs):
        batch = {"input": inputs}
        for op in pixel_ops:
            batch = op.map(batch)
        tree = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in weights.items()})
        return model.apply(tree, batch["input"], train=False)

    (batch,) = jax.export.symbolic_shape("b")
    args = (
        {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in weights.items()},
        jax.ShapeDtypeStruct((batch, *input_shape), np.dtype(input_dtype)),
    )
    return jax.export.export(jax.jit(forward), platforms=platforms)(*args), weights


def _shape(shape) -> list:
    return [d if isinstance(d, int) else str(d) for d in shape]


def stablehlo_paths(path: Path) -> tuple[Path, Path, Path]:
    """(function, weights, spec) files of a stablehlo export at `path`: X.stablehlo, X.weights.npz, X.json."""
    stem = path.name.removesuffix(".stablehlo")
    return path, path.with_name(f"{stem}.weights.npz"), path.with_name(f"{stem}.json")


def export_stablehlo(run: TrainedRun, path: Path) -> list[tuple[Path, int, int | None]]:
    """The run's eval function, its weights and its input spec; returns [(path, size, tensor count or None)]."""
    before, pixel_ops = split_eval_transforms(run.eval_specs, run.eval_transforms())
    raw = run.input_spec
    shape, dtype = list(raw["shape"]), raw["dtype"]
    if before:  # Resized/cropped images are float32 of the transforms' output size.
        size = transforms.output_size(before)
        if size is not None and len(shape) == 3:
            shape[:2] = size
        dtype = "float32"
    exported, weights = export_function(run.model, run.variables, shape, dtype, pixel_ops)
    function_path, weights_path, spec_path = stablehlo_paths(path)
    spec = {
        "function": function_path.name,
        "weights": weights_path.name,
        "usage": "jax.export.deserialize(open(function, 'rb').read()).call(dict(numpy.load(weights)), inputs)",
        "input": {"shape": ["b", *shape], "dtype": dtype, "key": raw.get("key")},
        "before": _spec_text(before),
        "applies": _spec_text(run.eval_specs[len(before) :]),
        "outputs": [{"shape": _shape(a.shape), "dtype": str(a.dtype)} for a in exported.out_avals],
        "platforms": list(exported.platforms),
        "calling_convention_version": exported.calling_convention_version,
        "jax_version": jax.__version__,
        "model": run.config.model.name,
        "task": run.config.task.name,
        "step": run.step,
        "ema": run.uses_ema,
        "class_names": list(run.class_names) if run.class_names is not None else None,
    }
    data = exported.serialize()
    text = json.dumps(spec, indent=2) + "\n"
    sizes = write_files(
        [
            (weights_path, lambda t: _save_npz(t, weights)),
            (function_path, lambda t: t.write_bytes(data)),
            (spec_path, lambda t: t.write_text(text)),
        ]
    )
    return list(zip((weights_path, function_path, spec_path), sizes, (len(weights), None, None), strict=True))


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:  # A file object: np.savez would append .npz to a path.
        np.savez(handle, **arrays)


def _size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError


def export_cli(argv: Sequence[str] | None = None) -> int:
    """Entry point of jaxdl-export; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="jaxdl-export",
        description="Write a trained workdir's weights with the reference library's names (safetensors) "
        "or its eval function as a jax.export serialisation (stablehlo).",
    )
    parser.add_argument("--workdir", required=True, help="a trained jaxdl workdir")
    parser.add_argument("--format", default="safetensors", help=f"one of: {', '.join(FORMATS)}")
    parser.add_argument("--out", default=None, help="the file to write (default: WORKDIR/export/model.<format>)")
    parser.add_argument("--checkpoint", default="best", help="best (else latest) or latest")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging()
    try:
        if args.format not in FORMATS:
            raise UserError(f"--format={args.format} is not valid; choose one of: {', '.join(FORMATS)}")
        if args.checkpoint not in CHECKPOINT_ORDER:
            raise UserError(f"--checkpoint={args.checkpoint} is not valid; choose one of: best, latest")
        run = TrainedRun.open(args.workdir, which=args.checkpoint)
        out = Path(args.out) if args.out else Path(args.workdir) / EXPORT_DIR / f"model.{args.format}"
        if args.format == "safetensors":
            size, count = export_safetensors(run, out)
            written = [(out, size, count)]
        else:
            written = export_stablehlo(run, out)
    except UserError as error:
        return report(parser.prog, error)
    for path, size, count in written:
        print(f"wrote {path} ({_size(size)}{'' if count is None else f', {count} tensors'})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(export_cli())
