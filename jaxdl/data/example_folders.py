"""jaxdl's own datasets written to disk in the folder layouts a user brings, to try the whole path offline.

  python experiments/export_example_folders.py --out=example_data --size=small

Each writer puts one dataset in one layout under `out/<name>` (see LAYOUTS) and
returns that folder. Pixels are stored losslessly (PNG), so a folder read back
through jaxdl.data.disk holds the same arrays as jaxdl's in-code builder:

- `digits` -> `image_folder`: scikit-learn's 8x8 digits, split exactly as the
  `digits` builder splits them (`datasets.split_rows`), in `train/`, `val/` and
  `test/`, class folders `0` .. `9`. A file is `<split>/<digit>/<i>.png` with
  i the builder's example key within its split: row `split_rows(1797)[split][i]`
  of `load_digits()`. Smaller sizes keep the first records of each class (by
  key), so train holds all ten classes. The PNGs keep the stored values 0..16 (8-bit grayscale),
  not stretched to 0..255, so `configs/digits_cnn.py`'s `rescale(scale=0.0625)`
  applies unchanged (they look nearly black in a viewer).
- `shapes` -> `image_folder`: the scene labelled with the class covering the
  most pixels of its mask (ties to the lower class id), folders `circle`,
  `square`, `triangle`. Not "the largest object": objects of one class are not
  told apart in the mask, and what a viewer (and a model) sees of an occluded
  object is its visible part. A scene of several objects still shows the others,
  so this is a harder, noisier task than the builder's; it exists to exercise
  classification of RGB pictures of one size.
- `shapes` -> `yolo`: `data.yaml` (`path: .`, names 0 circle, 1 square,
  2 triangle: the builder's ids minus one, YOLO has no background class),
  `images/<split>/<i>.png` and `labels/<split>/<i>.txt` with one normalised
  `class cx cy w h` line per visible object.
- `shapes` -> `mask_folder`: `<split>/images/<i>.png` and `<split>/masks/<i>.png`,
  masks holding the builder's class ids (0 background, 1 circle, 2 square,
  3 triangle).

`shapes` split i of `sizes` is record i of the builder of the same split sizes
(`dataset.split_sizes`): the generator draws from the split's seed and size.
A folder is written beside its destination and renamed into place, so an
interrupted export leaves no half-written dataset; an existing one is kept
unless `overwrite`.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxdl.data import shapes
from jaxdl.errors import UserError

# Split sizes (train, validation, test) of each export size; digits takes at most as many of each split.
SIZES = {"tiny": (12, 6, 6), "small": (300, 60, 60), "full": (2000, 200, 200)}
# jaxdl split -> folder name, as torchvision and Ultralytics name them.
FOLDER = {"train": "train", "validation": "val", "test": "test"}
SHAPE_CLASSES = shapes.CLASSES[1:]  # circle, square, triangle: ids 1..3 in the builder.


def _digits_splits(sizes: tuple[int, int, int] | None) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{split: (builder keys, images uint8 [n, 8, 8], labels)} as the digits builder splits them.

    With `sizes`, at most that many of each split: the first of each class in
    key order, then the second of each, ..., so that a small train split still
    holds every class (an image_folder's classes are train's class folders).
    """
    from sklearn.datasets import load_digits

    from jaxdl.data.datasets import split_rows

    data = load_digits()
    x, y = data.images.astype(np.uint8), data.target.astype(np.int64)
    out = {}
    for i, (split, rows) in enumerate(split_rows(len(x)).items()):
        keys = np.arange(len(rows))
        if sizes is not None:
            labels = y[rows]
            rank = np.zeros(len(rows), np.int64)  # How many earlier keys share the label.
            for label in np.unique(labels):
                rank[labels == label] = np.arange((labels == label).sum())
            keys = np.sort(np.lexsort((keys, rank))[: sizes[i]])
        out[split] = (keys, x[rows[keys]], y[rows[keys]])
    return out


def _shapes_splits(sizes: tuple[int, int, int]) -> dict[str, dict[str, np.ndarray]]:
    """{split: records} of the shapes builder with these split sizes (same seeds, same records)."""
    return {
        split: shapes.generate(num, seed) for seed, (split, num) in enumerate(zip(shapes.SPLITS, sizes, strict=True))
    }


def _save_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, optimize=False, compress_level=1)


def _name(i: int) -> str:
    return f"{i:05d}.png"


class _Destination:
    """Writes into a hidden folder beside `final` and renames it into place on success."""

    def __init__(self, final: Path, overwrite: bool):
        self.final = final
        if final.exists() and not overwrite:
            raise UserError(f"{final}: already exists; remove it or pass overwrite (--overwrite)")
        final.parent.mkdir(parents=True, exist_ok=True)
        self.partial = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> Path:
        self.partial.mkdir()
        return self.partial

    def __exit__(self, kind, error, trace) -> None:
        if kind is not None:
            shutil.rmtree(self.partial, ignore_errors=True)
            return
        if self.final.exists():
            shutil.rmtree(self.final)
        self.partial.rename(self.final)


def write_digits_image_folder(out: str | Path, sizes=None, *, overwrite: bool = False) -> Path:
    """`out/digits`: scikit-learn's digits as train/val/test/<digit>/<key>.png (all of them when `sizes` is None)."""
    final = Path(out) / "digits"
    with _Destination(final, overwrite) as root:
        for split, (keys, images, labels) in _digits_splits(sizes).items():
            for key, image, label in zip(keys, images, labels, strict=True):
                _save_png(root / FOLDER[split] / str(label) / _name(key), image)
    return final


def shapes_label(mask: np.ndarray) -> np.ndarray:
    """The class (0 circle, 1 square, 2 triangle) covering the most pixels of each mask [n, H, W]."""
    counts = np.stack([(mask == c).sum(axis=(1, 2)) for c in range(1, len(shapes.CLASSES))], axis=1)
    return counts.argmax(axis=1)


def write_shapes_image_folder(out: str | Path, sizes=SIZES["small"], *, overwrite: bool = False) -> Path:
    """`out/shapes_classes`: each scene in the folder of the class covering most of its pixels."""
    final = Path(out) / "shapes_classes"
    with _Destination(final, overwrite) as root:
        for split, records in _shapes_splits(sizes).items():
            for i, (image, label) in enumerate(
                zip(records["image"], shapes_label(records["segmentation_mask"]), strict=True)
            ):
                _save_png(root / FOLDER[split] / SHAPE_CLASSES[label] / _name(i), image)
    return final


def yolo_lines(boxes: np.ndarray, classes: np.ndarray, valid: np.ndarray, size: int = shapes.SIZE) -> str:
    """A shapes record's label file: `class cx cy w h` per valid box, normalised, YOLO ids (builder id - 1)."""
    lines = []
    for (x0, y0, x1, y1), cls in zip(boxes[valid > 0], classes[valid > 0], strict=True):
        cx, cy, w, h = (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size
        lines.append(f"{int(cls) - 1} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
    return "".join(lines)


def write_shapes_yolo(out: str | Path, sizes=SIZES["small"], *, overwrite: bool = False) -> Path:
    """`out/shapes_yolo`: data.yaml, images/<split>/<i>.png and labels/<split>/<i>.txt."""
    final = Path(out) / "shapes_yolo"
    with _Destination(final, overwrite) as root:
        for split, records in _shapes_splits(sizes).items():
            folder = FOLDER[split]
            (root / "labels" / folder).mkdir(parents=True)
            for i, image in enumerate(records["image"]):
                _save_png(root / "images" / folder / _name(i), image)
                text = yolo_lines(records["boxes"][i], records["box_classes"][i], records["box_valid"][i])
                (root / "labels" / folder / f"{i:05d}.txt").write_text(text)
        names = "".join(f"  {i}: {name}\n" for i, name in enumerate(SHAPE_CLASSES))
        (root / "data.yaml").write_text(
            "# jaxdl's shapes (jaxdl.data.example_folders); ids are the builder's minus one.\n"
            f"path: .\ntrain: images/train\nval: images/val\ntest: images/test\nnames:\n{names}"
        )
    return final


def write_shapes_mask_folder(out: str | Path, sizes=SIZES["small"], *, overwrite: bool = False) -> Path:
    """`out/shapes_masks`: <split>/images/<i>.png and <split>/masks/<i>.png (0 background, 1..3 the shapes)."""
    final = Path(out) / "shapes_masks"
    with _Destination(final, overwrite) as root:
        for split, records in _shapes_splits(sizes).items():
            for i, (image, mask) in enumerate(zip(records["image"], records["segmentation_mask"], strict=True)):
                _save_png(root / FOLDER[split] / "images" / _name(i), image)
                _save_png(root / FOLDER[split] / "masks" / _name(i), mask)
    return final


# name -> (format, writer); the folder each writes is out/<name>.
LAYOUTS: dict[str, tuple[str, Callable[..., Path]]] = {
    "digits": ("image_folder", write_digits_image_folder),
    "shapes_classes": ("image_folder", write_shapes_image_folder),
    "shapes_yolo": ("yolo", write_shapes_yolo),
    "shapes_masks": ("mask_folder", write_shapes_mask_folder),
}


def write_all(
    out: str | Path,
    size: str = "small",
    *,
    only=None,
    overwrite: bool = False,
    report: Callable[[str, str, Path, float], None] | None = None,
) -> dict[str, Path]:
    """Writes every layout of LAYOUTS (or those in `only`) at `size` (a key of SIZES; digits whole at "full").

    `report(name, format, folder, seconds)` is called after each.
    """
    if size not in SIZES:
        raise UserError(f"unknown size '{size}'; choose one of: {', '.join(SIZES)}")
    unknown = sorted(set(only or ()) - set(LAYOUTS))
    if unknown:
        raise UserError(f"unknown layout(s) {', '.join(unknown)}; choose from: {', '.join(LAYOUTS)}")
    written = {}
    for name, (format, writer) in LAYOUTS.items():
        if only and name not in only:
            continue
        start = time.perf_counter()
        sizes = None if (name == "digits" and size == "full") else SIZES[size]
        written[name] = writer(out, sizes, overwrite=overwrite)
        if report is not None:
            report(name, format, written[name], time.perf_counter() - start)
    return written
