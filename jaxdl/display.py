"""Pictures of predictions: a colour per class, images stretched for display, masks overlaid, boxes drawn.

Shared by the tasks' `describe_prediction` (jaxdl-predict) and the figure
scripts in experiments/, so a class has the same colour everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def palette(num_classes: int) -> np.ndarray:
    """A fixed colour per class (class 0, usually background, black), [num_classes, 3] uint8."""
    rng = np.random.default_rng(0)
    colours = rng.integers(64, 256, size=(max(num_classes, 1), 3)).astype(np.uint8)
    colours[0] = 0
    return colours


def display_image(image: np.ndarray) -> np.ndarray:
    """An image (any range, 1 or 3 channels) stretched to 0..255 uint8 with 3 channels, for display."""
    image = np.asarray(image, np.float64)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    low, high = image.min(), image.max()
    return ((image - low) / max(high - low, 1e-12) * 255).astype(np.uint8)


def rgb(image: np.ndarray) -> np.ndarray:
    """A uint8 image [H, W, 1 or 3] as [H, W, 3] (grey repeated)."""
    image = np.asarray(image)
    return (image if image.shape[-1] == 3 else np.repeat(image[..., :1], 3, axis=-1)).astype(np.uint8)


def overlay(image: np.ndarray, mask: np.ndarray, num_classes: int) -> np.ndarray:
    """`image` (uint8 [H, W, 1 or 3]) with the pixels of mask classes > 0 tinted in their colour, [H, W, 3] uint8."""
    shown = rgb(image)
    colours = palette(num_classes)[mask]
    return np.where(mask[..., None] > 0, shown // 2 + colours // 2, shown).astype(np.uint8)


def label(class_id: int, class_names: Sequence[str] | None) -> str:
    """The class's name where the run knows it, else its id."""
    return class_names[class_id] if class_names is not None and class_id < len(class_names) else str(class_id)


def draw_boxes(image: np.ndarray, detections: Sequence[dict], num_classes: int, class_names=None):
    """A PIL image of `image` (uint8) with each detection's box, class and score drawn in its class colour.

    A detection is a dict with "box" (x0, y0, x1, y1 in the image's pixels), "class" and "score".
    """
    from PIL import Image, ImageDraw

    picture = Image.fromarray(rgb(image))
    draw = ImageDraw.Draw(picture)
    colours = palette(num_classes + 1)[1:]  # Detection ids start at 0; palette's 0 is black.
    h, w = np.asarray(image).shape[:2]
    for d in detections:
        colour = tuple(int(v) for v in colours[d["class"]])
        draw.rectangle(d["box"], outline=colour, width=max(1, round(max(w, h) / 200)))
        text = f"{label(d['class'], class_names)} {d['score']:.2f}"
        draw.text((d["box"][0] + 2, d["box"][1] + 1), text, fill=colour)
    return picture
