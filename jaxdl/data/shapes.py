"""`shapes`: synthetic 64x64 scenes of circles, squares and triangles, for segmentation and detection.

Generated in code from a fixed seed per split (train 0, validation 1, test 2),
so every build of the same split sizes holds the same bytes. Each image has a
textured background (two seeded low-frequency sinusoidal gratings, stripes
when one dominates, over a random base colour) and 1 to 4 flat-coloured
objects of random class, size and position, drawn in order: later objects
occlude earlier ones in the image and the mask. Rasterisation is vectorised
over all images of a split (2,400 images take well under a second).

A record:

- `image` [64, 64, 3] uint8;
- `segmentation_mask` [64, 64] uint8: 0 background, 1 circle, 2 square, 3 triangle;
- `boxes` [4, 4] float32 (x0, y0, x1, y1) in pixels, the full extent of each
  object's pixels (occluded parts included), pixel (i, j) covering
  [j, j+1) x [i, i+1): x0 = first column, x1 = last column + 1;
- `box_classes` [4] int32: the object's class (1..3), 0 for a padding slot;
- `box_valid` [4] uint8: 1 for an object with at least one visible pixel;
  valid boxes come first, then padding slots (all zeros); a drawn object
  that later ones hide completely is dropped;
- `num_objects` int32: the number of valid boxes.
"""

from __future__ import annotations

import numpy as np

SIZE = 64
MAX_OBJECTS = 4
CLASSES = ("background", "circle", "square", "triangle")
SPLITS = ("train", "validation", "test")
_SEED = 20240607


def generate(num: int, seed: int) -> dict[str, np.ndarray]:
    """`num` records stacked per feature, drawn from `seed` alone."""
    rng = np.random.default_rng([_SEED, seed])
    n, k = num, MAX_OBJECTS
    y = np.arange(SIZE, dtype=np.float32)[None, :, None] + 0.5  # Pixel centres.
    x = np.arange(SIZE, dtype=np.float32)[None, None, :] + 0.5
    image = _background(rng, n, y, x)
    count = rng.integers(1, k + 1, n)
    classes = rng.integers(1, len(CLASSES), (n, k))
    radius = rng.uniform(5, 14, (n, k)).astype(np.float32)  # Half the side of a square or triangle.
    cx = rng.uniform(radius, SIZE - radius).astype(np.float32)  # Whole object inside the image.
    cy = rng.uniform(radius, SIZE - radius).astype(np.float32)
    colours = rng.integers(0, 256, (n, k, 3), dtype=np.uint8)
    mask = np.zeros((n, SIZE, SIZE), np.uint8)
    owner = np.full((n, SIZE, SIZE), -1, np.int8)  # Which object each pixel shows.
    boxes = np.zeros((n, k, 4), np.float32)
    for j in range(k):
        inside = _inside(
            classes[:, j, None, None], cx[:, j, None, None], cy[:, j, None, None], radius[:, j, None, None], y, x
        )
        inside &= (j < count)[:, None, None]
        boxes[:, j] = _extent(inside)
        mask = np.where(inside, classes[:, j, None, None].astype(np.uint8), mask)
        image = np.where(inside[..., None], colours[:, j, None, None], image)
        owner = np.where(inside, np.int8(j), owner)
    visible = np.stack([(owner == j).any(axis=(1, 2)) for j in range(k)], axis=1)
    order = np.argsort(~visible, axis=1, kind="stable")  # Visible objects first, in drawing order.
    visible = np.take_along_axis(visible, order, axis=1)
    boxes = np.where(visible[..., None], np.take_along_axis(boxes, order[..., None], axis=1), 0).astype(np.float32)
    classes = np.where(visible, np.take_along_axis(classes, order, axis=1), 0).astype(np.int32)
    return {
        "image": image,
        "segmentation_mask": mask,
        "boxes": boxes,
        "box_classes": classes,
        "box_valid": visible.astype(np.uint8),
        "num_objects": visible.sum(axis=1).astype(np.int32),
    }


def _background(rng: np.random.Generator, n: int, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """[n, 64, 64, 3] uint8: a base colour plus two gratings of 0.5 to 3 cycles per image."""

    def uniform(low, high, shape):
        return rng.uniform(low, high, shape).astype(np.float32)  # float32: half the work of float64.

    base = uniform(40, 216, (n, 1, 1, 3))
    texture = np.zeros((n, SIZE, SIZE), np.float32)
    for _ in range(2):
        cycles, angle = uniform(0.5, 3.0, (n, 1, 1)), uniform(0, np.pi, (n, 1, 1))
        phase, amplitude = uniform(0, 2 * np.pi, (n, 1, 1)), uniform(5, 35, (n, 1, 1))
        along = x * np.cos(angle) + y * np.sin(angle)
        texture += amplitude * np.sin((2 * np.pi / SIZE) * cycles * along + phase)
    tint = uniform(0.5, 1.0, (n, 1, 1, 3))  # The texture differs a little per channel.
    return np.clip(base + texture[..., None] * tint, 0, 255).astype(np.uint8)


def _inside(cls, cx, cy, r, y, x) -> np.ndarray:
    """Whether each pixel centre lies in the object: a circle, square or upright triangle of size `r`."""
    dx, dy = np.abs(x - cx), y - cy
    circle = dx * dx + dy * dy <= r * r
    square = (dx <= r) & (np.abs(dy) <= r)
    triangle = (dy <= r) & (dx <= (dy + r) / 2)  # Apex (cx, cy - r), base from cx - r to cx + r at cy + r.
    return np.where(cls == 1, circle, np.where(cls == 2, square, triangle))


def _extent(inside: np.ndarray) -> np.ndarray:
    """[n, 4] (x0, y0, x1, y1) of each image's pixels in `inside` (zeros where there are none)."""
    cols, rows = inside.any(axis=1), inside.any(axis=2)
    x0, y0 = cols.argmax(axis=1), rows.argmax(axis=1)
    x1, y1 = SIZE - cols[:, ::-1].argmax(axis=1), SIZE - rows[:, ::-1].argmax(axis=1)
    extent = np.stack([x0, y0, x1, y1], axis=1).astype(np.float32)
    return np.where(cols.any(axis=1)[:, None], extent, 0)
