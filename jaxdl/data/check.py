"""`jaxdl-data check`: what is in an image dataset on disk and what is wrong with it, before a run trains on it.

  jaxdl-data check PATH --format=image_folder|yolo|mask_folder [--channels=3] [--mask_values=255:1] [--all]
  jaxdl-data check --config=configs/my_images.py [--config.dataset.path=PATH ...]

The second form reads the dataset a config would train on, with its
`dataset.channels`, `dataset.mask_values` and `dataset.palette` (the config is
loaded and overridden as `jaxdl-train` does). The training run's one-line data
errors name the first form.

Every file is read once, the way training reads it (`jaxdl.data.images.decode`,
`jaxdl.data.folders.read_mask` and `read_yolo_labels`), on a few threads, with a
progress bar on a terminal. Per split it prints the image count and a class
histogram (images per class; for yolo boxes per class and background images;
for masks the masks and pixels holding each id), the image sizes, the colour
modes converted (grayscale, RGBA, palette, CMYK) and the EXIF-rotated files,
and then every problem, one line each:

errors (exit status 1):
- a file that does not decode (truncated, not an image);
- an empty class folder, or a val/test class folder train lacks;
- a yolo class id past the data.yaml's `names` (file:line), a malformed label
  line, a box of zero size, coordinates outside [0, 1] (not normalised), and no
  label file at all in train;
- a JPEG mask, a mask whose size differs from its image's, an RGB mask without
  `dataset.palette`, masks holding only 0 and 255 (255 is
  `dataset.ignore_index`: the objects would be ignored) while no
  `dataset.mask_values` is given;
- in the config form: a class count that differs from `task.num_classes`, mask
  ids past it.

warnings (exit status 0): hidden entries skipped, non-image files ignored,
yolo images whose label file is missing (read as background, unlike an empty
label file, which says so), boxes reaching past the image edge (clipped), and
identical files (by content hash) in two splits or twice in one.

The exit status is 1 when there is an error, 0 otherwise; 2 for a config or
path that cannot be read at all (a one-line message, as every jaxdl CLI).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxdl.data import folders, images
from jaxdl.data.folders import Entry, Layout, LayoutError, Problem
from jaxdl.errors import ConfigError, UserError

PROG = "jaxdl-data"
_SHOWN = 12  # Lines of one kind of problem shown per split (all with --all).
_BAR = 30  # Width of the histogram's longest bar.
_TOLERANCE = 1e-6  # Slack of normalised yolo coordinates (labels are written with 6 decimals).
_MODE_NOTES = {
    "L": "grayscale",
    "LA": "grayscale with alpha (alpha dropped)",
    "RGBA": "alpha dropped",
    "P": "palette colours",
    "PA": "palette with alpha (alpha dropped)",
    "CMYK": "CMYK",
    "I;16": "16-bit grayscale (scaled to 8 bits)",
    "I": "32-bit grayscale",
    "1": "black and white",
}


@dataclasses.dataclass
class _Image:
    """What reading one image file found."""

    digest: str = ""
    size: tuple[int, int] | None = None  # Upright (width, height); None when it does not decode.
    stored: tuple[int, int] | None = None  # As stored, before the EXIF orientation.
    mode: str = ""
    orientation: int = 1
    error: str = ""


@dataclasses.dataclass
class _Finding:
    kind: str  # Groups lines of one sort for the display limit.
    problem: Problem


@dataclasses.dataclass
class SplitReport:
    """The counts and findings of one split."""

    name: str
    count: int = 0
    histogram: dict = dataclasses.field(default_factory=dict)  # label -> count (ordered for display).
    notes: list = dataclasses.field(default_factory=list)  # Informational lines.
    findings: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Report:
    """Everything `check_layout` found; `text()` is what the CLI prints."""

    layout: Layout
    splits: dict[str, SplitReport]
    findings: list  # Findings of the whole dataset (split "").

    @property
    def problems(self) -> list[Problem]:
        """Every problem, split by split, then the dataset's."""
        found = [f.problem for s in self.splits.values() for f in s.findings]
        return found + [f.problem for f in self.findings]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def text(self, show_all: bool = False) -> str:
        """The printed report."""
        layout = self.layout
        lines = [f"{layout.format} dataset at {layout.root}"]
        if layout.yaml_file is not None:
            lines[0] += f" (from {layout.yaml_file})"
        if layout.class_names:
            lines.append(f"{len(layout.class_names)} classes: {', '.join(layout.class_names)}")
        for split in self.splits.values():
            lines += ["", f"{split.name}: {split.count} images"]
            lines += _histogram(split.histogram)
            lines += [f"  {note}" for note in split.notes]
            lines += _findings(split.findings, layout.root, show_all)
        if self.findings:
            lines += ["", "all splits:"] + _findings(self.findings, layout.root, show_all)
        errors, warnings = len(self.errors), len(self.problems) - len(self.errors)
        verdict = "errors: fix them before training" if errors else "no errors"
        lines += ["", f"{errors} error(s), {warnings} warning(s): {verdict}"]
        return "\n".join(lines)


def _relative(path: str | Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _histogram(histogram: dict) -> list[str]:
    if not histogram:
        return []
    top = max(max(histogram.values()), 1)
    width = max(len(str(k)) for k in histogram)
    return [
        f"  {str(label):<{width}} {count:>7}  {'#' * (round(_BAR * count / top) if count else 0)}"
        for label, count in histogram.items()
    ]


def _findings(findings: list[_Finding], root: Path, show_all: bool) -> list[str]:
    lines, shown = [], collections.Counter()
    totals = collections.Counter(f.kind for f in findings)
    for finding in sorted(findings, key=lambda f: f.problem.severity != "error"):  # Errors first, stable.
        shown[finding.kind] += 1
        if show_all or shown[finding.kind] <= _SHOWN:
            p = finding.problem
            where = f"{_relative(p.path, root)}: " if p.path and Path(p.path) != root else ""
            lines.append(f"  {p.severity}: {where}{p.message}")
        elif shown[finding.kind] == _SHOWN + 1:
            lines.append(f"  ... and {totals[finding.kind] - _SHOWN} more like the above (--all lists them)")
    return lines


def _inspect_image(path: Path, channels: int) -> _Image:
    """Reads one image file as training does, with its content hash, mode and EXIF orientation."""

    found = _Image()
    try:
        data = path.read_bytes()
    except OSError as error:
        found.error = f"cannot be read ({error.strerror or type(error).__name__})"
        return found
    found.digest = hashlib.sha256(data).hexdigest()
    with contextlib.suppress(*images.DECODE_ERRORS):  # Unreadable: decode below names the failure.
        with images.open_image(io.BytesIO(data)) as image:  # The header only: mode and orientation.
            found.mode, found.stored = image.mode, image.size
            found.orientation = int(image.getexif().get(0x0112, 1) or 1)
    try:
        pixels = images.decode(data, channels, name=str(path))
    except images.ImageDecodeError as error:
        found.error = str(error).removeprefix(f"{path}: ")
        return found
    found.size = (pixels.shape[1], pixels.shape[0])
    return found


class _Checker:
    """Runs the per-format checks of one layout."""

    def __init__(self, layout: Layout, channels, mask_values, palette, num_classes, ignore_index, progress):
        self.layout, self.channels = layout, channels
        self.mask_values, self.palette = mask_values or {}, palette or {}
        self.num_classes, self.ignore_index, self.progress = num_classes, ignore_index, progress
        self.digests: dict[str, list[tuple[str, Path]]] = collections.defaultdict(list)

    def add(self, report, severity: str, kind: str, path, message: str) -> None:
        findings = report.findings if isinstance(report, SplitReport) else report
        split = report.name if isinstance(report, SplitReport) else ""
        findings.append(_Finding(kind, Problem(severity, split, str(path), message)))

    def run(self) -> Report:
        layout = self.layout
        splits = {name: SplitReport(name) for name in folders.SPLITS if name in layout.splits}
        dataset: list[_Finding] = []
        for problem in layout.problems:  # What scanning found.
            target = splits.get(problem.split)
            findings = target.findings if target is not None else dataset
            findings.append(_Finding(f"scan:{problem.message[:24]}", problem))
        self._skipped(dataset)
        if self.num_classes and layout.format == "image_folder" and self.num_classes != len(layout.class_names):
            self.add(
                dataset,
                "error",
                "num_classes",
                layout.root,
                f"config.task.num_classes={self.num_classes} but "
                f"the folder has {len(layout.class_names)} classes; set it to {len(layout.class_names)} (or 0)",
            )
        for name, report in splits.items():
            entries = layout.splits[name]
            report.count = len(entries)
            inspected = self._read_all(entries, name)
            self._images(report, entries, inspected)
            getattr(self, f"_{layout.format}")(report, entries, inspected)
        self._duplicates(dataset)
        return Report(layout, splits, dataset)

    def _read_all(self, entries: Sequence[Entry], split: str) -> list[tuple[_Image, object]]:
        """(image found, format-specific extra) of every entry, read on threads, in entry order."""
        from tqdm import tqdm

        extra = {"yolo": self._read_labels, "mask_folder": self._read_mask}.get(self.layout.format, lambda e: None)

        def read(entry: Entry):
            return _inspect_image(entry.image, self.channels), extra(entry)

        workers = min(8, os.cpu_count() or 1)
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            results = pool.map(read, entries)
            bar = tqdm(
                results,
                total=len(entries),
                desc=f"checking {split}",
                unit="file",
                file=sys.stderr,
                disable=None if self.progress else True,
                leave=False,
            )
            return list(bar)

    def _skipped(self, dataset: list) -> None:
        root = self.layout.root
        for kind, paths, what in (
            ("hidden", self.layout.hidden, "hidden entries skipped (names starting with '.'; never data)"),
            ("ignored", self.layout.ignored, "files that are not images ignored"),
        ):
            if paths:
                names = ", ".join(_relative(p, root) + ("/" if p.is_dir() else "") for p in paths[:8])
                more = f" and {len(paths) - 8} more" if len(paths) > 8 else ""
                self.add(dataset, "warning", kind, root, f"{len(paths)} {what}: {names}{more}")

    def _images(self, report: SplitReport, entries: Sequence[Entry], inspected) -> None:
        modes, sizes, rotated = collections.Counter(), collections.Counter(), []
        for entry, (image, _) in zip(entries, inspected, strict=True):
            if image.digest:
                self.digests[image.digest].append((report.name, entry.image))
            if image.error:
                self.add(report, "error", "decode", entry.image, f"does not decode: {image.error}")
                continue
            modes[image.mode] += 1
            sizes[image.size] += 1
            if image.orientation != 1:
                rotated.append((entry.image, image))
        if sizes:
            small, large = min(sizes, key=lambda s: s[0] * s[1]), max(sizes, key=lambda s: s[0] * s[1])
            text = f"{small[0]}x{small[1]}"
            if len(sizes) > 1:
                text = f"{len(sizes)} sizes, {text} to {large[0]}x{large[1]} (the transforms bring them to one size)"
            report.notes.append(f"image sizes (width x height, upright): {text}")
        target = "RGB" if self.channels == 3 else "grayscale"
        converted = [f"{n} {m} ({_MODE_NOTES.get(m, m)})" for m, n in sorted(modes.items()) if m not in ("RGB", "L")]
        converted += [f"{modes['L']} L (grayscale)"] if "L" in modes and self.channels == 3 else []
        converted += [f"{modes['RGB']} RGB (colour)"] if "RGB" in modes and self.channels == 1 else []
        if converted:
            report.notes.append(f"converted to {target} (dataset.channels={self.channels}): {', '.join(converted)}")
        for path, image in rotated[:_SHOWN]:
            report.notes.append(
                f"EXIF orientation {image.orientation} applied: {_relative(path, self.layout.root)} stored "
                f"{image.stored[0]}x{image.stored[1]}, read upright as {image.size[0]}x{image.size[1]}"
                + (" (its boxes are read on the upright picture)" if self.layout.format == "yolo" else "")
            )
        if len(rotated) > _SHOWN:
            report.notes.append(f"... and {len(rotated) - _SHOWN} more EXIF-rotated files")

    def _duplicates(self, dataset: list) -> None:
        root = self.layout.root
        for copies in self.digests.values():
            if len(copies) < 2:
                continue
            splits = sorted({split for split, _ in copies}, key=folders.SPLITS.index)
            files = " = ".join(_relative(path, root) for _, path in copies)
            if len(splits) > 1:
                message = f"the same file in {' and '.join(splits)} (validation or test would leak): {files}"
                self.add(dataset, "warning", "duplicate-across", copies[0][1], message)
            else:
                self.add(
                    dataset, "warning", "duplicate-within", copies[0][1], f"{len(copies)} copies of one file: {files}"
                )

    # ------------------------------------------------------------------ image_folder

    def _image_folder(self, report: SplitReport, entries, inspected) -> None:
        counts = collections.Counter(entry.label for entry in entries)
        report.histogram = {name: counts[i] for i, name in enumerate(self.layout.class_names)}

    # ------------------------------------------------------------------ yolo

    @staticmethod
    def _read_labels(entry: Entry):
        """("missing" | "empty" | "ok", ids, boxes, error) of an entry's label file."""
        path = entry.labels
        if path is None or not path.exists():
            return "missing", None, None, ""
        try:
            ids, boxes = folders.yolo_label_rows(path)
        except LayoutError as error:
            return "bad", None, None, str(error)
        except (OSError, UnicodeDecodeError) as error:
            return "bad", None, None, f"{path}: cannot be read ({type(error).__name__})"
        return ("empty" if len(ids) == 0 else "ok"), ids, boxes, ""

    def _yolo(self, report: SplitReport, entries, inspected) -> None:
        names = self.layout.class_names
        boxes_per, images_per = collections.Counter(), collections.Counter()
        missing, empty = [], []
        for entry, (image, (status, ids, boxes, error)) in zip(entries, inspected, strict=True):
            if status == "missing":
                missing.append(entry)
                continue
            if status == "bad":
                where, _, message = error.partition(": ")
                self.add(report, "error", "label-line", where, message)
                continue
            if status == "empty":
                empty.append(entry)
                continue
            self._label_rows(report, entry, ids, boxes, image)
            boxes_per.update(int(i) for i in ids)
            images_per.update({int(i) for i in ids})
        histogram = {}
        for i, name in enumerate(names):
            histogram[f"{i} {name}"] = boxes_per[i]
        for i in sorted(set(boxes_per) - set(range(len(names)))):
            histogram[f"{i} (past names)"] = boxes_per[i]
        report.histogram = histogram
        report.notes.insert(
            0,
            "boxes per class above; images holding each: "
            + ", ".join(f"{names[i] if i < len(names) else i} {images_per[i]}" for i in sorted(images_per))
            if images_per
            else "no boxes at all",
        )
        report.notes.append(
            f"background images (no boxes): {len(missing) + len(empty)} ({len(empty)} with an empty label file, "
            f"{len(missing)} with none)"
        )
        if missing and len(missing) == len(entries):
            severity = "error" if report.name == "train" else "warning"
            expected = folders.label_path(entries[0].image)
            self.add(
                report,
                severity,
                "no-labels",
                entries[0].image,
                f"no image of {report.name} has a label file (the first is looked for at {expected}: "
                "the last /images/ of the path becomes /labels/, the suffix .txt)",
            )
            return
        for entry in missing:
            self.add(
                report,
                "warning",
                "missing-label",
                entry.image,
                f"no label file {_relative(entry.labels, self.layout.root)}: read as a background image "
                "(an empty .txt says so on purpose)",
            )

    def _label_rows(self, report, entry: Entry, ids, boxes, image: _Image) -> None:
        names, where = self.layout.class_names, entry.labels
        lines = None
        for row, (cls, (cx, cy, w, h)) in enumerate(zip(ids, boxes, strict=True)):
            if lines is None:
                lines = [n for n, t in enumerate(where.read_text(errors="replace").splitlines(), 1) if t.split()]
            at = f"{where}:{lines[row]}"
            if cls >= len(names):
                self.add(
                    report,
                    "error",
                    "class-id",
                    at,
                    f"class id {cls} is past the {len(names)} names of the "
                    f"data.yaml (ids 0..{len(names) - 1}); fix the label or add the name",
                )
            corners = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            size = f" ({image.size[0]}x{image.size[1]} px upright)" if image.size else ""
            if min(cx, cy, w, h) < -_TOLERANCE or max(cx, cy, w, h) > 1 + _TOLERANCE:
                self.add(
                    report,
                    "error",
                    "box-range",
                    at,
                    f"box {cx:g} {cy:g} {w:g} {h:g} is not normalised: "
                    f"cx cy w h must be in [0, 1], as fractions of the image{size}",
                )
            elif (
                w <= 0 or h <= 0 or min(corners[2], 1) <= max(corners[0], 0) or min(corners[3], 1) <= max(corners[1], 0)
            ):
                self.add(report, "error", "box-size", at, f"box {cx:g} {cy:g} {w:g} {h:g} has zero size in the image")
            elif min(corners) < -_TOLERANCE or max(corners) > 1 + _TOLERANCE:
                self.add(
                    report,
                    "warning",
                    "box-edge",
                    at,
                    f"box {cx:g} {cy:g} {w:g} {h:g} reaches outside the "
                    f"image{size} (x {corners[0]:.3f}..{corners[2]:.3f}, y {corners[1]:.3f}..{corners[3]:.3f}); "
                    "it is clipped to the image",
                )

    # ------------------------------------------------------------------ mask_folder

    def _read_mask(self, entry: Entry):
        """(ids [n], pixel counts [n], shape, raw distinct values, error) of an entry's mask."""

        try:
            ids = folders.read_mask(entry.mask, self.mask_values or None, self.palette or None)
        except (LayoutError, images.ImageDecodeError) as error:
            raw = None  # What the refused file holds: its distinct values, or colours of an RGB one.
            with contextlib.suppress(*images.DECODE_ERRORS):  # The error above already names the failure.
                with images.open_image(entry.mask) as image:
                    if image.mode in ("RGB", "RGBA"):
                        colours = np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)
                        raw = [tuple(int(c) for c in colour) for colour in colours]
                    else:
                        raw = np.unique(np.asarray(image))
            return None, None, None, raw, str(error)
        values, counts = np.unique(ids, return_counts=True)
        return values, counts, ids.shape, None, ""

    def _mask_folder(self, report: SplitReport, entries, inspected) -> None:
        masks_per, pixels = collections.Counter(), collections.Counter()
        only_0_255 = []
        for entry, (image, (values, counts, shape, raw, error)) in zip(entries, inspected, strict=True):
            if error:
                if entry.mask.suffix.lower() in folders.JPEG_SUFFIXES:  # Scanning flagged it: show the evidence.
                    if raw is not None and not isinstance(raw, list):
                        shown = ", ".join(str(int(v)) for v in raw[:6]) + (", ..." if len(raw) > 6 else "")
                        where = _relative(entry.mask, self.layout.root)
                        report.notes.append(f"JPEG mask {where} holds {len(raw)} distinct values: {shown}")
                    continue
                message = error.removeprefix(f"{entry.mask}: ")
                if isinstance(raw, list) and "palette" in message:
                    hint = ",".join(f"#{r:02x}{g:02x}{b:02x}:{i}" for i, (r, g, b) in enumerate(raw[:8]))
                    message += f" (its colours: --config.dataset.palette='{hint}', with the right class ids)"
                self.add(report, "error", "mask", entry.mask, message)
                continue
            if image.size is not None and shape != (image.size[1], image.size[0]):
                self.add(
                    report,
                    "error",
                    "mask-size",
                    entry.mask,
                    f"mask is {shape[1]}x{shape[0]} but its image "
                    f"{_relative(entry.image, self.layout.root)} is {image.size[0]}x{image.size[1]} (upright)",
                )
            masks_per.update(int(v) for v in values)
            pixels.update(dict(zip((int(v) for v in values), (int(c) for c in counts), strict=True)))
            if not self.mask_values and not self.palette and set(int(v) for v in values) <= {0, 255} and 255 in values:
                only_0_255.append(entry.mask)
        total = max(sum(pixels.values()), 1)
        report.histogram = {f"value {v}": masks_per[v] for v in sorted(masks_per)}
        if masks_per:
            mapped = " (after dataset.mask_values/palette)" if self.mask_values or self.palette else ""
            report.notes.insert(
                0,
                f"masks holding each value above{mapped}; share of pixels: "
                + ", ".join(f"{v} {100 * pixels[v] / total:.1f}%" for v in sorted(pixels)),
            )
        if only_0_255:
            names = ", ".join(_relative(p, self.layout.root) for p in only_0_255[:3])
            self.add(
                report,
                "error",
                "mask-0-255",
                only_0_255[0],
                f"{len(only_0_255)} mask(s) hold only 0 and 255 "
                f"({names}{', ...' if len(only_0_255) > 3 else ''}); 255 is dataset.ignore_index (unlabelled), so "
                "the objects would be ignored: give dataset.mask_values='255:1' (--config.dataset.mask_values=255:1)",
            )
        if self.num_classes:
            past = sorted(v for v in masks_per if v >= self.num_classes and v != self.ignore_index)
            if past:
                self.add(
                    report,
                    "error",
                    "mask-ids",
                    self.layout.root,
                    f"mask ids {past} are past "
                    f"config.task.num_classes={self.num_classes} (ids 0..{self.num_classes - 1}, "
                    f"{self.ignore_index} unlabelled); raise it or map them with dataset.mask_values",
                )


def check_layout(
    layout: Layout,
    *,
    channels: int = 3,
    mask_values=None,
    palette=None,
    num_classes: int = 0,
    ignore_index: int = 255,
    progress: bool = True,
) -> Report:
    """Reads every file of a scanned layout and reports what it holds and what is wrong (see the module docstring).

    `num_classes` (0: unknown) is the config's task.num_classes, checked against
    the class folders and the mask ids.
    """
    checker = _Checker(layout, channels, mask_values, palette, num_classes, ignore_index, progress)
    return checker.run()


def _check_config(args, overrides) -> tuple[Layout, dict]:
    """The layout and check settings of the dataset a config trains on."""
    from jaxdl import configuration
    from jaxdl.data import disk

    config = configuration.load_config(args.config)
    configuration.apply_overrides(config, overrides)
    if not disk.is_disk(config.dataset.name):
        raise ConfigError(
            f"config.dataset.name='{config.dataset.name}' is not read from a folder; jaxdl-data check reads "
            f"{', '.join(folders.FORMATS)}"
        )
    settings = disk.Settings.from_config(config.dataset)
    layout = folders.scan(settings.format, settings.path)
    return layout, dict(
        channels=settings.channels,
        mask_values=settings.mask_values,
        palette=settings.palette,
        # Read by the layouts that have class ids to count (class folders, mask ids); a YOLO
        # layout checks its ids against its own `names`.
        num_classes=int(config.task.num_classes),
        ignore_index=int(config.dataset.ignore_index),
    )


def _check_path(args) -> tuple[Layout, dict]:
    from jaxdl.data import disk

    if not args.format:
        raise ConfigError(f"give the layout of {args.path}: --format={'|'.join(folders.FORMATS)}")
    if args.channels not in (1, 3):
        raise ConfigError(f"--channels={args.channels} is not valid; give 3 (RGB) or 1 (grayscale)")
    layout = folders.scan(args.format, args.path)
    mask_values, palette = disk.parse_mask_values(args.mask_values), disk.parse_palette(args.palette)
    return layout, dict(channels=args.channels, mask_values=mask_values, palette=palette)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Tools for datasets read from disk.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check",
        help="what an image_folder, yolo or mask_folder dataset holds and what is wrong with it",
        description="Reads every file of an image dataset on disk as training would and lists every problem; "
        "exit status 1 when there is an error. Give PATH with --format, or --config (and --config.key=value "
        "overrides) for the dataset a config trains on.",
    )
    check.add_argument("path", nargs="?", help="the dataset folder (yolo: its data.yaml or the folder holding it)")
    check.add_argument("--format", choices=folders.FORMATS, help="the layout of PATH")
    check.add_argument("--config", help="a config file; checks its config.dataset (name, path, channels, ...)")
    check.add_argument("--channels", type=int, default=3, help="PATH only: 3 (RGB, default) or 1 (grayscale)")
    check.add_argument("--mask_values", default="", help="PATH only: stored:class pairs, e.g. 255:1")
    check.add_argument("--palette", default="", help="PATH only: #rrggbb:class pairs, e.g. '#000000:0,#ff0000:1'")
    check.add_argument("--all", action="store_true", help=f"list every problem (default: {_SHOWN} of each kind)")
    check.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def data_cli(argv: Sequence[str] | None = None) -> int:
    """Entry point of jaxdl-data; returns the exit status (1 when the check found an error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    overrides = [a[len("--config.") :] for a in argv if a.startswith("--config.")]
    args = parser.parse_args([a for a in argv if not a.startswith("--config.")])
    try:
        if args.config and args.path:
            raise ConfigError(f"give PATH or --config, not both (the config's dataset.path is used; got {args.path})")
        if not args.config and not args.path:
            raise ConfigError("give the dataset: PATH --format=FORMAT, or --config=FILE")
        if overrides and not args.config:
            raise ConfigError("--config.key=value overrides need --config")
        layout, options = _check_config(args, overrides) if args.config else _check_path(args)
        report = check_layout(layout, progress=not args.no_progress, **options)
    except UserError as error:
        from jaxdl.cli import report as print_error

        return print_error(f"{PROG} {args.command}", error)
    print(report.text(show_all=args.all), flush=True)
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(data_cli())
