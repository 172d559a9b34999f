"""Batch transforms as small registered grain ops, named in configs as strings.

A spec is `name(arg=value, ...)` joined by `|`, e.g.
`"rescale(scale=0.0625)|random_crop(padding=1)|random_flip()"`. Every transform
reads and writes the `input` entry of a batch `{"input": x, "target": y}`, whose
leading axis is the batch: the pipeline works on whole batches, so Python runs
once per batch instead of once per example. Random transforms draw per-example
values from the generator grain passes in, which grain derives from the seed and
the batch's position in the stream: augmentation replays exactly after a resume.
"""

from __future__ import annotations

import abc
import ast
import dataclasses
from collections.abc import Mapping

import grain
import numpy as np


@dataclasses.dataclass(frozen=True)
class Spec:
    """One parsed transform: its registered name and keyword arguments."""

    name: str
    kwargs: dict


class Rescale(grain.transforms.Map):
    """Casts to float32 and multiplies by `scale` (e.g. 1/255 for uint8 images)."""

    def __init__(self, scale: float):
        self.scale = np.float32(scale)

    def map(self, batch):
        return {**batch, "input": batch["input"].astype(np.float32) * self.scale}


class Normalize(grain.transforms.Map):
    """(x - mean) / std with constants, scalar or one per channel (last axis)."""

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        if np.any(self.std <= 0):
            raise ValueError(f"normalize: std must be > 0, got {std}")

    def map(self, batch):
        return {**batch, "input": (batch["input"].astype(np.float32) - self.mean) / self.std}


class Standardize(Normalize):
    """(x - mean) / std with per-feature statistics of the training split."""

    def __init__(self, statistics: Mapping[str, np.ndarray]):
        std = np.where(np.asarray(statistics["std"]) > 0, statistics["std"], 1.0)  # Constant features stay finite.
        super().__init__(statistics["mean"], std)


class RandomTransform(grain.transforms.RandomMap):
    """A transform whose per-example random parameters are drawn for the whole global batch.

    Every process draws the parameters of all examples of the global batch from
    the same generator and keeps those of its own slice (`window`), so an
    example's augmentation does not depend on how many processes share the batch.
    """

    global_batch: int | None = None  # None: the batch is the global batch.
    offset: int = 0  # This process's first example within the global batch.

    @abc.abstractmethod
    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Random parameters of `size` examples, one row per example."""

    @abc.abstractmethod
    def apply(self, batch: dict, params: np.ndarray) -> dict:
        """The batch transformed with one row of `params` per example."""

    def random_map(self, batch, rng: np.random.Generator):
        size = len(batch["input"])
        params = self.draw(rng, self.global_batch or size)
        return self.apply(batch, params[self.offset : self.offset + size])


class RandomCrop(RandomTransform):
    """Zero-pads height and width by `padding`, then crops a random window of the original size.

    Images are [batch, height, width, ...]; each image gets its own window.
    """

    def __init__(self, padding: int = 4):
        if padding < 0:
            raise ValueError(f"random_crop: padding must be >= 0, got {padding}")
        self.padding = int(padding)

    def draw(self, rng, size):
        return rng.integers(0, 2 * self.padding + 1, size=(2, size)).T  # (top, left) per example.

    def apply(self, batch, params):
        images = batch["input"]
        size, height, width = images.shape[:3]
        pad = self.padding
        # Zeros plus one slice assignment: the same as np.pad, at a fraction of its overhead.
        padded = np.zeros((size, height + 2 * pad, width + 2 * pad, *images.shape[3:]), images.dtype)
        padded[:, pad : pad + height, pad : pad + width] = images
        # One gather picks every image's window: rows[b, i] = top[b] + i, likewise columns.
        rows = (params[:, 0, None] + np.arange(height))[:, :, None]
        cols = (params[:, 1, None] + np.arange(width))[:, None, :]
        return {**batch, "input": padded[np.arange(size)[:, None, None], rows, cols]}


class RandomFlip(RandomTransform):
    """Mirrors each image left-right with probability `p`."""

    def __init__(self, p: float = 0.5):
        if not 0 <= p <= 1:
            raise ValueError(f"random_flip: p must be in [0, 1], got {p}")
        self.p = float(p)

    def draw(self, rng, size):
        return rng.random(size) < self.p

    def apply(self, batch, params):
        images = batch["input"]
        flip = params.reshape(-1, *([1] * (images.ndim - 1)))
        return {**batch, "input": np.where(flip, images[:, :, ::-1], images)}


def _images(batch: dict) -> list[np.ndarray]:
    """The batch's images as a list (variable-size datasets arrive as a list)."""
    images = batch["input"]
    return list(images) if isinstance(images, np.ndarray) else images


def _stack_resized(out: list[np.ndarray], batch: dict, size: int) -> np.ndarray:
    """The resized images as one array; an empty batch keeps its channel count."""
    if out:
        return np.stack(out)
    channels = batch["input"].shape[3:] if isinstance(batch["input"], np.ndarray) else ()
    return np.zeros((0, size, size, *channels), np.float32)


def resized_crop(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Crops box = (top, left, height, width) of an [H, W, C] image and resizes it to size x size.

    Bilinear with half-pixel centres and edge clamping, as torch's
    `interpolate(mode="bilinear", align_corners=False)` without antialiasing.
    Returns float32.
    """
    top, left, height, width = box
    crop = image[top : top + height, left : left + width].astype(np.float32)

    def axis(n_in: int):
        src = np.maximum((np.arange(size, dtype=np.float64) + 0.5) * (n_in / size) - 0.5, 0.0)
        low = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        high = np.minimum(low + 1, n_in - 1)
        frac = (src - low).astype(np.float32)
        return low, high, frac

    y0, y1, fy = axis(height)
    x0, x1, fx = axis(width)
    rows = crop[y0] * (1 - fy)[:, None, None] + crop[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


class RandomResizedCrop(RandomTransform):
    """Crops a random box of random area fraction and aspect ratio, resized to `size` x `size`.

    The box is drawn as torchvision's RandomResizedCrop draws it: up to 10
    tries of area ~ U(scale) x image area and log aspect ~ U(log ratio); the
    first box that fits is used, else a centre crop clamped to the ratio range.
    Works on lists of images of different sizes (ImageNet) as on arrays.
    """

    tries = 10

    def __init__(self, size: int = 224, scale: tuple = (0.08, 1.0), ratio: tuple = (3 / 4, 4 / 3)):
        if size <= 0 or not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"random_resized_crop: bad size={size}, scale={scale} or ratio={ratio}")
        self.size, self.scale, self.ratio = int(size), tuple(scale), tuple(ratio)

    def draw(self, rng, size):
        # Image-size-free uniforms: area, log aspect, top and left of every try.
        return rng.random((size, self.tries, 4))

    def box(self, height: int, width: int, u: np.ndarray) -> tuple[int, int, int, int]:
        """The crop box of one image from its uniforms `u` [tries, 4]."""
        area = height * width
        log_lo, log_hi = np.log(self.ratio[0]), np.log(self.ratio[1])
        for u_area, u_ratio, u_top, u_left in u:
            target = area * (self.scale[0] + u_area * (self.scale[1] - self.scale[0]))
            aspect = np.exp(log_lo + u_ratio * (log_hi - log_lo))
            w = int(round(np.sqrt(target * aspect)))
            h = int(round(np.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return int(u_top * (height - h + 1)), int(u_left * (width - w + 1)), h, w
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def apply(self, batch, params):
        images = _images(batch)
        out = [
            resized_crop(im, self.box(im.shape[0], im.shape[1], u), self.size)
            for im, u in zip(images, params, strict=True)
        ]
        return {**batch, "input": _stack_resized(out, batch, self.size)}


class CenterCrop(grain.transforms.Map):
    """The central square of side `fraction` x the shorter side, resized to `size` x `size`.

    fraction=0.875 at size 224 is the usual ImageNet evaluation (resize to 256,
    centre-crop 224). Works on lists of images of different sizes.
    """

    def __init__(self, size: int = 224, fraction: float = 0.875):
        if size <= 0 or not 0 < fraction <= 1:
            raise ValueError(f"center_crop: bad size={size} or fraction={fraction}")
        self.size, self.fraction = int(size), float(fraction)

    def map(self, batch):
        out = []
        for image in _images(batch):
            height, width = image.shape[:2]
            side = max(1, int(round(min(height, width) * self.fraction)))
            box = ((height - side) // 2, (width - side) // 2, side, side)
            out.append(resized_crop(image, box, self.size))
        return {**batch, "input": _stack_resized(out, batch, self.size)}


# name -> constructor; `standardize` also receives the training statistics.
REGISTRY = {
    "rescale": Rescale,
    "normalize": Normalize,
    "standardize": Standardize,
    "random_crop": RandomCrop,
    "random_flip": RandomFlip,
    "random_resized_crop": RandomResizedCrop,
    "center_crop": CenterCrop,
}

# Transforms that accept a list of images of different sizes and return one array.
RESIZING = ("random_resized_crop", "center_crop")


def parse(text: str) -> list[Spec]:
    """Parses `"a(x=1)|b()"` into specs; unknown names and bad syntax raise ValueError."""
    specs = []
    for part in filter(None, (p.strip() for p in text.split("|"))):
        try:
            node = ast.parse(part, mode="eval").body
        except SyntaxError:
            raise ValueError(f"cannot parse transform '{part}'; write name(arg=value, ...)") from None
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
            raise ValueError(f"cannot parse transform '{part}'; write name(arg=value, ...)")
        name = node.func.id
        if name not in REGISTRY:
            raise ValueError(f"unknown transform '{name}'; choose one of: {', '.join(sorted(REGISTRY))}")
        try:
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
        except ValueError:
            raise ValueError(f"transform '{part}': arguments must be literals") from None
        if name == "standardize" and kwargs:
            raise ValueError("standardize() takes no arguments; it uses the training split's statistics")
        specs.append(Spec(name, kwargs))
    return specs


def needs_statistics(specs: list[Spec]) -> bool:
    """Whether any transform needs the training split's statistics."""
    return any(spec.name == "standardize" for spec in specs)


def build(
    specs: list[Spec],
    statistics: Mapping[str, np.ndarray] | None = None,
    *,
    global_batch: int | None = None,
    offset: int = 0,
) -> list:
    """Instantiates the grain ops of `specs`; bad arguments raise ValueError.

    Args:
      specs: parsed transforms.
      statistics: training mean and std, for `standardize`.
      global_batch: size of the global batch that random transforms draw for.
      offset: this process's first example within the global batch.
    """
    ops = []
    for spec in specs:
        try:
            op = Standardize(statistics) if spec.name == "standardize" else REGISTRY[spec.name](**spec.kwargs)
        except TypeError as error:
            raise ValueError(f"transform '{spec.name}': {error}") from None
        if isinstance(op, RandomTransform):
            op.global_batch, op.offset = global_batch, offset
        ops.append(op)
    return ops
