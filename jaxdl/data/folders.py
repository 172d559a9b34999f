"""The three image layouts a user brings on disk, scanned into one `Layout`: which files, which labels, what is wrong.

Pure Python, numpy, Pillow and yaml: no JAX, so `jaxdl-data check` starts at once
and the training pipeline (jaxdl.data.disk) and the checker read a folder the
same way. Each format's rule:

- `image_folder`: `PATH/<split>/<class>/.../<image>` with split folders `train`,
  `val` or `validation`, and `test`. The classes are the train split's class
  folders sorted by plain `sorted()` of their names, which is how torchvision's
  `ImageFolder.find_classes` sorts them (upper case before lower case), so class
  index i means the same in both. Images are found recursively under each class
  folder and ordered as `ImageFolder` orders its samples (class index, then
  folder, then file name). Hidden entries (a name starting with '.', such as
  `.ipynb_checkpoints` or macOS `._x.jpg`) are skipped: torchvision would make
  the first a class. A class folder without images is an error problem, as
  torchvision refuses it too; a class folder in val/test that train lacks is one.
- `yolo`: an Ultralytics `data.yaml` (or a folder holding one). `path` is the
  dataset root (relative to the yaml's folder; the yaml's folder when absent);
  `train`, `val` and optional `test` are each a folder (all images below it,
  recursively), a list file (one image path a line; `./x` relative to the list
  file's folder as in Ultralytics, other relative lines to `path`), or a list of
  these. `names` is a list or an `{id: name}` dict with ids 0..n-1. The label file
  of an image is Ultralytics' rule: the last `/images/` of its path becomes
  `/labels/` and the suffix becomes `.txt`. A label line is `class cx cy w h`,
  normalised to [0, 1] (a polygon line `class x1 y1 x2 y2 ...` gives its box).
  A missing label file and an empty one both mean a background image; scanning
  does not read them, so `Entry.labels` may not exist and the checker can tell
  the two apart.
- `mask_folder`: `PATH/<split>/images/*` and `PATH/<split>/masks/*` (the same
  split folders as image_folder), matched by relative path without suffix, as
  segmentation_models_pytorch's examples pair them. A mask holds one class id
  per pixel; `read_mask` maps stored values (`mask_values`, e.g. `{255: 1}` for
  0/255 masks) or RGB colours (`palette`) to classes. JPEG masks are refused:
  lossy compression invents values between the class ids at every edge.

`scan` raises `LayoutError` (one line naming the path) when nothing can be read;
everything else it finds is a `Problem` ("error" or "warning") in
`Layout.problems`, which the checker prints and the pipeline refuses on errors.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jaxdl.data import images
from jaxdl.data.images import IMAGE_SUFFIXES, ImageDecodeError, is_image_file
from jaxdl.errors import ConfigError

FORMATS = ("image_folder", "yolo", "mask_folder")
SPLITS = ("train", "validation", "test")
# The folder names each jaxdl split is read from (image_folder and mask_folder), first match wins.
SPLIT_FOLDERS = {"train": ("train",), "validation": ("val", "validation"), "test": ("test",)}
# data.yaml's split keys.
YOLO_SPLIT_KEYS = {"train": "train", "validation": "val", "test": "test"}
JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
_JPEG_MASK_WHY = (
    "JPEG's lossy compression changes class ids at every edge (a 0/1 mask comes back with 2s, 3s ...); "
    "save the masks as PNG"
)


class LayoutError(ConfigError):
    """A dataset folder that cannot be read as its format; one line naming the path and what to change."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One image of a split and its label, as its format stores it."""

    image: Path  # Absolute path of the image file.
    label: int | None = None  # image_folder: class index.
    mask: Path | None = None  # mask_folder: the mask file matched by stem.
    labels: Path | None = None  # yolo: the label .txt by Ultralytics' rule (may not exist: a background image).


@dataclasses.dataclass(frozen=True)
class Problem:
    """Something scanning or checking found; `severity` is "error" or "warning"."""

    severity: str
    split: str  # jaxdl split name, or "" for the whole dataset.
    path: str  # The file or folder concerned.
    message: str  # One line.


@dataclasses.dataclass(frozen=True)
class Layout:
    """What `scan` found: the splits' entries, the class names and the problems."""

    format: str
    root: Path
    class_names: tuple[str, ...]
    splits: dict[str, tuple[Entry, ...]]  # Only the splits present on disk, entries in a deterministic order.
    problems: tuple[Problem, ...]
    hidden: tuple[Path, ...] = ()  # Hidden files and folders skipped (not problems; the checker lists them).
    ignored: tuple[Path, ...] = ()  # Visible files that are not images (or are not where images go), skipped.
    yaml_file: Path | None = None  # yolo: the data.yaml read.

    @property
    def errors(self) -> tuple[Problem, ...]:
        """The problems of severity "error"."""
        return tuple(p for p in self.problems if p.severity == "error")


def scan(format: str, path: str | Path) -> Layout:
    """Reads the layout of dataset `path` in `format` (one of FORMATS); see the module docstring for each rule.

    Raises:
      LayoutError: the format is unknown, the path does not exist, has no split
        folders or no images, a data.yaml lacks `names` or a split it names.
    """
    if format not in FORMATS:
        raise LayoutError(f"unknown dataset format '{format}'; choose one of: {', '.join(FORMATS)}")
    path = Path(path).expanduser()
    if not path.exists():
        raise LayoutError(f"{path}: no such file or folder (the {format} dataset's path)")
    reader = {"image_folder": _scan_image_folder, "yolo": _scan_yolo, "mask_folder": _scan_mask_folder}[format]
    layout = reader(path.resolve())
    if not any(layout.splits.values()):
        raise LayoutError(f"{path}: no images found in any split ({_expected(format)})")
    return layout


def _expected(format: str) -> str:
    return {
        "image_folder": "expected PATH/train/<class>/<image>, PATH/val/<class>/<image>, PATH/test/<class>/<image>",
        "yolo": "expected a data.yaml naming train/val image folders, with labels/ beside images/",
        "mask_folder": "expected PATH/train/images/<image> and PATH/train/masks/<mask>.png, the same for val and test",
    }[format]


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is hidden (starts with '.'); hidden entries are never data."""
    return name.startswith(".")


def _split_folders(root: Path, format: str) -> dict[str, Path]:
    """{jaxdl split: folder} of the split folders present under `root`; both `val` and `validation` is an error."""
    found = {}
    for split, names in SPLIT_FOLDERS.items():
        present = [root / name for name in names if (root / name).is_dir()]
        if len(present) > 1:
            raise LayoutError(f"{root}: has both {' and '.join(p.name + '/' for p in present)}; keep one")
        if present:
            found[split] = present[0]
    if not found:
        if not root.is_dir():
            raise LayoutError(f"{root}: is a file; give the dataset's folder ({_expected(format)})")
        children = sorted(p.name + "/" for p in root.iterdir() if p.is_dir() and not is_hidden(p.name))
        seen = f"; it holds {', '.join(children[:5])}{' ...' if len(children) > 5 else ''}" if children else ""
        raise LayoutError(f"{root}: has no train/, val/ or test/ folder ({_expected(format)}){seen}")
    return found


def _walk(folder: Path, hidden: list[Path], ignored: list[Path]) -> list[Path]:
    """The image files below `folder` in ImageFolder's order (folder, then name); hidden ones skipped and noted."""
    found, walked = [], []
    for current, dirs, files in os.walk(folder, followlinks=True):
        hidden += [Path(current) / d for d in sorted(dirs) if is_hidden(d)]
        dirs[:] = [d for d in dirs if not is_hidden(d)]  # os.walk descends only into what stays.
        walked.append((current, files))
    for current, files in sorted(walked):
        current = Path(current)
        for name in sorted(files):
            if is_hidden(name):
                hidden.append(current / name)
            elif Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(current / name)
            else:
                ignored.append(current / name)
    return found


def _scan_image_folder(root: Path) -> Layout:
    folders = _split_folders(root, "image_folder")
    if "train" not in folders:
        raise LayoutError(f"{root}: has no train/ folder; the classes are train's class folders")
    hidden, ignored, problems = [], [], []

    def class_folders(split_folder: Path) -> list[Path]:
        children = sorted(split_folder.iterdir(), key=lambda p: p.name)
        for child in children:
            if is_hidden(child.name):
                hidden.append(child)
            elif not child.is_dir():
                ignored.append(child)
        return [c for c in children if not is_hidden(c.name) and c.is_dir()]

    classes = tuple(c.name for c in class_folders(folders["train"]))
    if not classes:
        raise LayoutError(f"{folders['train']}: has no class folders ({_expected('image_folder')})")
    index = {name: i for i, name in enumerate(classes)}
    splits = {}
    for split, folder in folders.items():
        entries = []
        subfolders = class_folders(folder) if split != "train" else [folder / name for name in classes]
        loose = [p for p in ignored if p.parent == folder and p.suffix.lower() in IMAGE_SUFFIXES]
        if loose:
            problems.append(
                Problem(
                    "warning",
                    split,
                    str(folder),
                    f"{len(loose)} image(s) directly in the split folder, not in a "
                    f"class folder, are ignored (e.g. {loose[0].name})",
                )
            )
        for class_folder in subfolders:
            if class_folder.name not in index:
                problems.append(
                    Problem(
                        "error",
                        split,
                        str(class_folder),
                        f"class folder '{class_folder.name}' is not one of train's classes ({', '.join(classes)})",
                    )
                )
                continue
            images = _walk(class_folder, hidden, ignored)
            if not images:
                problems.append(
                    Problem(
                        "error",
                        split,
                        str(class_folder),
                        f"class folder '{class_folder.name}' has no images "
                        f"(hidden files do not count); remove it or add images",
                    )
                )
            entries += [Entry(image=p, label=index[class_folder.name]) for p in images]
        if not subfolders:
            problems.append(Problem("error", split, str(folder), "split folder has no class folders"))
        splits[split] = tuple(entries)
    return Layout("image_folder", root, classes, splits, tuple(problems), tuple(hidden), tuple(ignored))


def _scan_mask_folder(root: Path) -> Layout:
    folders = _split_folders(root, "mask_folder")
    hidden, ignored, problems, splits = [], [], [], {}
    for split, folder in folders.items():
        missing = [name for name in ("images", "masks") if not (folder / name).is_dir()]
        if missing:
            raise LayoutError(
                f"{folder}: has no {' or '.join(m + '/' for m in missing)} folder ({_expected('mask_folder')})"
            )
        images = _by_stem(folder / "images", _walk(folder / "images", hidden, ignored), split, problems)
        masks = _by_stem(folder / "masks", _walk(folder / "masks", hidden, ignored), split, problems)
        entries = []
        for key, image in sorted(images.items()):
            mask = masks.get(key)
            if mask is None:
                problems.append(Problem("error", split, str(image), f"no mask '{key}.png' in {folder / 'masks'}"))
                continue
            if mask.suffix.lower() in JPEG_SUFFIXES:
                problems.append(Problem("error", split, str(mask), f"JPEG mask refused: {_JPEG_MASK_WHY}"))
            entries.append(Entry(image=image, mask=mask))
        for key in sorted(set(masks) - set(images)):
            problems.append(Problem("warning", split, str(masks[key]), "mask without an image, ignored"))
        splits[split] = tuple(entries)
    return Layout("mask_folder", root, (), splits, tuple(problems), tuple(hidden), tuple(ignored))


def _by_stem(folder: Path, files: list[Path], split: str, problems: list[Problem]) -> dict[str, Path]:
    """{relative path without suffix: file}; two files of one stem are an error problem."""
    found = {}
    for file in files:
        key = file.relative_to(folder).with_suffix("").as_posix()
        if key in found:
            problems.append(
                Problem(
                    "error", split, str(file), f"two files of stem '{key}' ({found[key].name}, {file.name}); keep one"
                )
            )
            continue
        found[key] = file
    return found


def label_path(image: str | Path) -> Path:
    """The YOLO label file of an image: the last `/images/` becomes `/labels/`, the suffix `.txt` (Ultralytics)."""
    text = str(image)
    images, labels = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    head, sep, tail = text.rpartition(images)
    if sep:
        text = head + labels + tail
    return Path(text).with_suffix(".txt")


def _find_yaml(path: Path) -> Path:
    if path.is_file():
        return path
    if (path / "data.yaml").is_file():
        return path / "data.yaml"
    candidates = sorted(p for p in path.glob("*.y*ml") if not is_hidden(p.name))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise LayoutError(f"{path}: has no data.yaml (a yolo dataset is given by its data.yaml)")
    raise LayoutError(f"{path}: has several .yaml files ({', '.join(p.name for p in candidates)}); give the one to use")


def yolo_class_names(names, where: Path) -> tuple[str, ...]:
    """data.yaml's `names` (a list, or an {id: name} dict with ids 0..n-1) as a tuple by id."""
    if isinstance(names, Mapping):
        try:
            by_id = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise LayoutError(f"{where}: `names` keys must be class ids 0..n-1, got {list(names)[:5]}") from None
        if sorted(by_id) != list(range(len(by_id))):
            raise LayoutError(f"{where}: `names` ids must be 0..{len(by_id) - 1} without gaps, got {sorted(by_id)}")
        return tuple(by_id[i] for i in range(len(by_id)))
    if isinstance(names, Sequence) and not isinstance(names, str):
        return tuple(str(n) for n in names)
    raise LayoutError(f"{where}: `names` must be a list or an {{id: name}} dict, got {type(names).__name__}")


def _scan_yolo(path: Path) -> Layout:
    import yaml

    yaml_file = _find_yaml(path)
    try:
        data = yaml.safe_load(yaml_file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LayoutError(f"{yaml_file}: not valid YAML ({detail})") from None
    if not isinstance(data, dict):
        raise LayoutError(f"{yaml_file}: must be a mapping with path, train, val and names")
    if not data.get("names"):
        raise LayoutError(f"{yaml_file}: has no `names` (the class names, a list or an {{id: name}} dict); add them")
    class_names = yolo_class_names(data["names"], yaml_file)
    if "nc" in data and int(data["nc"]) != len(class_names):
        raise LayoutError(f"{yaml_file}: nc={data['nc']} but `names` lists {len(class_names)} classes; make them agree")
    root = Path(str(data.get("path") or "")).expanduser()
    root = (root if root.is_absolute() else yaml_file.parent / root).resolve()
    if "train" not in data:
        raise LayoutError(f"{yaml_file}: has no `train` (a folder or list file of the training images)")
    hidden, ignored, problems, splits = [], [], [], {}
    for split, key in YOLO_SPLIT_KEYS.items():
        value = data.get(key)
        if not value:
            continue
        sources = value if isinstance(value, list) else [value]
        images = []
        for source in sources:
            images += _yolo_images(root, str(source), key, yaml_file, hidden, ignored, problems, split)
        unique = sorted(set(images), key=str)
        splits[split] = tuple(Entry(image=p, labels=label_path(p)) for p in unique)
    return Layout(
        "yolo", root, class_names, splits, tuple(problems), tuple(hidden), tuple(ignored), yaml_file=yaml_file
    )


def _yolo_images(root, source, key, yaml_file, hidden, ignored, problems, split) -> list[Path]:
    target = Path(source).expanduser()
    target = target if target.is_absolute() else root / target
    if target.is_dir():
        return _walk(target, hidden, ignored)
    if target.is_file() and target.suffix.lower() == ".txt":
        images = []
        for number, line in enumerate(target.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line:
                continue
            image = Path(line).expanduser()
            if line.startswith("./"):
                image = target.parent / line[2:]
            elif not image.is_absolute():
                image = root / image
            image = image.resolve()
            if not image.is_file():
                problems.append(Problem("error", split, f"{target}:{number}", f"listed image {line} does not exist"))
            elif is_image_file(image):
                images.append(image)
            else:
                problems.append(Problem("error", split, f"{target}:{number}", f"{line} is not an image file"))
        return images
    raise LayoutError(f"{yaml_file}: {key}: '{source}' is neither a folder nor a .txt list of images ({target})")


def yolo_label_rows(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(class ids int64 [n], boxes float32 [n, 4] normalised cx, cy, w, h) of a label file, ids not range-checked.

    A missing or empty file is a background image: ((0,), (0, 4)). A line of
    `class x1 y1 x2 y2 ...` (a polygon, Ultralytics' segment labels) gives its
    bounding box. Raises LayoutError naming file:line for a malformed line.
    """
    path = Path(path)
    if not path.is_file():
        return np.zeros((0,), np.int64), np.zeros((0, 4), np.float32)
    ids, boxes = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{number}"
        try:
            values = [float(f) for f in fields]
        except ValueError:
            raise LayoutError(f"{where}: not numbers: '{line.strip()[:80]}' (expected `class cx cy w h`)") from None
        if len(values) != 5 and (len(values) < 7 or len(values) % 2 == 0):
            raise LayoutError(
                f"{where}: {len(values)} fields; expected `class cx cy w h` (or a polygon `class x y ...`)"
            )
        if not np.all(np.isfinite(values)) or values[0] != int(values[0]) or values[0] < 0:
            raise LayoutError(f"{where}: class id {fields[0]} is not a class index, or a value is not finite")
        if len(values) == 5:
            boxes.append(values[1:])
        else:
            xs, ys = np.asarray(values[1::2]), np.asarray(values[2::2])
            x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
            boxes.append([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])
        ids.append(int(values[0]))
    return np.asarray(ids, np.int64).reshape(-1), np.asarray(boxes, np.float32).reshape(-1, 4)


def read_yolo_labels(path: str | Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(class ids int32 [n], boxes float32 [n, 4] normalised cx, cy, w, h) of a YOLO label file.

    A missing or empty file gives ((0,), (0, 4)): a background image. Raises
    LayoutError naming file:line for a malformed line or a class id past the
    `num_classes` names.
    """
    ids, boxes = yolo_label_rows(path)
    if len(ids) and ids.max() >= num_classes:
        lines = [n for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1) if line.split()]
        row = int(np.argmax(ids >= num_classes))
        raise LayoutError(
            f"{path}:{lines[row]}: class id {ids[row]} is past the {num_classes} names of the data.yaml "
            f"(ids 0..{num_classes - 1}); fix the label or add the name"
        )
    return ids.astype(np.int32), boxes


def _mask_lookup(mask_values: Mapping[int, int], top: int) -> np.ndarray:
    table = np.arange(max(top, max((int(k) for k in mask_values), default=0)) + 1, dtype=np.int64)
    for stored, cls in mask_values.items():
        table[int(stored)] = int(cls)
    return table


def read_mask(
    path: str | Path,
    mask_values: Mapping[int, int] | None = None,
    palette: Mapping[tuple[int, int, int], int] | None = None,
) -> np.ndarray:
    """uint8 [H, W] class ids of a mask file, upright (its EXIF orientation applied, as to its image).

    Stored values are the class ids, remapped by `mask_values` (stored value ->
    class; values not listed stay), or RGB colours mapped by `palette` ((r, g, b)
    -> class; a colour not listed is an error naming it). A palette-mode PNG (as
    Pascal VOC's) stores class ids as its palette indices. Raises LayoutError
    for a JPEG mask, an RGB mask without a palette, or a value past 255;
    ImageDecodeError for a file that does not decode.
    """
    from PIL import ImageOps

    path = Path(path)
    if mask_values and palette:
        raise LayoutError(f"{path}: set one of dataset.mask_values and dataset.palette, not both")
    if path.suffix.lower() in JPEG_SUFFIXES:
        raise LayoutError(f"{path}: JPEG mask refused: {_JPEG_MASK_WHY}")
    try:
        with images.open_image(path) as image:
            if image.format == "JPEG":
                raise LayoutError(f"{path}: is a JPEG file (named {path.suffix}); JPEG mask refused: {_JPEG_MASK_WHY}")
            image.load()
            image = ImageOps.exif_transpose(image)
            if palette or image.mode in ("RGB", "RGBA", "CMYK"):
                pixels = np.asarray(image.convert("RGB"))
            elif image.mode == "LA":
                pixels = np.asarray(image.convert("L"))
            else:  # L, P (palette indices), 1 (0/1), I;16 and I: the stored values.
                pixels = np.asarray(image)
    except FileNotFoundError:
        raise ImageDecodeError(f"{path}: no such file") from None
    except LayoutError:  # The JPEG refusal above.
        raise
    except images.DECODE_ERRORS as error:
        raise ImageDecodeError(f"{path}: not a readable mask ({images.failure(error)})") from None
    if palette:
        return _apply_palette(path, pixels, palette)
    if pixels.ndim == 3:
        if not (np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2])):
            raise LayoutError(f"{path}: an RGB mask with colours; give dataset.palette='#rrggbb:class,...'")
        pixels = pixels[..., 0]
    values = pixels.astype(np.int64)
    if mask_values:
        values = _mask_lookup(mask_values, int(values.max(initial=0)))[values]
    if values.size and (values.min() < 0 or values.max() > 255):
        raise LayoutError(f"{path}: mask value {int(values.max())} is past 255; map it with dataset.mask_values")
    return values.astype(np.uint8)


def _apply_palette(path: Path, rgb: np.ndarray, palette: Mapping) -> np.ndarray:
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    keys, classes = [], []
    for colour, cls in palette.items():
        r, g, b = (int(c) for c in colour)
        keys.append((r << 16) | (g << 8) | b)
        classes.append(int(cls))
    keys, classes = np.asarray(keys, np.int64), np.asarray(classes, np.int64)
    order = np.argsort(keys)
    keys, classes = keys[order], classes[order]
    where = np.clip(np.searchsorted(keys, codes), 0, len(keys) - 1)
    known = keys[where] == codes
    if not known.all():
        code = int(codes[~known][0])
        colour = (code >> 16, (code >> 8) & 255, code & 255)
        raise LayoutError(f"{path}: colour {colour} ({int((~known).sum())} pixels) is not in dataset.palette; add it")
    if classes.size and (classes.min() < 0 or classes.max() > 255):
        raise LayoutError(f"{path}: dataset.palette maps to classes outside 0..255")
    return classes[where].astype(np.uint8)
