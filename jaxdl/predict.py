"""`jaxdl-predict`: a trained workdir's best checkpoint on the user's own image files.

    jaxdl-predict --workdir=runs/x img1.png img2.jpg --out=preds/

Each image is read with Pillow, converted to the channels the model was trained
on, put through the config's eval transforms and the model, and reported as one
JSON line on stdout (also written to OUT/predictions.jsonl):

- classification: the top-5 classes with their probabilities;
- segmentation: OUT/<name>_mask.png (the class id of every pixel) and
  OUT/<name>_overlay.png (the image with the classes coloured in).

An image that is missing, unreadable or of a size the model does not take is
one line on stderr naming the file; the other images are still predicted, and
the exit code is 1. Problems with the workdir itself stop at once (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxdl.errors import UserError, WorkdirError

INPUTS_FILENAME = "inputs.json"  # What a run's raw inputs look like; written by training.
TASKS = ("classification", "segmentation")


class ImageError(UserError):
    """One input image cannot be predicted; names the file."""


def _palette(num_classes: int) -> np.ndarray:
    """A fixed colour per class (class 0, usually background, black), [num_classes, 3] uint8."""
    rng = np.random.default_rng(0)
    colours = rng.integers(64, 256, size=(max(num_classes, 1), 3)).astype(np.uint8)
    colours[0] = 0
    return colours


class Predictor:
    """A workdir's model, eval transforms and best (else latest) variables, ready for image files."""

    def __init__(self, workdir: str | Path):
        import jax

        from jaxdl import checkpoint, configuration, experiment, tasks
        from jaxdl.data import transforms

        workdir = Path(workdir)
        self.config = configuration.read_config(workdir / "config.json")
        name = self.config.task.name
        if name not in TASKS:
            raise WorkdirError(f"{workdir} was trained for task '{name}'; jaxdl-predict takes {', '.join(TASKS)}")
        spec_path = workdir / INPUTS_FILENAME
        if not spec_path.is_file():
            raise WorkdirError(f"{workdir} holds no {INPUTS_FILENAME}: train it with this version of jaxdl first")
        self.inputs = json.loads(spec_path.read_text())
        specs = transforms.parse(self.config.dataset.eval_transforms)
        if transforms.needs_statistics(specs):
            raise WorkdirError(f"{workdir}: standardize() needs the training data; jaxdl-predict takes image configs")
        self.ops = transforms.build(specs, None)
        self.resizes = any(spec.name in transforms.RESIZING for spec in specs)
        self.task = tasks.build_task(self.config)
        self.model = experiment.build_model(self.config, self.task)
        self.variables, self.step = checkpoint.restore_variables(workdir)
        self._apply = jax.jit(lambda variables, x: self.model.apply(variables, x, train=False))

    def load(self, path: Path) -> np.ndarray:
        """The image at `path` as uint8 [H, W, C] with the model's channel count; raises ImageError."""
        from PIL import Image, UnidentifiedImageError

        shape = self.inputs["shape"]
        channels = shape[-1] if len(shape) == 3 else 1
        if not path.is_file():
            raise ImageError(f"{path}: no such file")
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise ImageError(f"{path}: not a readable image ({type(error).__name__})") from None
        pixels = pixels.reshape(*pixels.shape[:2], -1)
        if not self.resizes and list(pixels.shape[:2]) != list(shape[:2]):
            raise ImageError(
                f"{path}: {pixels.shape[1]}x{pixels.shape[0]} pixels, but the model takes {shape[1]}x{shape[0]} "
                "(its eval transforms do not resize)"
            )
        return pixels.astype(self.inputs.get("dtype", "uint8"))

    def outputs(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The model's outputs for one image and the transformed image the model saw."""
        batch = {"input": image[None]}
        for op in self.ops:
            batch = op.map(batch)
        return np.asarray(self._apply(self.variables, np.asarray(batch["input"])))[0], np.asarray(batch["input"])[0]

    def predict(self, path: Path, out: Path, top: int = 5) -> dict:
        """The JSON record of one image; writes its PNGs for segmentation."""
        image = self.load(path)
        outputs, model_input = self.outputs(image)
        record = {"file": str(path)}
        if self.task.num_outputs == 1 and self.config.task.name == "classification":  # One logit: P(class 1).
            p1 = float(1 / (1 + np.exp(-outputs[0])))
            probabilities = np.array([1 - p1, p1])
        else:
            logits = outputs.astype(np.float64)
            probabilities = np.exp(logits - logits.max(axis=-1, keepdims=True))
            probabilities /= probabilities.sum(axis=-1, keepdims=True)
        if self.config.task.name == "classification":
            order = np.argsort(-probabilities, kind="stable")[:top]
            record["top"] = [{"class": int(k), "probability": float(probabilities[k])} for k in order]
            return record
        return {**record, **self._write_masks(path, out, probabilities, image, model_input)}

    def _write_masks(self, path: Path, out: Path, probabilities, image, model_input) -> dict:
        from PIL import Image

        mask = np.argmax(probabilities, axis=-1).astype(np.uint8)
        colours = _palette(self.task.num_classes)[mask]
        # The overlay is drawn on the image the model saw (after crops and resizes), at the mask's size.
        shown = image if image.shape[:2] == mask.shape else _to_uint8(model_input)
        if shown.shape[-1] == 1:
            shown = np.repeat(shown, 3, axis=-1)
        overlay = np.where(mask[..., None] > 0, shown // 2 + colours // 2, shown).astype(np.uint8)
        stem = path.stem
        mask_path, overlay_path = out / f"{stem}_mask.png", out / f"{stem}_overlay.png"
        Image.fromarray(mask).save(mask_path)
        Image.fromarray(overlay).save(overlay_path)
        counts = np.bincount(mask.reshape(-1), minlength=self.task.num_classes)
        return {
            "mask": str(mask_path),
            "overlay": str(overlay_path),
            "pixels_per_class": {str(k): int(c) for k, c in enumerate(counts)},
        }


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """A float image stretched to 0..255 for display."""
    image = np.asarray(image, np.float64)
    low, high = image.min(), image.max()
    return ((image - low) / max(high - low, 1e-12) * 255).astype(np.uint8)


def predict_cli(argv: Sequence[str] | None = None) -> int:
    """Entry point of jaxdl-predict; returns the exit code."""
    from jaxdl.main import report, setup_logging

    parser = argparse.ArgumentParser(
        prog="jaxdl-predict", description="Predict image files with a trained workdir's best checkpoint."
    )
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--workdir", required=True, help="a trained classification or segmentation workdir")
    parser.add_argument(
        "--out", default=None, help="where predictions.jsonl and mask PNGs go (default: WORKDIR/predictions)"
    )
    parser.add_argument("--top", type=int, default=5, help="classes reported per image (classification)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging()
    try:
        predictor = Predictor(args.workdir)
    except UserError as error:
        return report(parser.prog, error)
    out = Path(args.out) if args.out else Path(args.workdir) / "predictions"
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    with open(out / "predictions.jsonl", "w") as log:
        for name in args.images:
            try:
                record = predictor.predict(Path(name), out, top=args.top)
            except ImageError as error:
                report(parser.prog, error)
                failed += 1
                continue
            line = json.dumps(record)
            print(line, flush=True)
            log.write(line + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(predict_cli())
