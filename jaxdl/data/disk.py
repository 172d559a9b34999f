"""Image datasets read from disk (`image_folder`, `yolo`, `mask_folder`), decoded once and cached as ArrayRecord.

`config.dataset.name` names the layout and `config.dataset.path` where it is;
`jaxdl.data.folders.scan` reads the layout (which files, which classes). This
module turns the files into records the pipeline reads like any other dataset:

- `image_folder`: `{"image": uint8 [H, W, C], "label": int64}`, the class index
  of torchvision's `ImageFolder` (the keys of a classification config);
- `mask_folder`: `{"image", "mask": uint8 [H, W]}`, one class id per pixel
  after `dataset.mask_values` or `dataset.palette` (target_kind "mask",
  target_key "mask"); a mask of another size than its image is an error
  naming both files, and so (before anything compiles, `resolve_num_classes`)
  is an id that is neither below task.num_classes nor dataset.ignore_index;
  masks of only 0 and the ignore_index (0/255 masks read without
  `mask_values=255:1`) are warned about;
- `yolo`: `{"image", "classes": int32 [n], "boxes": float32 [n, 4]}`, pixel
  (x0, y0, x1, y1) boxes of the upright image (target_kind "objects",
  target_key "classes", boxes_key "boxes", box_format "xyxy"). A label line's
  normalised (cx, cy, w, h) is multiplied by the size of the image as
  `jaxdl.data.images.decode` returns it, EXIF orientation applied, which is
  the picture the labeller saw: boxes stay on their objects in rotated phone
  photos. Boxes are clipped to the image; one of zero size is an error.

Every image goes through `images.decode` (EXIF orientation, then
`dataset.channels`). Sizes may differ: the configured transforms (resize,
letterbox, a resizing crop) bring them to one size. A file that does not decode
is a one-line error naming it, or with `dataset.skip_bad_files=True` it is left
out and every run logs how many and the first names.

The cache. The decoded records of every split on disk are written once, as
ArrayRecord files under `<data dir>/folders/<format>-<folder>-<fingerprint>/`,
where the fingerprint hashes the file list with each file's size and
modification time (images, masks, label files, data.yaml) and the decode
settings (channels, mask_values, palette). A second run reads the records
without decoding; a folder where a file was added, removed or touched gets a
new fingerprint and is decoded afresh. An entry is written in a temporary
folder and renamed into place under a file lock, so a crash leaves no entry
(the next run starts over) and concurrent runs decode once. Old entries are not
removed: delete `<data dir>/folders` to reclaim the space.

`task.num_classes = 0` takes the count from the dataset (`resolve_num_classes`,
called as the experiment is built, so config.json holds the number): the class
folders, the data.yaml names, or the largest mask id + 1. Training writes the
class names into the workdir (`class_names.json`), where `TrainedRun` reads
them: `jaxdl-predict` names classes without the dataset folder.

Validation without a validation folder. When the layout has no `val` (or
`validation`) split, `dataset.val_fraction` of train becomes validation:
round(fraction * n) records of each class (image_folder; a single group for the
other layouts) drawn with a fixed seed (`VAL_SEED`), not `config.seed`, so runs
of different seeds validate on the same images and are comparable. The cut is a
view over the cached train records: changing the fraction decodes nothing.
Without a test split (common in YOLO datasets, where Ultralytics reports val),
the test split is the validation split, with a warning.

A record is stored as a small JSON header (key, dtype, shape) followed by the
raw array bytes (ArrayRecord compresses each record with its default codec):
reading it back is one `np.frombuffer` per key. With `cache_in_memory=True` the
records are read once into memory: stacked columns when all have one shape,
else kept as a list (images of many sizes work either way).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import filelock
import ml_collections
import numpy as np

from jaxdl.data import datasets, folders, images
from jaxdl.errors import ConfigError, check_choice, check_fraction

log = logging.getLogger(__name__)

FORMATS = folders.FORMATS
VAL_SEED = 0  # Seeds the validation cut of train: fixed, so every run (any config.seed) cuts the same.
_VERSION = 1  # Of the record encoding and the cache layout: a change gives new fingerprints.
_SPLIT_ALIASES = {"val": "validation"}  # Split names accepted besides jaxdl's own.
_INFO = "info.json"
_SHOWN_NAMES = 5  # Skipped files named in the log.
_CHUNK = 256  # Images decoded per round of the thread pool (bounds the memory held).
_logged: set[tuple[str, str]] = set()  # (what, cache entry) this process has warned about once.


def is_disk(name: str) -> bool:
    """Whether dataset `name` is read from a folder on disk."""
    return name in FORMATS


# ---------------------------------------------------------------------------------------------- config


def parse_mask_values(text: str) -> dict[int, int]:
    """`"255:1,128:2"` -> {255: 1, 128: 2} (stored mask value -> class id); "" -> {}."""
    out = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        match = re.fullmatch(r"(\d+)\s*:\s*(\d+)", part)
        if not match:
            raise ConfigError(
                f"config.dataset.mask_values='{text}' is not valid; give stored:class pairs, e.g. '255:1' "
                "or '0:0,255:1'"
            )
        stored, cls = int(match[1]), int(match[2])
        if stored > 65535 or cls > 255:
            raise ConfigError(
                f"config.dataset.mask_values='{text}': '{part}' is out of range (stored values <= 65535, "
                "classes <= 255)"
            )
        out[stored] = cls
    return out


def parse_palette(text: str) -> dict[tuple[int, int, int], int]:
    """`"#000000:0,#ff0000:1"` -> {(0, 0, 0): 0, (255, 0, 0): 1} (RGB colour -> class id); "" -> {}."""
    out = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        match = re.fullmatch(r"#([0-9a-fA-F]{6})\s*:\s*(\d+)", part)
        if not match or int(match[2]) > 255:
            raise ConfigError(
                f"config.dataset.palette='{text}' is not valid; give #rrggbb:class pairs, e.g. '#000000:0,#ff0000:1'"
            )
        colour = tuple(int(match[1][i : i + 2], 16) for i in (0, 2, 4))
        out[colour] = int(match[2])
    return out


def check(config: ml_collections.ConfigDict) -> None:
    """The keys of a disk dataset config, each problem a one-line ConfigError naming the key; reads no file."""
    if not config.path:
        what = "a data.yaml (or its folder)" if config.name == "yolo" else "the dataset's folder"
        raise ConfigError(f"config.dataset.path is empty; give {what} for dataset '{config.name}'")
    check_choice("dataset.channels", config.channels, (1, 3))
    if isinstance(config.val_fraction, bool) or not isinstance(config.val_fraction, int | float):
        raise ConfigError(f"config.dataset.val_fraction={config.val_fraction!r} is not valid; give a number in [0, 1)")
    check_fraction("dataset.val_fraction", config.val_fraction)
    if not isinstance(config.skip_bad_files, bool):
        raise ConfigError(f"config.dataset.skip_bad_files={config.skip_bad_files!r} is not valid; give True or False")
    values, palette = parse_mask_values(config.mask_values), parse_palette(config.palette)
    if values and palette:
        raise ConfigError(
            "config.dataset.mask_values and config.dataset.palette are both set; masks are either "
            "ids (mask_values) or colours (palette)"
        )


# ---------------------------------------------------------------------------------------------- records


def encode(record: Mapping[str, np.ndarray]) -> bytes:
    """A record as bytes: 4-byte header length, JSON header [[key, dtype, shape], ...], raw arrays."""
    arrays = [(key, np.asarray(value)) for key, value in record.items()]  # tobytes() writes C order.
    header = json.dumps([[key, value.dtype.str, list(value.shape)] for key, value in arrays]).encode()
    return b"".join([len(header).to_bytes(4, "little"), header, *(value.tobytes() for _, value in arrays)])


def decode_record(data: bytes) -> dict[str, np.ndarray]:
    """The record `encode` wrote (read-only arrays over `data`)."""
    size = int.from_bytes(data[:4], "little")
    offset, out = 4 + size, {}
    for key, dtype, shape in json.loads(data[4:offset]):
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        out[key] = np.frombuffer(data, dtype, count, offset).reshape(shape)
        offset += count * dtype.itemsize
    return out


class FolderSource:
    """Random access to the cached records of one split (a view of `indices` of its file when cut).

    Picklable (grain's workers) and with a repr that holds no address (grain
    compares it on restore).
    """

    def __init__(self, path: Path, indices: np.ndarray | None, name: str, files: Sequence[str]):
        import grain

        self._records = grain.sources.ArrayRecordDataSource([str(path)])
        self._indices = np.arange(len(self._records)) if indices is None else np.asarray(indices, np.int64)
        self._name, self._files = name, list(files)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return decode_record(self._records[int(self._indices[index])])

    def __repr__(self) -> str:
        return f"FolderSource({self._name}, {len(self)} records)"

    def file(self, index: int) -> str:
        """The image file of record `index`, relative to the dataset's root."""
        return self._files[int(self._indices[index])]


class RecordsInMemory:
    """All records of a source held as a list (images of different sizes cannot be stacked into columns)."""

    def __init__(self, source):
        self._name = repr(source)
        self._records = [source[i] for i in range(len(source))]

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict:
        return self._records[int(index)]

    def __repr__(self) -> str:
        return f"RecordsInMemory({self._name})"


# ---------------------------------------------------------------------------------------------- building


@dataclasses.dataclass(frozen=True)
class Settings:
    """What decides a dataset's records besides its files."""

    format: str
    path: str
    channels: int
    mask_values: dict
    palette: dict
    skip_bad_files: bool

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> Settings:
        check(config)
        return cls(
            format=config.name,
            path=str(config.path),
            channels=int(config.channels),
            mask_values=parse_mask_values(config.mask_values),
            palette=parse_palette(config.palette),
            skip_bad_files=bool(config.skip_bad_files),
        )

    def fingerprinted(self) -> dict:
        """The settings that change the records (not skip_bad_files: a cache holds what decoded, see `prepare`)."""
        return {
            "version": _VERSION,
            "format": self.format,
            "channels": self.channels,
            "mask_values": sorted(self.mask_values.items()) if self.format == "mask_folder" else [],
            "palette": sorted((list(k), v) for k, v in self.palette.items()) if self.format == "mask_folder" else [],
        }


def _stat(path: Path | None) -> list:
    """[size, mtime_ns] of a file, or None when it does not exist (a missing YOLO label file)."""
    if path is None:
        return None
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:  # A YOLO list file may name images outside the yaml's folder.
        return str(path)


def fingerprint(layout: folders.Layout, settings: Settings) -> str:
    """sha256 of the settings, the class names and every file of every split with its size and mtime."""
    digest = hashlib.sha256()
    digest.update(json.dumps([settings.fingerprinted(), str(layout.root), list(layout.class_names)]).encode())
    if layout.yaml_file is not None:  # yolo: the data.yaml itself.
        digest.update(json.dumps([str(layout.yaml_file), _stat(layout.yaml_file)]).encode())
    for split in sorted(layout.splits):
        for entry in layout.splits[split]:
            files = [entry.image, entry.mask, entry.labels]
            row = [split, entry.label, *(str(f) if f else None for f in files), *(_stat(f) for f in files)]
            digest.update(json.dumps(row).encode())
    return digest.hexdigest()


def _first_error(layout: folders.Layout, settings: Settings) -> None:
    errors = layout.errors
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise folders.LayoutError(f"{first.path}: {first.message}{more}; {_check_hint(settings)}")


def _check_hint(settings: Settings) -> str:
    return f"`jaxdl-data check {settings.path} --format={settings.format}` lists every problem"


def _record(entry: folders.Entry, layout: folders.Layout, settings: Settings) -> dict[str, np.ndarray]:
    """One entry decoded as its record; ImageDecodeError for a file that does not decode, LayoutError for bad labels."""
    image = images.decode(entry.image, settings.channels)
    height, width = image.shape[:2]
    if settings.format == "image_folder":
        return {"image": image, "label": np.int64(entry.label)}
    if settings.format == "mask_folder":
        mask = folders.read_mask(entry.mask, settings.mask_values or None, settings.palette or None)
        if mask.shape != (height, width):
            raise folders.LayoutError(
                f"{entry.mask}: mask of {mask.shape[1]}x{mask.shape[0]} pixels for image {entry.image} of "
                f"{width}x{height}; a mask must have its image's size (upright, after EXIF orientation)"
            )
        return {"image": image, "mask": np.asarray(mask, np.uint8)}
    # yolo: normalised (cx, cy, w, h) of the upright image, to its pixels.
    classes, boxes = folders.read_yolo_labels(entry.labels, len(layout.class_names))
    cx, cy, w, h = np.asarray(boxes, np.float64).reshape(-1, 4).T
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1) * [width, height, width, height]
    xyxy = np.clip(xyxy, 0, [width, height, width, height]).astype(np.float32)
    empty = (xyxy[:, 2] <= xyxy[:, 0]) | (xyxy[:, 3] <= xyxy[:, 1])
    if empty.any():
        j = int(np.argmax(empty))
        raise folders.LayoutError(
            f"{entry.labels}: line {j + 1} is a box of zero size inside the {width}x{height} image {entry.image}; "
            f"fix or remove it ({_check_hint(settings)})"
        )
    return {"image": image, "classes": np.asarray(classes, np.int32).reshape(-1), "boxes": xyxy.reshape(-1, 4)}


def _decoded(entry, layout, settings):
    """(record, None), or (None, error) for a file that does not decode."""
    try:
        return _record(entry, layout, settings), None
    except images.ImageDecodeError as error:
        return None, error


def _write_split(path: Path, entries, layout, settings, pool, bar) -> tuple[list, list, list, list]:
    """Decodes `entries` into an ArrayRecord file; (files written, their labels, skipped files, each mask's ids)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    files, labels, skipped, mask_ids = [], [], [], []
    writer = ArrayRecordWriter(str(path), "group_size:1")  # One record per chunk: fast random access.
    try:
        for start in range(0, len(entries), _CHUNK):
            chunk = entries[start : start + _CHUNK]
            for entry, (record, error) in zip(
                chunk, pool.map(lambda e: _decoded(e, layout, settings), chunk), strict=True
            ):
                bar.update(1)
                name = _relative(entry.image, layout.root)
                if error is not None:
                    if not settings.skip_bad_files:
                        raise folders.LayoutError(
                            f"{error}; set config.dataset.skip_bad_files=True to skip such files, or fix it "
                            f"({_check_hint(settings)})"
                        )
                    skipped.append(name)
                    continue
                writer.write(encode(record))
                if "mask" in record:
                    mask_ids.append([int(v) for v in np.unique(record["mask"])])
                files.append(name)
                labels.append(-1 if entry.label is None else int(entry.label))
    finally:
        writer.close()
    return files, labels, skipped, mask_ids


def _root_folder(layout: folders.Layout) -> Path:
    return layout.root


def _build(target: Path, layout: folders.Layout, settings: Settings, print_name: str) -> None:
    """Writes the cache entry `target` through a temporary folder renamed into place (nothing on failure)."""
    from tqdm import tqdm

    temporary = target.parent / f".tmp-{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temporary.mkdir(parents=True)
    total = sum(len(entries) for entries in layout.splits.values())
    log.info("decoding %d images of %s into %s (once; later runs read the cache)", total, layout.root, target)
    try:
        info = {"format": layout.format, "root": str(layout.root), "class_names": list(layout.class_names)}
        info["splits"], skipped = {}, []
        workers = min(8, os.cpu_count() or 1)
        with (
            concurrent.futures.ThreadPoolExecutor(workers) as pool,
            tqdm(total=total, desc=f"decoding {print_name}", unit="img", disable=None, leave=False) as bar,
        ):
            for split, entries in sorted(layout.splits.items()):
                files, labels, bad, mask_ids = _write_split(
                    temporary / f"{split}.array_record", entries, layout, settings, pool, bar
                )
                if not files:
                    raise folders.LayoutError(
                        f"{layout.root}: no image of split '{split}' decodes ({len(bad)} skipped, first "
                        f"{bad[0]}); {_check_hint(settings)}"
                    )
                info["splits"][split] = {"files": files, "labels": labels, "mask_ids": mask_ids}
                skipped += bad
        info["skipped"] = skipped
        (temporary / _INFO).write_text(json.dumps(info) + "\n")
        os.replace(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def cache_root(config: ml_collections.ConfigDict) -> Path:
    """Where the decoded folders are cached: <data dir>/folders."""
    return Path(config.data_dir or datasets.default_data_dir()) / "folders"


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A dataset's cache entry: its folder and info (class names, files and labels per split, skipped files)."""

    directory: Path
    info: dict
    settings: Settings

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.info["class_names"])


def prepare(config: ml_collections.ConfigDict) -> Prepared:
    """Scans the folder, and decodes it into the cache unless an entry of the same fingerprint exists.

    A cache entry built with skip_bad_files=True holds only what decoded; read
    with skip_bad_files=False, its skipped files are an error as when building.
    """
    settings = Settings.from_config(config)
    layout = folders.scan(settings.format, settings.path)
    _first_error(layout, settings)
    key = fingerprint(layout, settings)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", layout.root.name or "root")[:40]
    target = cache_root(config) / f"{settings.format}-{slug}-{key[:20]}"
    if not (target / _INFO).is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with filelock.FileLock(f"{target}.lock"):
            if not (target / _INFO).is_file():  # Another process may have built it while this one waited.
                _build(target, layout, settings, slug)
    info = json.loads((target / _INFO).read_text())
    skipped = info["skipped"]
    if skipped and not settings.skip_bad_files:
        raise folders.LayoutError(
            f"{layout.root / skipped[0]}: not a readable image ({len(skipped)} such files); set "
            f"config.dataset.skip_bad_files=True to skip them ({_check_hint(settings)})"
        )
    if skipped and ("skipped", str(target)) not in _logged:
        _logged.add(("skipped", str(target)))
        shown = ", ".join(skipped[:_SHOWN_NAMES]) + (", ..." if len(skipped) > _SHOWN_NAMES else "")
        log.warning(
            "skipped %d files of %s that do not decode (dataset.skip_bad_files=True): %s",
            len(skipped),
            layout.root,
            shown,
        )
    return Prepared(target, info, settings)


def validation_cut(labels: Sequence[int], fraction: float) -> np.ndarray:
    """Sorted indices of the records that become validation: round(fraction * n) of each label, seeded by VAL_SEED."""
    labels = np.asarray(labels, np.int64)
    rng = np.random.default_rng(VAL_SEED)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = int(round(fraction * len(members)))
        chosen.append(members[rng.permutation(len(members))[:count]])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def open_split(config: ml_collections.ConfigDict, split: str):
    """The random-access source of `split` of a disk dataset (decoded into the cache on first use)."""
    prepared = prepare(config)
    splits = prepared.info["splits"]
    wanted = _SPLIT_ALIASES.get(split, split)
    root = config.path
    if wanted == "test" and "test" not in splits:  # Common in YOLO datasets: Ultralytics reports val.
        if ("test", str(prepared.directory)) not in _logged:
            _logged.add(("test", str(prepared.directory)))
            log.warning("%s has no test split: the test metrics are computed on the validation split", root)
        wanted = "validation"
    indices, stored = None, wanted
    if wanted in ("train", "validation") and "validation" not in splits and "train" in splits:
        stored = "train"
        if config.val_fraction > 0:
            cut = validation_cut(splits["train"]["labels"], config.val_fraction)
            keep = np.zeros(len(splits["train"]["files"]), bool)
            keep[cut] = True
            indices = np.flatnonzero(keep if wanted == "validation" else ~keep)
        elif wanted == "validation":
            raise ConfigError(
                f"split '{split}': {root} has no validation split; add a val folder, set "
                "config.dataset.val_fraction > 0, or set config.dataset.val_split=''"
            )
    elif wanted not in splits:
        raise ConfigError(
            f"split '{split}' is not in {root} (splits: {', '.join(sorted(splits))}); add it or set "
            f"config.dataset.test_split (or val_split) to one of those"
        )
    files = splits[stored]["files"]
    name = f"{config.name} '{wanted}' of {root}"
    source = FolderSource(prepared.directory / f"{stored}.array_record", indices, name, files)
    if config.cache_in_memory:
        try:
            return datasets.InMemorySource(source)
        except ValueError:  # Images (or box lists) of different sizes: keep the records, one by one.
            return RecordsInMemory(source)
    return source


def class_names(config: ml_collections.ConfigDict) -> tuple[str, ...] | None:
    """The class names of a disk dataset (folder names, data.yaml names), by id; None for mask folders."""
    names = prepare(config).class_names
    return names or None


def resolve_num_classes(config: ml_collections.ConfigDict) -> None:
    """Sets `task.num_classes` = 0 from a disk dataset, then checks a mask folder's ids against it.

    The count is the class folders or the data.yaml names, or a mask folder's
    largest id (other than dataset.ignore_index) + 1. A mask holding an id that
    is neither a class nor the ignore_index is a one-line error naming its
    image, before anything compiles (unless the transforms remap ids with
    map_mask). Any other config is left as it is.
    """
    dataset = config.dataset
    if not is_disk(dataset.name) or (config.task.num_classes != 0 and dataset.name != "mask_folder"):
        return
    prepared = prepare(dataset)
    parts = sorted(prepared.info["splits"].items())
    if config.task.num_classes == 0:
        if prepared.class_names:
            count = len(prepared.class_names)
        else:
            ids = {v for _, part in parts for record in part["mask_ids"] for v in record}
            count = max(ids - {dataset.ignore_index}, default=0) + 1
        log.info("task.num_classes=0: %d classes, from %s", count, dataset.path)
        config.task.num_classes = count
    if dataset.name != "mask_folder" or "map_mask" in dataset.train_transforms + dataset.eval_transforms:
        return
    n, ignore = config.task.num_classes, dataset.ignore_index
    found = {v for _, part in parts for record in part["mask_ids"] for v in record}
    if ignore in found and found <= {0, ignore}:
        log.warning(
            "the masks of %s hold only 0 and %d (dataset.ignore_index): every non-zero pixel is left out of the "
            "loss; if %d marks objects, set --config.dataset.mask_values=%d:1",
            dataset.path,
            ignore,
            ignore,
            ignore,
        )
    for _, part in parts:
        for file, ids in zip(part["files"], part["mask_ids"], strict=True):
            bad = [v for v in ids if v >= n and v != ignore]
            if bad:
                raise folders.LayoutError(
                    f"{prepared.info['root']}/{file}: its mask holds id {bad[0]}, not a class of "
                    f"task.num_classes={n} nor dataset.ignore_index={ignore}; map stored values with "
                    f"config.dataset.mask_values (e.g. '{bad[0]}:1') or raise config.task.num_classes"
                )
