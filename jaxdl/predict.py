"""`jaxdl-predict`: a trained workdir's best checkpoint on the user's own image files.

    jaxdl-predict --workdir=runs/x img1.png img2.jpg --out=preds/

Each image is read with Pillow, converted to the channels the model was trained
on, put through the config's eval transforms and the model, and reported as one
JSON line on stdout (also written to OUT/predictions.jsonl):

- classification: the top-5 classes with their probabilities;
- segmentation: OUT/<name>_mask.png (the class id of every pixel) and
  OUT/<name>_overlay.png (the image with the classes coloured in);
- detection: the boxes kept by the task's NMS with a score of at least
  `--score_threshold`, each with its class and score, in the pixels of the
  file as given (the eval transforms' resize or letterbox undone), and
  OUT/<name>_boxes.png, the image with the boxes drawn.

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
TASKS = ("classification", "segmentation", "detection")


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
        # The ops move boxes too: a probe box beside the image shows where they move its pixels.
        kinds = {"input": transforms.IMAGE, "boxes": transforms.BOXES, "box_valid": transforms.BOX_VALID}
        self.ops = transforms.build(specs, None, kinds=kinds)
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

    def outputs(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """The model's outputs for one image, the transformed image the model saw, and the map back.

        The map is (scale, shift), each [2] as (x, y), taking the model input's
        pixels to the file's: a one-pixel box at the image's centre goes through
        the eval transforms with the image, and how it moves (each transform is a
        scale and a shift per axis) is inverted.
        """
        h, w = image.shape[:2]
        probe = np.array([[[w / 2 - 0.5, h / 2 - 0.5, w / 2 + 0.5, h / 2 + 0.5]]], np.float32)
        batch = {"input": image[None], "boxes": probe, "box_valid": np.ones((1, 1), np.uint8)}
        for op in self.ops:
            batch = op.map(batch)
        moved = np.asarray(batch["boxes"], np.float64)[0, 0]
        scale = moved[2:] - moved[:2]  # The probe's size was 1 x 1.
        shift = moved[:2] - probe[0, 0, :2] * scale
        model_input = np.asarray(batch["input"])
        outputs = np.asarray(self._apply(self.variables, model_input))[0]
        return outputs, model_input[0], (1 / scale, -shift / scale)

    def predict(self, path: Path, out: Path, top: int = 5, score_threshold: float = 0.25) -> dict:
        """The JSON record of one image; writes its PNGs for segmentation and detection."""
        image = self.load(path)
        outputs, model_input, to_image = self.outputs(image)
        record = {"file": str(path)}
        if self.config.task.name == "detection":
            return {**record, **self._detect(path, out, outputs, image, model_input, to_image, score_threshold)}
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
        shown = image if image.shape[:2] == mask.shape else display_image(model_input)
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

    def _detect(self, path: Path, out: Path, outputs, image, model_input, to_image, score_threshold: float) -> dict:
        import jax.numpy as jnp
        from PIL import Image, ImageDraw

        from jaxdl.tasks.detection import Outputs

        found = self.task.detections(Outputs(jnp.asarray(outputs)[None], tuple(model_input.shape[:2])))
        found = {k: np.asarray(v)[0] for k, v in found.items()}
        keep = found["valid"] & (found["scores"] >= score_threshold)
        scale, shift = to_image
        h, w = image.shape[:2]
        boxes = found["boxes"][keep] * np.tile(scale, 2) + np.tile(shift, 2)
        boxes = np.clip(boxes, 0, [w, h, w, h])
        detections = [
            {"class": int(c), "score": round(float(p), 4), "box": [round(float(v), 2) for v in b]}
            for b, c, p in zip(boxes, found["classes"][keep], found["scores"][keep], strict=True)
        ]
        shown = image if image.shape[-1] == 3 else np.repeat(image[..., :1], 3, axis=-1)
        picture = Image.fromarray(shown.astype(np.uint8))
        draw = ImageDraw.Draw(picture)
        colours = _palette(self.task.num_classes + 1)[1:]
        for d in detections:
            colour = tuple(int(v) for v in colours[d["class"]])
            draw.rectangle(d["box"], outline=colour, width=max(1, round(max(w, h) / 200)))
            draw.text((d["box"][0] + 2, d["box"][1] + 1), f"{d['class']} {d['score']:.2f}", fill=colour)
        boxes_path = out / f"{path.stem}_boxes.png"
        picture.save(boxes_path)
        return {"detections": detections, "boxes_image": str(boxes_path)}


def display_image(image: np.ndarray) -> np.ndarray:
    """An image (any range, 1 or 3 channels) stretched to 0..255 uint8 with 3 channels, for display."""
    image = np.asarray(image, np.float64)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    low, high = image.min(), image.max()
    return ((image - low) / max(high - low, 1e-12) * 255).astype(np.uint8)


def predict_cli(argv: Sequence[str] | None = None) -> int:
    """Entry point of jaxdl-predict; returns the exit code."""
    from jaxdl.main import report, setup_logging

    parser = argparse.ArgumentParser(
        prog="jaxdl-predict", description="Predict image files with a trained workdir's best checkpoint."
    )
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--workdir", required=True, help="a trained classification, segmentation or detection workdir")
    parser.add_argument(
        "--out", default=None, help="where predictions.jsonl and the PNGs go (default: WORKDIR/predictions)"
    )
    parser.add_argument("--top", type=int, default=5, help="classes reported per image (classification)")
    parser.add_argument(
        "--score_threshold", type=float, default=0.25, help="lowest score of a reported box (detection)"
    )
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
                record = predictor.predict(Path(name), out, top=args.top, score_threshold=args.score_threshold)
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
