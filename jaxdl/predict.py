"""`jaxdl-predict`: a trained workdir's best checkpoint on the user's own image files.

    jaxdl-predict --workdir=runs/x img1.png img2.jpg --out=preds/

Each image is decoded as training decodes files (`jaxdl.data.images.decode`: the
EXIF orientation applied, then the channels the model was trained on), put
through the config's eval transforms and the model, and reported as one JSON
line on stdout (also written to OUT/predictions.jsonl). What a record
holds is the task's own `describe_prediction` (jaxdl.tasks); this module names
no task. The tasks that show predictions:

- classification: the top-5 classes with their probabilities (and names, where
  the dataset names its classes);
- segmentation: OUT/<name>_mask.png (the class id of every pixel) and
  OUT/<name>_overlay.png (the image with the classes coloured in);
- detection: the boxes kept by the task's NMS with a score of at least
  `--score_threshold`, each with its class and score, in the pixels of the
  file as given (the eval transforms' resize or letterbox undone), and
  OUT/<name>_boxes.png, the image with the boxes drawn.

The workdir is opened with `jaxdl.trained.TrainedRun`: its config, model, eval
transforms, class names and best (else latest) variables, EMA params where
the run kept an EMA.

A file of another size than the model's input, where the eval transforms do
not resize, is first fitted to it the task's way (`Task.prediction_fit`):
detection letterboxes it, segmentation resizes it (the mask is mapped back to
the file's size), classification resizes the shorter side and crops the centre.
The map back to the file's pixels undoes the fit with the eval transforms. The
fit is printed once on stderr; `--fit=none` refuses such a file instead.

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
from typing import TYPE_CHECKING

import numpy as np

from jaxdl.cli import report, setup_logging
from jaxdl.errors import UserError, WorkdirError

if TYPE_CHECKING:
    from jaxdl.tasks.base import ImagePrediction


class ImageError(UserError):
    """One input image cannot be predicted; names the file."""


class Predictor:
    """A trained run's model, eval transforms and best (else latest) variables, ready for image files."""

    def __init__(self, workdir: str | Path, fit: str = "auto"):
        """Opens the run; `fit` "auto" fits files of another size to the model's input, "none" refuses them."""
        # Imported here: a flag error needs no JAX start-up.
        from jaxdl import tasks
        from jaxdl.data import transforms
        from jaxdl.trained import TrainedRun

        self.run = TrainedRun.open(workdir)
        if not self.run.task.displays_predictions:
            takes = ", ".join(name for name, task in tasks.TASKS.items() if task.displays_predictions)
            raise WorkdirError(
                f"{workdir} was trained for task '{self.run.config.task.name}'; jaxdl-predict takes {takes}"
            )
        self.inputs = self.run.input_spec
        if len(self.inputs["shape"]) not in (2, 3):  # A table's features, a sequence: no image goes in.
            raise WorkdirError(
                f"{workdir} was trained on inputs of shape {tuple(self.inputs['shape'])}, not images; "
                "jaxdl-predict takes image files"
            )
        # The ops move boxes too: a probe box beside the image shows where they move its pixels.
        kinds = {"input": transforms.IMAGE, "boxes": transforms.BOXES, "box_valid": transforms.BOX_VALID}
        self.ops = self.run.eval_transforms(kinds)
        self.resizes = any(spec.name in transforms.RESIZING for spec in self.run.eval_specs)
        self.fit_ops, self.fit_spec = [], ""
        if fit == "auto" and not self.resizes and len(self.inputs["shape"]) in (2, 3):
            height, width = self.inputs["shape"][:2]
            self.fit_spec = self.run.task.prediction_fit(height, width)
            self.fit_ops = transforms.build(transforms.parse(self.fit_spec), kinds=kinds)
        self.fit_notice = ""  # Set the first time a file is fitted; the CLI prints it once.
        self.step = self.run.step  # Restored now: a workdir without a checkpoint stops before the first image.

    def load(self, path: Path) -> np.ndarray:
        """The image at `path` as [H, W, C] with the model's channel count and input dtype; raises ImageError."""
        from jaxdl.data import images

        shape = self.inputs["shape"]
        channels = shape[-1] if len(shape) == 3 else 1
        if not path.is_file():
            raise ImageError(f"{path}: no such file")
        try:
            pixels = images.decode(path, channels)
        except images.ImageDecodeError as error:
            raise ImageError(str(error)) from None
        if not self.resizes and list(pixels.shape[:2]) != list(shape[:2]):
            size = f"{path}: {pixels.shape[1]}x{pixels.shape[0]} pixels, but the model takes {shape[1]}x{shape[0]}"
            if not self.fit_ops:
                raise ImageError(f"{size} (its eval transforms do not resize)")
            if not self.fit_notice:
                self.fit_notice = f"{size}: fitted with {self.fit_spec} before the eval transforms (--fit=none refuses)"
        return pixels.astype(self.inputs.get("dtype", "uint8"))

    def operations(self, image: np.ndarray) -> list:
        """The ops that take `image` to the model's input: the fit where its size is not the input's, then eval's."""
        if self.fit_ops and list(image.shape[:2]) != list(self.inputs["shape"][:2]):
            return [*self.fit_ops, *self.ops]
        return self.ops

    def outputs(self, path: Path, image: np.ndarray) -> ImagePrediction:
        """The model's outputs for one image, with the transformed image the model saw and the map back.

        The map is (scale, shift), each [2] as (x, y), taking the model input's
        pixels to the file's: a one-pixel box at the image's centre goes through
        the fit (if any) and the eval transforms with the image, and how it moves (each transform is a
        scale and a shift per axis) is inverted.
        """
        from jaxdl.tasks.base import ImagePrediction

        h, w = image.shape[:2]
        probe = np.array([[[w / 2 - 0.5, h / 2 - 0.5, w / 2 + 0.5, h / 2 + 0.5]]], np.float32)
        batch = {"input": image[None], "boxes": probe, "box_valid": np.ones((1, 1), np.uint8)}
        for op in self.operations(image):
            batch = op.map(batch)
        moved = np.asarray(batch["boxes"], np.float64)[0, 0]
        scale = moved[2:] - moved[:2]  # The probe's size was 1 x 1.
        shift = moved[:2] - probe[0, 0, :2] * scale
        model_input = np.asarray(batch["input"])
        outputs = np.asarray(self.run.outputs(model_input))[0]
        return ImagePrediction(path, image, model_input[0], outputs, (1 / scale, -shift / scale))

    def predict(self, path: Path, out: Path, top: int = 5, score_threshold: float = 0.25) -> dict:
        """The JSON record of one image: the file and what its task shows (pictures are written under `out`)."""
        prediction = self.outputs(path, self.load(path))
        shown = self.run.task.describe_prediction(
            prediction, out, class_names=self.run.class_names, top=top, score_threshold=score_threshold
        )
        return {"file": str(path), **shown}


def predict_cli(argv: Sequence[str] | None = None) -> int:
    """Entry point of jaxdl-predict; returns the exit code."""
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
    parser.add_argument(
        "--fit",
        choices=("auto", "none"),
        default="auto",
        help="a file of another size than the model's input: auto fits it the task's way "
        "(letterbox, resize, centre crop); none refuses it",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging()
    try:
        predictor = Predictor(args.workdir, fit=args.fit)
    except UserError as error:
        return report(parser.prog, error)
    out = Path(args.out) if args.out else Path(args.workdir) / "predictions"
    out.mkdir(parents=True, exist_ok=True)
    failed, noticed = 0, False
    with open(out / "predictions.jsonl", "w") as log:
        for name in args.images:
            try:
                record = predictor.predict(Path(name), out, top=args.top, score_threshold=args.score_threshold)
            except ImageError as error:
                report(parser.prog, error)
                failed += 1
                continue
            if predictor.fit_notice and not noticed:
                print(f"{parser.prog}: {predictor.fit_notice}", file=sys.stderr)
                noticed = True
            line = json.dumps(record)
            print(line, flush=True)
            log.write(line + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(predict_cli())
