"""Batch transforms as small registered grain ops, named in configs as strings.

A spec is `name(arg=value, ...)` joined by `|`, e.g.
`"rescale(scale=0.0625)|random_crop(padding=1)|random_flip()"`. A batch is a
dict of named arrays whose leading axis is the batch: the pipeline works on
whole batches, so Python runs once per batch instead of once per example.
Random transforms draw per-example values from the generator grain passes in,
which grain derives from the seed and the batch's position in the stream:
augmentation replays exactly after a resume.

Keys and kinds. The pipeline tells the ops the kind of each batch key
(`build(..., kinds=...)`, default `{"input": "image"}`); keys without a kind
ride along untouched:

- `image` [B, H, W, C] (or a list of [H, W, C] of different sizes): resampled
  bilinearly with half-pixel centres (torch's `align_corners=False`, no
  antialias); a resizing op returns float32, a shifting or flipping op keeps
  the dtype; areas outside the image are 0 (letterbox: `fill=`).
- `mask` [B, H, W] integer class ids (or a list): nearest neighbour at the same
  half-pixel centres, the dtype is kept, areas outside the image are
  `ignore_index` (config.dataset.ignore_index).
- `boxes` [B, N, 4] float32 (x0, y0, x1, y1) in the image's own pixel frame,
  where pixel (i, j) covers [j, j+1) x [i, i+1): moved by the same map as the
  pixels (a mask pixel is inside its object's box exactly when its centre is),
  then clipped to the output image. With them rides a `box_valid` [B, N] key:
  a box whose clipped width or height is zero (it left the image) gets
  box_valid = 0 and coordinates 0; once 0 it stays 0. So after any chain, a
  valid box holds the centres of all of its object's mask pixels, and an
  invalid box has no mask pixels left. Per-box values (kind `box_classes`,
  e.g. the class ids of a detection target or its crowd flags) stay in their
  slots; only `mosaic`, which gathers the boxes of four images, moves them
  with the boxes. A per-box area (kind `box_area`, the annotation's area that
  COCO's small / medium / large ranges read) is a per-box value whose unit is
  pixels squared: a resize scales it by the product of the two axes' scales,
  as it scales its box's w*h; a crop or the edge clipping leaves it, as
  pycocotools keeps an annotation's area whatever part of it is visible.
- `label`, `sequence` and anything else: untouched by the geometric ops.

`rescale`, `normalize` and `standardize` act on `input` only (features or
images). `map_mask(ids={from: to, ...})` rewrites mask ids (ids not listed are
kept), e.g. oxford_iiit_pet's trimap (1 pet, 2 background, 3 border) as
background 0, pet 1, border ignored: `map_mask(ids={1: 1, 2: 0, 3: 255})`.
"""

from __future__ import annotations

import abc
import ast
import dataclasses
from collections.abc import Callable, Mapping

import grain
import numpy as np
from PIL import Image, ImageEnhance, ImageOps


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


IMAGE, MASK, BOXES, BOX_VALID, BOX_CLASSES = "image", "mask", "boxes", "box_valid", "box_classes"
BOX_AREA = "box_area"
KINDS = (IMAGE, MASK, BOXES, BOX_VALID, BOX_CLASSES, BOX_AREA, "label", "sequence", "features", "other")
DEFAULT_KINDS = {"input": IMAGE}


class Keyed:
    """Knows the kind of each batch key and the mask's "no label" id; `build` sets both."""

    kinds: Mapping[str, str] = DEFAULT_KINDS
    ignore_index: int = 255

    def keys(self, batch: dict, kind: str) -> list[str]:
        """The keys of `batch` that hold `kind`."""
        return [key for key, k in self.kinds.items() if k == kind and key in batch]

    def sizes(self, batch: dict) -> np.ndarray:
        """[B, 2] height and width of every example's image."""
        [key] = self.keys(batch, IMAGE)[:1] or ["input"]
        images = batch[key]
        if isinstance(images, np.ndarray):
            return np.tile(np.asarray(images.shape[1:3]), (len(images), 1))
        return np.array([im.shape[:2] for im in images], np.int64).reshape(-1, 2)

    def move_boxes(self, batch: dict, scale: np.ndarray, shift: np.ndarray, out_hw) -> dict:
        """Boxes mapped by x' = x * scale + shift ([B, 2] as (x, y)), clipped to `out_hw` ([B, 2] or (h, w))."""
        out = {}
        for key in self.keys(batch, BOXES):
            boxes = np.asarray(batch[key], np.float32)
            scale_, shift_ = np.tile(scale, 2)[:, None, :], np.tile(shift, 2)[:, None, :]
            moved = (boxes * scale_ + shift_).astype(np.float32)
            # A mirror (negative scale) swaps the ends: keep x0 <= x1.
            lo, hi = np.minimum(moved[..., :2], moved[..., 2:]), np.maximum(moved[..., :2], moved[..., 2:])
            limit = np.broadcast_to(np.asarray(out_hw, np.float32)[..., ::-1], (len(boxes), 2))[:, None, :]
            lo, hi = np.clip(lo, 0, limit), np.clip(hi, 0, limit)
            visible = np.all(hi > lo, axis=-1)
            for valid_key in self.keys(batch, BOX_VALID):
                valid = np.asarray(batch[valid_key])
                keep = visible & (valid != 0)
                out[valid_key] = keep.astype(valid.dtype)
                visible = keep
            out[key] = np.where(visible[..., None], np.concatenate([lo, hi], axis=-1), 0).astype(np.float32)
        for key in self.keys(batch, BOX_AREA):
            factor = np.abs(np.prod(np.asarray(scale, np.float64), axis=1))[:, None]
            out[key] = (np.asarray(batch[key], np.float64) * factor).astype(np.float32)
        return out


def _as_hw(size) -> tuple[int, int]:
    """(height, width) of an int or (h, w) size."""
    h, w = (size, size) if np.isscalar(size) else tuple(size)
    return int(h), int(w)


def _source_positions(n_in: int, n_out: int) -> np.ndarray:
    """Where the centres of `n_out` output pixels fall among `n_in` input pixels (half-pixel centres)."""
    return (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5


def resized_crop(image: np.ndarray, box: tuple[int, int, int, int], size) -> np.ndarray:
    """Crops box = (top, left, height, width) of an [H, W, C] image and resizes it to size (int or (h, w)).

    Bilinear with half-pixel centres and edge clamping, as torch's
    `interpolate(mode="bilinear", align_corners=False)` without antialiasing.
    Returns float32.
    """
    top, left, height, width = box
    out_h, out_w = _as_hw(size)
    crop = image[top : top + height, left : left + width].astype(np.float32)
    if crop.ndim == 2:
        return resized_crop(image[..., None], box, size)[..., 0]

    def axis(n_in: int, n_out: int):
        src = np.maximum(_source_positions(n_in, n_out), 0.0)
        low = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        high = np.minimum(low + 1, n_in - 1)
        frac = (src - low).astype(np.float32)
        return low, high, frac

    y0, y1, fy = axis(height, out_h)
    x0, x1, fx = axis(width, out_w)
    rows = crop[y0] * (1 - fy)[:, None, None] + crop[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def nearest_crop(mask: np.ndarray, box: tuple[int, int, int, int], size) -> np.ndarray:
    """Crops box = (top, left, height, width) of an [H, W] mask and resizes it to size, nearest neighbour.

    Output pixel centres are mapped as in `resized_crop`; each takes the input
    pixel its centre falls in, so the dtype is kept.
    """
    top, left, height, width = box
    out_h, out_w = _as_hw(size)
    rows = np.minimum(np.floor(_source_positions(height, out_h) + 0.5).astype(np.int64), height - 1)
    cols = np.minimum(np.floor(_source_positions(width, out_w) + 0.5).astype(np.int64), width - 1)
    return mask[top + rows[:, None], left + cols[None, :]]


def _as_list(values) -> list[np.ndarray]:
    return list(values) if isinstance(values, np.ndarray) else values


def _stack(out: list[np.ndarray], like, out_hw: tuple[int, int], dtype) -> np.ndarray:
    """The per-example outputs as one array; an empty batch keeps its trailing axes."""
    if out:
        return np.stack(out)
    trailing = like.shape[3:] if isinstance(like, np.ndarray) else ()
    return np.zeros((0, *out_hw, *trailing), dtype)


class _CropResize(Keyed):
    """Crops one integer box per example, within the image, and resizes it to one output size."""

    def crop_resize(self, batch: dict, crops: np.ndarray, out_hw: tuple[int, int]) -> dict:
        """`crops` [B, 4]: (top, left, height, width) of every example."""
        out = dict(batch)
        for key in self.keys(batch, IMAGE):
            images = _as_list(batch[key])
            resized = [resized_crop(im, tuple(c), out_hw) for im, c in zip(images, crops, strict=True)]
            out[key] = _stack(resized, batch[key], out_hw, np.float32)
        for key in self.keys(batch, MASK):
            masks = _as_list(batch[key])
            resized = [nearest_crop(m, tuple(c), out_hw) for m, c in zip(masks, crops, strict=True)]
            dtype = batch[key].dtype if isinstance(batch[key], np.ndarray) else np.int32
            out[key] = _stack(resized, batch[key], out_hw, dtype)
        crops = np.asarray(crops, np.float64).reshape(-1, 4)
        scale = np.asarray(out_hw[::-1], np.float64) / crops[:, [3, 2]]  # (x, y) = (out_w / w, out_h / h)
        out.update(self.move_boxes(batch, scale, -crops[:, [1, 0]] * scale, out_hw))
        return out


class RandomCrop(Keyed, RandomTransform):
    """Pads height and width by `padding`, then crops a random window of the original size.

    Images are [batch, height, width, ...], padded with 0; masks with
    ignore_index; boxes shift with the window. Each example gets its own window.
    """

    def __init__(self, padding: int = 4):
        if padding < 0:
            raise ValueError(f"random_crop: padding must be >= 0, got {padding}")
        self.padding = int(padding)

    def draw(self, rng, size):
        return rng.integers(0, 2 * self.padding + 1, size=(2, size)).T  # (top, left) per example.

    def _shift(self, values: np.ndarray, params: np.ndarray, fill) -> np.ndarray:
        size, height, width = values.shape[:3]
        pad = self.padding
        # A filled canvas plus one slice assignment: the same as np.pad, at a fraction of its overhead.
        padded = np.full((size, height + 2 * pad, width + 2 * pad, *values.shape[3:]), fill, values.dtype)
        padded[:, pad : pad + height, pad : pad + width] = values
        # One gather picks every image's window: rows[b, i] = top[b] + i, likewise columns.
        rows = (params[:, 0, None] + np.arange(height))[:, :, None]
        cols = (params[:, 1, None] + np.arange(width))[:, None, :]
        return padded[np.arange(size)[:, None, None], rows, cols]

    def apply(self, batch, params):
        out = dict(batch)
        for key in self.keys(batch, IMAGE):
            out[key] = self._shift(batch[key], params, 0)
        for key in self.keys(batch, MASK):
            out[key] = self._shift(batch[key], params, self.ignore_index)
        shift = (self.padding - params[:, ::-1]).astype(np.float64)  # (x, y)
        out.update(self.move_boxes(batch, np.ones_like(shift), shift, self.sizes(batch)))
        return out


class RandomFlip(Keyed, RandomTransform):
    """Mirrors each example left-right with probability `p`: images, masks and boxes together."""

    def __init__(self, p: float = 0.5):
        if not 0 <= p <= 1:
            raise ValueError(f"random_flip: p must be in [0, 1], got {p}")
        self.p = float(p)

    def draw(self, rng, size):
        return rng.random(size) < self.p

    def apply(self, batch, params):
        out = dict(batch)
        for key in self.keys(batch, IMAGE) + self.keys(batch, MASK):
            values = batch[key]
            if isinstance(values, np.ndarray):
                flip = params.reshape(-1, *([1] * (values.ndim - 1)))
                out[key] = np.where(flip, values[:, :, ::-1], values)
            else:
                out[key] = [v[:, ::-1] if f else v for v, f in zip(values, params, strict=True)]
        sizes = self.sizes(batch)
        scale = np.stack([np.where(params, -1.0, 1.0), np.ones(len(params))], axis=1)
        shift = np.stack([np.where(params, sizes[:, 1], 0.0), np.zeros(len(params))], axis=1)
        out.update(self.move_boxes(batch, scale, shift, sizes))
        return out


class RandomResizedCrop(_CropResize, RandomTransform):
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
        crops = [self.box(int(h), int(w), u) for (h, w), u in zip(self.sizes(batch), params, strict=True)]
        return self.crop_resize(batch, np.array(crops, np.int64).reshape(-1, 4), (self.size, self.size))


class CenterCrop(_CropResize, grain.transforms.Map):
    """The central square of side `fraction` x the shorter side, resized to `size` x `size`.

    fraction=0.875 at size 224 is the usual ImageNet evaluation (resize to 256,
    centre-crop 224). Works on lists of images of different sizes.
    """

    def __init__(self, size: int = 224, fraction: float = 0.875):
        if size <= 0 or not 0 < fraction <= 1:
            raise ValueError(f"center_crop: bad size={size} or fraction={fraction}")
        self.size, self.fraction = int(size), float(fraction)

    def map(self, batch):
        crops = []
        for height, width in self.sizes(batch):
            side = max(1, int(round(min(height, width) * self.fraction)))
            crops.append(((height - side) // 2, (width - side) // 2, side, side))
        return self.crop_resize(batch, np.array(crops, np.int64).reshape(-1, 4), (self.size, self.size))


class Resize(_CropResize, grain.transforms.Map):
    """The whole image resized to `size` x `size`, or to (height, width) for a pair; aspect not kept."""

    def __init__(self, size=224):
        if not (np.isscalar(size) or len(size) == 2) or min(_as_hw(size)) <= 0:
            raise ValueError(f"resize: bad size={size}; give an int or (height, width)")
        self.size = _as_hw(size)

    def map(self, batch):
        sizes = self.sizes(batch)
        crops = np.concatenate([np.zeros_like(sizes), sizes], axis=1)
        return self.crop_resize(batch, crops, self.size)


class Letterbox(Keyed, grain.transforms.Map):
    """Resizes keeping the aspect ratio to fit `size` x `size`, centred; the rest is padding.

    Each example is scaled by s = min(size / H, size / W) to round(H s) x
    round(W s) (bilinear; masks nearest) and pasted at the centre (offsets
    floor((size - h) / 2)); the padding holds `fill` in images, ignore_index in
    masks. Boxes are scaled and offset alike. Works on lists of images of
    different sizes.
    """

    def __init__(self, size: int = 224, fill: float = 0.0):
        if size <= 0:
            raise ValueError(f"letterbox: bad size={size}")
        self.size, self.fill = int(size), float(fill)

    def map(self, batch):
        sizes = self.sizes(batch).astype(np.float64)
        s = np.min(self.size / np.maximum(sizes, 1), axis=1)
        inner = np.clip(np.round(sizes * s[:, None]).astype(np.int64), 1, self.size)  # (h, w)
        top_left = (self.size - inner) // 2
        out = dict(batch)
        for key, fill, resize in [(k, self.fill, resized_crop) for k in self.keys(batch, IMAGE)] + [
            (k, self.ignore_index, nearest_crop) for k in self.keys(batch, MASK)
        ]:
            values = _as_list(batch[key])
            dtype = np.float32 if resize is resized_crop else np.asarray(values[0] if values else batch[key]).dtype
            trailing = values[0].shape[2:] if values else batch[key].shape[3:]
            canvas = np.full((len(values), self.size, self.size, *trailing), fill, dtype)
            for b, value in enumerate(values):
                (h, w), (t, left) = inner[b], top_left[b]
                canvas[b, t : t + h, left : left + w] = resize(value, (0, 0, *value.shape[:2]), (h, w))
            out[key] = canvas
        scale = inner[:, ::-1] / np.maximum(sizes[:, ::-1], 1)
        out.update(self.move_boxes(batch, scale, top_left[:, ::-1].astype(np.float64), (self.size, self.size)))
        return out


class MapMask(Keyed, grain.transforms.Map):
    """Rewrites mask ids: `ids={from: to, ...}`; ids not listed are kept, the dtype too."""

    def __init__(self, ids: dict):
        if not isinstance(ids, dict) or not all(isinstance(k, int) and isinstance(v, int) for k, v in ids.items()):
            raise ValueError(f"map_mask: ids must be a dict of int to int, got {ids!r}")
        self.ids = dict(ids)

    def _map(self, mask: np.ndarray) -> np.ndarray:
        out = mask.copy()
        for old, new in self.ids.items():
            out[mask == old] = new
        return out

    def map(self, batch):
        out = dict(batch)
        for key in self.keys(batch, MASK):
            values = batch[key]
            out[key] = self._map(values) if isinstance(values, np.ndarray) else [self._map(v) for v in values]
        return out


class Mosaic(Keyed, RandomTransform):
    """Four images in a 2 x 2 grid, cut back to one image's size at a random place.

    With probability `p` an example becomes the [2H, 2W] canvas of itself (top
    left) and three partner images (top right, bottom left, bottom right),
    cropped to [H, W] at a uniform random offset, so the four meet at a uniform
    random point of the output (YOLOv4's mosaic, as ultralytics trains YOLOv8
    with it). The images must be one array. Masks follow their images. The four
    images' boxes are moved and clipped to the crop; a box stays valid when its
    clipped width and height are >= 2 pixels and it keeps >= 10% of its area
    (the candidate rule ultralytics applies after its mosaic), so a valid box
    may show only part of its object and a dropped one may leave a sliver of
    pixels. Valid boxes come first in grid order with their per-box values
    (kinds `box_classes`, `box_area`); beyond the slots of one image
    (max_boxes) the rest are dropped.

    Partners are records of the whole split, drawn by record index as
    ultralytics draws them from its dataset: `partners` (set by the pipeline,
    jaxdl.data.pipeline) reads records by index through the transforms before
    the mosaic, which must therefore not be random. The draws, like every
    random transform's, are made for the global batch position of each example
    (see RandomTransform), so any number of processes and devices sees the same
    mosaics. Without `partners` (a batch transformed on its own) the partners
    are other examples of the batch.
    """

    min_side, min_area_fraction = 2.0, 0.1
    # Set by the pipeline: reads records [k] by index as a batch ready for the mosaic; and the split's size.
    partners: Callable[[np.ndarray], dict] | None = None
    num_records: int = 0

    def __init__(self, p: float = 1.0):
        if not 0 <= p <= 1:
            raise ValueError(f"mosaic: p must be in [0, 1], got {p}")
        self.p = float(p)

    def draw(self, rng, size):
        # apply?, three partner uniforms, crop offset uniforms (y, x).
        return rng.random((size, 6))

    def _tiles(self, batch: dict, on: np.ndarray, uniforms: np.ndarray, n: int) -> tuple[dict, np.ndarray]:
        """The images to draw from (the batch, then any partners read) and each example's four of them [n, 4]."""
        tiles = np.tile(np.arange(n)[:, None], (1, 4))  # An example left as it was stands in for its partners.
        if self.partners is None:
            others = 1 + np.minimum((uniforms * (n - 1)).astype(np.int64), n - 2)
            drawn = np.concatenate([np.arange(n)[:, None], (np.arange(n)[:, None] + others) % n], axis=1)
            return batch, np.where(on[:, None], drawn, tiles)
        chosen = np.flatnonzero(on)
        if len(chosen) == 0:
            return batch, tiles
        records = np.minimum((uniforms[chosen] * self.num_records).astype(np.int64), self.num_records - 1)
        read = self.partners(records.reshape(-1))
        tiles[chosen, 1:] = n + np.arange(3 * len(chosen)).reshape(-1, 3)
        moving = (IMAGE, MASK, BOXES, BOX_VALID, BOX_CLASSES, BOX_AREA)
        pool = dict(batch)
        for key in (key for kind in moving for key in self.keys(batch, kind)):
            if not isinstance(read[key], np.ndarray) or read[key].shape[1:] != batch[key].shape[1:]:
                raise ValueError(f"mosaic needs {key}s of one size; put a resizing transform before it")
            pool[key] = np.concatenate([batch[key], read[key].astype(batch[key].dtype)])
        return pool, tiles

    def apply(self, batch, params):
        images = batch[self.keys(batch, IMAGE)[0]] if self.keys(batch, IMAGE) else batch["input"]
        if not isinstance(images, np.ndarray):
            raise ValueError("mosaic needs images of one size; put a resizing transform before it")
        n, h, w = images.shape[:3]
        if n < 2 and self.partners is None:
            return batch
        on = params[:, 0] < self.p
        pool, tiles = self._tiles(batch, on, params[:, 1:4], n)
        top = np.where(on, np.minimum((params[:, 4] * (h + 1)).astype(np.int64), h), 0)
        left = np.where(on, np.minimum((params[:, 5] * (w + 1)).astype(np.int64), w), 0)
        rows = (top[:, None] + np.arange(h))[:, :, None]  # Canvas rows and columns of each output pixel.
        cols = (left[:, None] + np.arange(w))[:, None, :]
        tile = (rows >= h).astype(np.int64) * 2 + (cols >= w)  # Which of the four images a pixel shows.
        source = np.take_along_axis(tiles, tile.reshape(n, -1), axis=1).reshape(n, h, w)
        out = dict(batch)
        for key in self.keys(batch, IMAGE) + self.keys(batch, MASK):
            out[key] = pool[key][source, rows % h, cols % w]
        quadrant = np.array([[0, 0], [w, 0], [0, h], [w, h]], np.float32)  # (x, y) of each tile in the canvas.
        shift = quadrant[None] - np.stack([left, top], axis=1)[:, None, :].astype(np.float32)  # [n, 4, 2]
        for key in self.keys(batch, BOXES):
            out.update(self._gather_boxes(pool, key, tiles, shift, (h, w), on))
        return out

    def _gather_boxes(self, batch: dict, key: str, tiles: np.ndarray, shift: np.ndarray, hw, on: np.ndarray) -> dict:
        n, g = len(tiles), batch[key].shape[1]
        boxes = batch[key][tiles] + np.tile(shift, 2)[:, :, None, :]  # [n, 4, g, 4]
        clipped = np.clip(boxes, 0, np.array([hw[1], hw[0]] * 2, np.float32))
        size, kept = boxes[..., 2:] - boxes[..., :2], clipped[..., 2:] - clipped[..., :2]
        valid = np.ones((n, 4, g), bool)
        for valid_key in self.keys(batch, BOX_VALID):
            valid &= batch[valid_key][tiles] != 0
        candidate = np.all(kept >= self.min_side, axis=-1)
        candidate &= kept.prod(-1) >= self.min_area_fraction * np.maximum(size.prod(-1), 1e-12)
        valid &= candidate | ~on[:, None, None]  # An example left as it was keeps its boxes as they were...
        valid[~on, 1:] = False  # ...and takes none from the copies of itself standing in for partners.
        valid = valid.reshape(n, 4 * g)
        order = np.argsort(~valid, axis=1, kind="stable")[:, :g]
        keep = np.take_along_axis(valid, order, axis=1)
        out = {key: np.where(keep[..., None], np.take_along_axis(clipped.reshape(n, 4 * g, 4), order[..., None], 1), 0)}
        out[key] = out[key].astype(np.float32)
        for valid_key in self.keys(batch, BOX_VALID):
            out[valid_key] = keep.astype(batch[valid_key].dtype)
        for value_key in self.keys(batch, BOX_CLASSES) + self.keys(batch, BOX_AREA):
            values = batch[value_key][tiles].reshape(n, 4 * g)
            out[value_key] = np.where(keep, np.take_along_axis(values, order, axis=1), 0).astype(values.dtype)
        return out


def _check_image_label(op: Keyed, name: str) -> None:
    """Raises ValueError when the batch carries masks or boxes, which `name` does not move."""
    moving = sorted(key for key, kind in op.kinds.items() if kind in (MASK, BOXES))
    if moving:
        raise ValueError(f"{name} is for image-label data; it does not move '{moving[0]}' with the image")


def _as_uint8_images(images, name: str) -> np.ndarray:
    """[B, H, W, C] uint8 images on the 0..255 scale: uint8 as is, float (a resizing crop's output) rounded."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    if len(images) and (images.min() < 0 or images.max() <= 1):
        raise ValueError(f"{name} works on 0..255 images; put it before rescale/normalize")
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


# RandAugment's ops (Cubuk et al. 2020, Sec. 3: identity, autoContrast, equalize,
# rotate, solarize, color, posterize, contrast, brightness, sharpness, shear-x/y,
# translate-x/y), each made stronger by a larger magnitude.
RAND_AUGMENT_OPS = (
    "identity",
    "autocontrast",
    "equalize",
    "rotate",
    "solarize",
    "color",
    "posterize",
    "contrast",
    "brightness",
    "sharpness",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)


def rand_augment_op(image: np.ndarray, op: str, level: float, sign: float = 1.0, fill=128) -> np.ndarray:
    """One RandAugment op on an [H, W, C] uint8 image at `level` = M / 10 (M = 10: timm's full range).

    Ranges at level 1 (timm's `rand_augment_ops` with increasing magnitudes,
    which the DeiT and ConvNeXt recipes use): rotate 30 degrees, shear 0.3,
    translate 45% of the side, colour/contrast/brightness/sharpness factor
    1 +- 0.9, solarize threshold 256 - 256 level, posterize 4 - int(4 level)
    bits. `sign` (+-1) picks the direction of the signed ops; areas moved in
    from outside the image hold `fill` (an int, or one per channel).
    Geometric ops resample bilinearly about the top-left corner (rotations
    about the centre), as PIL's affine does and torchvision's RandAugment calls it.
    """
    squeeze = image.ndim == 3 and image.shape[-1] == 1
    pil = Image.fromarray(image[..., 0] if squeeze else image)
    channels = len(pil.getbands())
    fills = tuple(int(f) for f in np.broadcast_to(np.asarray(fill), (channels,)))
    fills = fills[0] if pil.mode == "L" else fills
    clipped = min(max(level, 0.0), 1.0)  # Thresholds and bit counts have a natural end.
    if op == "identity":
        out = pil
    elif op == "autocontrast":
        out = ImageOps.autocontrast(pil)
    elif op == "equalize":
        out = ImageOps.equalize(pil)
    elif op == "rotate":
        out = pil.rotate(sign * 30.0 * level, resample=Image.BILINEAR, fillcolor=fills)
    elif op == "solarize":
        out = ImageOps.solarize(pil, 256 - int(256 * clipped))
    elif op == "posterize":
        bits = 4 - int(4 * clipped)
        out = ImageOps.posterize(pil, bits) if bits > 0 else Image.new(pil.mode, pil.size)
    elif op in ("color", "contrast", "brightness", "sharpness"):
        enhancer = {
            "color": ImageEnhance.Color,
            "contrast": ImageEnhance.Contrast,
            "brightness": ImageEnhance.Brightness,
            "sharpness": ImageEnhance.Sharpness,
        }[op]
        out = enhancer(pil).enhance(1.0 + sign * 0.9 * level)
    elif op in ("shear_x", "shear_y", "translate_x", "translate_y"):
        # PIL's affine maps each output pixel (x, y) to the input (a x + b y + c, d x + e y + f).
        shear = sign * 0.3 * level
        dx, dy = (-sign * 0.45 * level * pil.size[0], 0.0) if op == "translate_x" else (0.0, 0.0)
        if op == "translate_y":
            dy = -sign * 0.45 * level * pil.size[1]
        b, d = (shear, 0.0) if op == "shear_x" else (0.0, shear) if op == "shear_y" else (0.0, 0.0)
        out = pil.transform(pil.size, Image.AFFINE, (1, b, dx, d, 1, dy), resample=Image.BILINEAR, fillcolor=fills)
    else:
        raise ValueError(f"unknown rand_augment op '{op}'; choose one of: {', '.join(RAND_AUGMENT_OPS)}")
    out = np.asarray(out, np.uint8)
    return out[..., None] if squeeze else out


class RandAugment(Keyed, RandomTransform):
    """RandAugment(N, M) (Cubuk et al. 2020): `n` ops drawn uniformly (with replacement) per image, at magnitude `m`.

    `m` is on the paper's 0..30 scale, where 10 is the full range of each op
    (timm's and the TF reference's `_MAX_LEVEL`; see `rand_augment_op`); with
    `mstd` > 0 each op's magnitude is drawn from N(m, mstd) and clipped to
    [0, 30] (timm's `mstd`). Each drawn op runs with probability `p` (the
    paper: 1; timm's rand-m9-mstd0.5, which DeiT and ConvNeXt train with: 0.5).
    Works on the 0..255 scale, so it goes before rescale/normalize: uint8
    images, or the float32 of a resizing crop (rounded to uint8, as timm's PIL
    pipeline holds them); the output is uint8. `fill` (an int or one per
    channel; timm: the ImageNet mean) fills what geometric ops move in from
    outside the image. Images and labels only: a
    dataset with masks or boxes is an error (the ops would not move them).
    """

    max_magnitude = 30.0

    def __init__(self, n: int = 2, m: float = 9, mstd: float = 0.0, p: float = 1.0, fill=128):
        if not isinstance(n, int) or n < 0 or not 0 <= m <= self.max_magnitude or mstd < 0 or not 0 <= p <= 1:
            raise ValueError(f"rand_augment: bad n={n} (int >= 0), m={m} (0..30), mstd={mstd} (>= 0) or p={p}")
        if not np.all((np.asarray(fill) >= 0) & (np.asarray(fill) <= 255)) or np.ndim(fill) > 1:
            raise ValueError(f"rand_augment: fill={fill} must be in 0..255 (an int, or one per channel)")
        self.n, self.m, self.mstd, self.p, self.fill = n, float(m), float(mstd), float(p), fill

    def draw(self, rng, size):
        # Per op slot: (op uniform, magnitude normal, sign uniform, run uniform).
        return np.stack(
            [rng.random((size, self.n)), rng.standard_normal((size, self.n))]
            + [rng.random((size, self.n)) for _ in range(2)],
            axis=-1,
        )

    def ops(self, params: np.ndarray) -> list[tuple[str, float, float]]:
        """One image's (op, level, sign) list from its parameters [n, 4]; ops skipped by `p` are left out."""
        chosen = []
        for u_op, z, u_sign, u_run in params:
            if u_run >= self.p:
                continue
            op = RAND_AUGMENT_OPS[min(int(u_op * len(RAND_AUGMENT_OPS)), len(RAND_AUGMENT_OPS) - 1)]
            magnitude = float(np.clip(self.m + self.mstd * z, 0.0, self.max_magnitude))
            chosen.append((op, magnitude / 10.0, 1.0 if u_sign < 0.5 else -1.0))
        return chosen

    def apply(self, batch, params):
        _check_image_label(self, "rand_augment")
        out = dict(batch)
        for key in self.keys(batch, IMAGE):
            images = _as_uint8_images(batch[key], "rand_augment").copy()
            for b, image_params in enumerate(params):
                for op, level, sign in self.ops(image_params):
                    images[b] = rand_augment_op(images[b], op, level, sign, self.fill)
            out[key] = images
        return out


class RandomErasing(Keyed, RandomTransform):
    """Random erasing (Zhong et al. 2020) as timm's RandomErasing: one box per image with probability `p`.

    Up to 10 tries of area ~ U(scale) x image area and log aspect ~
    U(log ratio); the first box that fits strictly inside the image is filled
    with per-pixel N(0, 1) noise (timm's mode 'pixel'). It runs on normalised
    float images, after normalize (as timm), where N(0, 1) is the data's own
    scale; uint8 images are an error. Images and labels only.
    """

    tries = 10

    def __init__(self, p: float = 0.5, scale: tuple = (0.02, 1 / 3), ratio: tuple = (0.3, 3.3)):
        if not 0 <= p <= 1 or not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"random_erasing: bad p={p}, scale={scale} or ratio={ratio}")
        self.p, self.scale, self.ratio = float(p), tuple(scale), tuple(ratio)

    def draw(self, rng, size):
        # Apply uniform, per try (area, log aspect, top, left) uniforms, and a seed for the noise.
        seeds = rng.integers(0, 2**52, size=(size, 1)).astype(np.float64)  # Exact in float64.
        return np.concatenate([rng.random((size, 1 + 4 * self.tries)), seeds], axis=1)

    def box(self, height: int, width: int, u: np.ndarray) -> tuple[int, int, int, int] | None:
        """(top, left, h, w) of one image's box from its uniforms [tries, 4]; None when no try fits."""
        log_lo, log_hi = np.log(self.ratio[0]), np.log(self.ratio[1])
        for u_area, u_ratio, u_top, u_left in u:
            target = height * width * (self.scale[0] + u_area * (self.scale[1] - self.scale[0]))
            aspect = np.exp(log_lo + u_ratio * (log_hi - log_lo))
            h, w = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
            if 0 < h < height and 0 < w < width:
                return int(u_top * (height - h + 1)), int(u_left * (width - w + 1)), h, w
        return None

    def apply(self, batch, params):
        _check_image_label(self, "random_erasing")
        out = dict(batch)
        for key in self.keys(batch, IMAGE):
            images = batch[key]
            if not isinstance(images, np.ndarray) or not np.issubdtype(images.dtype, np.floating):
                raise ValueError("random_erasing works on normalised float images; put it after normalize(...)")
            images = images.copy()
            height, width = images.shape[1:3]
            for b, row in enumerate(params):
                if row[0] >= self.p:
                    continue
                box = self.box(height, width, row[1:-1].reshape(self.tries, 4))
                if box is not None:
                    top, left, h, w = box
                    noise = np.random.default_rng(int(row[-1])).standard_normal((h, w, *images.shape[3:]))
                    images[b, top : top + h, left : left + w] = noise.astype(images.dtype)
            out[key] = images
        return out


# name -> constructor; `standardize` also receives the training statistics.
REGISTRY = {
    "rescale": Rescale,
    "normalize": Normalize,
    "standardize": Standardize,
    "random_crop": RandomCrop,
    "random_flip": RandomFlip,
    "random_resized_crop": RandomResizedCrop,
    "center_crop": CenterCrop,
    "resize": Resize,
    "letterbox": Letterbox,
    "map_mask": MapMask,
    "mosaic": Mosaic,
    "rand_augment": RandAugment,
    "random_erasing": RandomErasing,
}

# Transforms that accept a list of images of different sizes and return one array.
RESIZING = ("random_resized_crop", "center_crop", "resize", "letterbox")


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


def output_size(specs: list[Spec]) -> tuple[int, int] | None:
    """The (height, width) every image has after `specs`, set by their last resizing transform; None: the records'.

    Every other transform keeps an image's size (random_crop pads and crops
    back, mosaic cuts one image's size out of four), so a model's input size is
    known here, before any record is read.
    """
    size = None
    for spec in specs:
        if spec.name in RESIZING:
            size = _as_hw(REGISTRY[spec.name](**spec.kwargs).size)
    return size


def build(
    specs: list[Spec],
    statistics: Mapping[str, np.ndarray] | None = None,
    *,
    global_batch: int | None = None,
    offset: int = 0,
    kinds: Mapping[str, str] | None = None,
    ignore_index: int = 255,
) -> list:
    """Instantiates the grain ops of `specs`; bad arguments raise ValueError.

    Args:
      specs: parsed transforms.
      statistics: training mean and std, for `standardize`.
      global_batch: size of the global batch that random transforms draw for.
      offset: this process's first example within the global batch.
      kinds: the kind of each batch key the ops move (see the module docstring);
        default `{"input": "image"}`.
      ignore_index: the mask id of "no label", written where crops and letterbox pad.
    """
    kinds = dict(DEFAULT_KINDS if kinds is None else kinds)
    unknown = sorted(k for k in kinds.values() if k not in KINDS)
    if unknown:
        raise ValueError(f"unknown kind '{unknown[0]}'; choose one of: {', '.join(KINDS)}")
    if (BOXES in kinds.values()) != (BOX_VALID in kinds.values()):
        raise ValueError("boxes need a box_valid key beside them (and box_valid needs boxes)")
    ops = []
    for spec in specs:
        try:
            op = Standardize(statistics) if spec.name == "standardize" else REGISTRY[spec.name](**spec.kwargs)
        except TypeError as error:
            raise ValueError(f"transform '{spec.name}': {error}") from None
        if isinstance(op, RandomTransform):
            op.global_batch, op.offset = global_batch, offset
        if isinstance(op, Keyed):
            op.kinds, op.ignore_index = kinds, int(ignore_index)
        if isinstance(op, RandAugment | RandomErasing):
            _check_image_label(op, spec.name)  # Here, so a config with masks or boxes fails before any compute.
        if isinstance(op, Mosaic):
            # Partners are read through the ops before the mosaic; a random one would need draws for them too.
            random = [s.name for s, o in zip(specs, ops, strict=False) if isinstance(o, RandomTransform)]
            if random:
                raise ValueError(f"mosaic must come before the random transforms ({', '.join(random)}); move it up")
        ops.append(op)
    return ops
