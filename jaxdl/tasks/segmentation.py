"""Semantic segmentation: a class per pixel, pixels labelled `ignore_index` never count.

Outputs are logits [batch, height, width, num_classes]; targets are class-id
masks [batch, height, width]. The training loss of an image is its pixels'
cross-entropy, weighted by `class_weights` (a weighted mean over its labelled
pixels, as torch's `CrossEntropyLoss(weight=..., ignore_index=...)` takes it
over one image), plus `dice_weight` x (1 - soft Dice), the Dice of the softmax
probabilities against the one-hot truth, averaged over the classes present.

Evaluation sums a confusion matrix over every labelled pixel of the split, so:

- pixel_accuracy = correct pixels / labelled pixels (weighted by pixels, not images);
- iou_k = TP_k / (TP_k + FP_k + FN_k) for each class k that occurs in the truth
  or the predictions of the split; a class absent from both has no IoU and is
  left out of the mean: miou = the mean of the defined iou_k;
- dice = the mean over the same classes of 2 TP_k / (2 TP_k + FP_k + FN_k);
- loss = the mean training loss of the images.

The best checkpoint is the one with the highest validation mIoU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxdl import display
from jaxdl.errors import ConfigError, check_at_least
from jaxdl.tasks.base import ImagePrediction, Task


class Segmentation(Task):
    """Per-pixel classification into `num_classes` classes; `ignore_index` marks unlabelled pixels."""

    target_kinds = ("mask",)
    best_metric = "miou"
    maximized = frozenset({"pixel_accuracy", "miou", "dice"})

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        class_weights: tuple[float, ...] = (),
        dice_weight: float = 0.0,
    ):
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if class_weights and (len(class_weights) != num_classes or min(class_weights) < 0):
            raise ValueError(f"class_weights must be {num_classes} values >= 0, got {class_weights}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index={ignore_index} is a class id; choose one outside [0, {num_classes})")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.class_weights = tuple(float(w) for w in class_weights) or (1.0,) * self.num_classes
        self.dice_weight = float(dice_weight)

    @classmethod
    def from_config(cls, task: ml_collections.ConfigDict, dataset: ml_collections.ConfigDict) -> Segmentation:
        check_at_least("task.num_classes", task.num_classes, 2)
        check_at_least("task.dice_weight", task.dice_weight, 0)
        try:
            return cls(task.num_classes, dataset.ignore_index, tuple(task.class_weights), task.dice_weight)
        except ValueError as error:
            raise ConfigError(f"config.task: {error}") from None

    @property
    def metric_names(self) -> tuple[str, ...]:
        return ("loss", "pixel_accuracy", "miou", "dice", *(f"iou_{k}" for k in range(self.num_classes)))

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    def prepare_targets(self, targets: jax.Array) -> jax.Array:
        return jnp.asarray(targets).astype(jnp.int32)

    def _valid(self, targets: jax.Array) -> jax.Array:
        return targets != self.ignore_index

    def loss(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        logits = outputs.astype(jnp.float32)
        valid = self._valid(targets)
        labels = jnp.where(valid, targets, 0)
        weights = jnp.asarray(self.class_weights, jnp.float32)[labels] * valid
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        axes = tuple(range(1, ce.ndim))
        # An image without a labelled pixel has loss 0, not NaN.
        loss = jnp.sum(ce * weights, axis=axes) / jnp.maximum(jnp.sum(weights, axis=axes), 1e-12)
        if self.dice_weight > 0:
            loss = loss + self.dice_weight * (1.0 - self.soft_dice(logits, targets))
        return loss

    def soft_dice(self, logits: jax.Array, targets: jax.Array) -> jax.Array:
        """Per-image soft Dice of the softmax probabilities, averaged over the classes in the image's truth."""
        valid = self._valid(targets)[..., None].astype(jnp.float32)
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1) * valid
        truth = jax.nn.one_hot(jnp.where(valid[..., 0] > 0, targets, 0), self.num_classes) * valid
        axes = tuple(range(1, logits.ndim - 1))
        overlap = jnp.sum(probs * truth, axis=axes)
        total = jnp.sum(probs, axis=axes) + jnp.sum(truth, axis=axes)
        present = (jnp.sum(truth, axis=axes) > 0).astype(jnp.float32)
        dice = 2.0 * overlap / jnp.maximum(total, 1e-12)
        return jnp.sum(dice * present, axis=-1) / jnp.maximum(jnp.sum(present, axis=-1), 1.0)

    def predictions(self, outputs: jax.Array) -> jax.Array:
        """The predicted class of every pixel, [batch, height, width]."""
        return jnp.argmax(outputs, axis=-1)

    def metrics(self, outputs: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
        valid = self._valid(targets).astype(jnp.float32)
        correct = (self.predictions(outputs) == targets).astype(jnp.float32) * valid
        axes = tuple(range(1, targets.ndim))
        accuracy = jnp.sum(correct, axis=axes) / jnp.maximum(jnp.sum(valid, axis=axes), 1.0)
        return {"loss": self.loss(outputs, targets), "pixel_accuracy": accuracy}

    def eval_sums(self, outputs: jax.Array, targets: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
        """Image-weighted loss, and the confusion matrix [truth, prediction] of the labelled pixels of real images."""
        k = self.num_classes
        valid = self._valid(targets) & (mask.reshape((-1,) + (1,) * (targets.ndim - 1)) > 0)
        truth = jnp.where(valid, targets, 0).reshape(-1)
        predicted = self.predictions(outputs).reshape(-1)
        confusion = jnp.bincount(truth * k + predicted, weights=valid.reshape(-1).astype(jnp.float32), length=k * k)
        return {
            "loss": jnp.sum(self.loss(outputs, targets) * mask),
            "count": jnp.sum(mask),
            "confusion": confusion.reshape(k, k),
        }

    def finalize_sums(self, totals: Mapping[str, np.ndarray]) -> dict[str, float]:
        return {"loss": float(totals["loss"]) / float(totals["count"]), **confusion_metrics(totals["confusion"])}

    displays_predictions = True

    def prediction_fit(self, height: int, width: int) -> str:
        """The whole file resized to the model's input; the mask is mapped back to the file's size."""
        return f"resize(size=({height}, {width}))"

    def describe_prediction(
        self,
        prediction: ImagePrediction,
        out: Path,
        *,
        class_names: Sequence[str] | None = None,
        top: int = 5,
        score_threshold: float = 0.25,
    ) -> dict:
        """Writes OUT/<stem>_mask.png (each pixel's class id) and OUT/<stem>_overlay.png; reports pixels per class.

        Where the whole file went into the model's input (no crop: the input as
        is, or resized or letterboxed), the mask is mapped back to the file's
        pixels (`mask_in_file_pixels`); after a crop it stays at the input's size.
        """
        from PIL import Image

        del class_names, top, score_threshold
        mask = np.argmax(prediction.outputs, axis=-1).astype(np.uint8)
        image = prediction.image
        in_file = mask_in_file_pixels(mask, prediction.to_image, image.shape[:2])
        mask = mask if in_file is None else in_file
        # The overlay is drawn on the image the model saw (after crops and resizes), at the mask's size.
        shown = image if image.shape[:2] == mask.shape else display.display_image(prediction.model_input)
        stem = prediction.path.stem
        mask_path, overlay_path = out / f"{stem}_mask.png", out / f"{stem}_overlay.png"
        Image.fromarray(mask).save(mask_path)
        Image.fromarray(display.overlay(shown, mask, self.num_classes)).save(overlay_path)
        counts = np.bincount(mask.reshape(-1), minlength=self.num_classes)
        return {
            "mask": str(mask_path),
            "overlay": str(overlay_path),
            "pixels_per_class": {str(k): int(c) for k, c in enumerate(counts)},
        }


def mask_in_file_pixels(
    mask: np.ndarray, to_image: tuple[np.ndarray, np.ndarray], file_hw: tuple[int, int]
) -> np.ndarray | None:
    """A mask on the model's input resampled (nearest) to the file's height x width, or None after a crop.

    `to_image` takes input pixels to file pixels (x' = x * scale + shift); the
    file's frame [0, W] x [0, H] taken back lands on the part of the input it
    fills (all of it after a resize, the inside of a letterbox). Its mask pixels
    are resized to the file's size by `transforms.nearest_crop`. A file part of
    which is outside the input (a crop cut it away) has no whole mask: None.
    """
    from jaxdl.data import transforms

    scale, shift = (np.asarray(v, np.float64) for v in to_image)
    height, width = file_hw
    x0, y0 = -shift / scale
    x1, y1 = (np.array([width, height], np.float64) - shift) / scale
    tol = 1e-3  # The map is computed in float32 by the transforms.
    if x0 < -tol or y0 < -tol or x1 > mask.shape[1] + tol or y1 > mask.shape[0] + tol:
        return None
    top, left, bottom, right = (int(round(v)) for v in (y0, x0, y1, x1))
    if bottom <= top or right <= left:
        return None
    return transforms.nearest_crop(mask, (top, left, bottom - top, right - left), (height, width))


def confusion_metrics(confusion: np.ndarray) -> dict[str, float]:
    """Pixel accuracy, per-class IoU, mIoU and Dice of a confusion matrix [truth, prediction] (see the module)."""
    confusion = np.asarray(confusion, np.float64)
    tp = np.diag(confusion)
    truth, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    union = truth + predicted - tp
    defined = union > 0
    iou = tp[defined] / union[defined]
    dice = 2 * tp[defined] / (truth + predicted)[defined]
    result = {
        "pixel_accuracy": float(tp.sum() / max(confusion.sum(), 1.0)),
        "miou": float(iou.mean()) if iou.size else 0.0,
        "dice": float(dice.mean()) if dice.size else 0.0,
    }
    result.update({f"iou_{k}": float(v) for k, v in zip(np.flatnonzero(defined), iou, strict=True)})
    return result
