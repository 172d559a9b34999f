"""Object annotations of detection records, read as fixed-size padded arrays and checked.

With `config.dataset.target_kind = "objects"` a batch holds:

- `target` [B, max_boxes] int32: each object's class id in [0, num_classes)
  (the record's id minus `dataset.box_class_offset`), 0 in padding slots;
- `boxes` [B, max_boxes, 4] float32 (x0, y0, x1, y1) in the image's pixels,
  pixel (i, j) covering [j, j+1) x [i, i+1) (see jaxdl.data.transforms);
- `box_valid` [B, max_boxes] uint8: 1 for an object, 0 for a padding slot;
- with `dataset.box_crowd_key` (e.g. `objects/is_crowd`), `box_crowd`
  [B, max_boxes] uint8: 1 for a crowd region (COCO's `iscrowd`). Crowds are
  kept, not dropped: the loss leaves them out, COCO's evaluation treats them
  as regions any number of detections may lie in (jaxdl.detection.coco);
- with `dataset.box_area_key` (e.g. `objects/area`), `box_area`
  [B, max_boxes] float32: the annotation's area in the image's pixels
  squared (COCO's segment area, which decides small / medium / large); the
  transforms scale it with the image (jaxdl.data.transforms, kind
  `box_area`). Without it the evaluation takes w*h of each box as it is
  evaluated.

Records store their objects in one of two ways (`dataset.box_format`):

- `xyxy`: pixel boxes already padded (jaxdl's `shapes`: `boxes` [4, 4] with
  `box_valid`), or a variable number of them;
- `tfds`: tfds' `BBoxFeature`, normalised (ymin, xmin, ymax, xmax) in [0, 1],
  a variable number per record (`voc`, `coco`: `objects/bbox`, `objects/label`).

Keys may be nested with `/` (`objects/label` reads record["objects"]["label"]).
Every record is checked as it is read; a problem is a one-line ConfigError
naming the split, the record and the key to change: a box outside its image
(beyond `_TOLERANCE` pixels), a box of zero or negative width or height, a
class id outside [0, num_classes), or more objects than `max_boxes`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np

from jaxdl.errors import ConfigError, check_at_least, check_choice

BOX_FORMATS = ("xyxy", "tfds")
_TOLERANCE = 1e-3  # Pixels a box may pass the image's edge by (float rounding of stored boxes).


def lookup(record: Mapping, key: str):
    """record[key], where `a/b` also reads record["a"]["b"]."""
    if key in record:
        return record[key]
    head, _, rest = key.partition("/")
    if rest and head in record and isinstance(record[head], Mapping):
        return lookup(record[head], rest)
    raise KeyError(key)


def has_key(record: Mapping, key: str) -> bool:
    """Whether `lookup(record, key)` finds a value."""
    try:
        lookup(record, key)
    except KeyError:
        return False
    return True


def check_config(config: ml_collections.ConfigDict) -> None:
    """The object keys of a dataset config, checked before anything is read."""
    check_choice("dataset.box_format", config.box_format, BOX_FORMATS)
    check_at_least("dataset.max_boxes", config.max_boxes, 1)
    if not config.boxes_key:
        raise ConfigError("config.dataset.boxes_key is empty; name the records' box feature (e.g. objects/bbox)")
    if not isinstance(config.box_class_offset, int) or config.box_class_offset < 0:
        raise ConfigError(
            f"config.dataset.box_class_offset={config.box_class_offset} is not valid; it must be an int >= 0"
        )


class ObjectReader:
    """Turns the objects of records into the padded, checked `target`, `boxes` and `box_valid` of a batch."""

    def __init__(self, config: ml_collections.ConfigDict, split: str, num_classes: int | None):
        self.classes_key, self.boxes_key = config.target_key, config.boxes_key
        self.valid_key, self.crowd_key, self.area_key = config.box_valid_key, config.box_crowd_key, config.box_area_key
        self.format, self.max_boxes = config.box_format, int(config.max_boxes)
        self.offset, self.num_classes = int(config.box_class_offset), num_classes
        self.split, self.name = split, config.name

    def keys(self) -> list[str]:
        """The record features this reader uses."""
        return [k for k in (self.classes_key, self.boxes_key, self.valid_key, self.crowd_key, self.area_key) if k]

    def batch_keys(self) -> dict[str, tuple[str, type]]:
        """The per-box batch keys the config asks for besides target, boxes and box_valid: name -> (feature, dtype)."""
        wanted = {"box_crowd": (self.crowd_key, np.uint8), "box_area": (self.area_key, np.float32)}
        return {name: spec for name, spec in wanted.items() if spec[0]}

    def read(self, records: Sequence[Mapping], image_hw: np.ndarray, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The objects of `records` (their images' [B, 2] heights and widths) as batch arrays."""
        g = self.max_boxes
        out = {
            "target": np.zeros((len(records), g), np.int32),
            "boxes": np.zeros((len(records), g, 4), np.float32),
            "box_valid": np.zeros((len(records), g), np.uint8),
            **{name: np.zeros((len(records), g), dtype) for name, (_, dtype) in self.batch_keys().items()},
        }
        for b, (record, hw, index) in enumerate(zip(records, image_hw, indices, strict=True)):
            classes, boxes, per_box = self._objects(record, hw, int(index))
            n = len(classes)
            out["target"][b, :n], out["boxes"][b, :n], out["box_valid"][b, :n] = classes, boxes, 1
            for name, values in per_box.items():
                out[name][b, :n] = values
        return out

    def read_columns(self, columns: Mapping[str, np.ndarray], image_hw: np.ndarray, indices: np.ndarray) -> dict:
        """As `read`, for stacked columns of equally sized records (an in-memory source): checked at once."""
        boxes = np.asarray(columns[self.boxes_key], np.float32)
        classes = np.asarray(columns[self.classes_key]).astype(np.int64)
        keep = np.ones(classes.shape, bool)
        if self.valid_key:
            keep &= np.asarray(columns[self.valid_key]) != 0
        per_box = {name: np.asarray(columns[key]) for name, (key, _) in self.batch_keys().items()}
        boxes = self._to_pixels(boxes, image_hw[:, None, :])
        self._check(boxes, classes - self.offset, keep, image_hw[:, None, :], indices)
        # Objects first, in their stored order; then padding.
        order = np.argsort(~keep, axis=1, kind="stable")[:, : self.max_boxes]
        keep = np.take_along_axis(keep, order, axis=1)
        pad = self.max_boxes - order.shape[1]
        out = {
            "target": np.where(keep, np.take_along_axis(classes, order, axis=1) - self.offset, 0).astype(np.int32),
            "boxes": np.where(keep[..., None], np.take_along_axis(boxes, order[..., None], axis=1), 0),
            "box_valid": keep.astype(np.uint8),
            **{
                name: np.where(keep, np.take_along_axis(per_box[name], order, axis=1), 0).astype(dtype)
                for name, (_, dtype) in self.batch_keys().items()
            },
        }
        if pad > 0:
            out = {k: np.concatenate([v, np.zeros((len(v), pad, *v.shape[2:]), v.dtype)], 1) for k, v in out.items()}
        out["boxes"] = out["boxes"].astype(np.float32)
        return out

    def _objects(self, record: Mapping, hw: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray, dict]:
        boxes = np.asarray(lookup(record, self.boxes_key), np.float32).reshape(-1, 4)
        classes = np.asarray(lookup(record, self.classes_key)).astype(np.int64).reshape(-1)
        if len(classes) != len(boxes):
            raise ConfigError(
                f"config.dataset.target_key: record {index} of split '{self.split}' of {self.name} has "
                f"{len(classes)} class ids for {len(boxes)} boxes ({self.boxes_key})"
            )
        keep = np.ones(len(classes), bool)
        if self.valid_key:
            keep &= np.asarray(lookup(record, self.valid_key)).reshape(-1) != 0
        per_box = {}
        for name, (key, _) in self.batch_keys().items():
            values = np.asarray(lookup(record, key)).reshape(-1)
            if len(values) != len(boxes):
                raise ConfigError(
                    f"config.dataset.box_{name[4:]}_key: record {index} of split '{self.split}' of {self.name} "
                    f"has {len(values)} values of {key} for {len(boxes)} boxes ({self.boxes_key})"
                )
            per_box[name] = values
        boxes = self._to_pixels(boxes, np.asarray(hw, np.float32)[None, :])
        self._check(boxes[None], classes[None] - self.offset, keep[None], np.asarray(hw)[None, None], [index])
        return classes[keep] - self.offset, boxes[keep], {name: values[keep] for name, values in per_box.items()}

    def _to_pixels(self, boxes: np.ndarray, hw: np.ndarray) -> np.ndarray:
        """Stored boxes [..., 4] as pixel (x0, y0, x1, y1); `hw` broadcasts to [..., 2]."""
        if self.format == "xyxy":
            return boxes
        h, w = hw[..., 0:1].astype(np.float32), hw[..., 1:2].astype(np.float32)
        ymin, xmin, ymax, xmax = np.split(boxes, 4, axis=-1)
        return np.concatenate([xmin * w, ymin * h, xmax * w, ymax * h], axis=-1).astype(np.float32)

    def _check(self, boxes, classes, keep, hw, indices) -> None:
        """Raises a one-line ConfigError for the first bad object of the first bad record."""
        where = f"of split '{self.split}' of {self.name}"
        counts = keep.sum(axis=1)
        if (counts > self.max_boxes).any():
            b = int(np.argmax(counts > self.max_boxes))
            raise ConfigError(
                f"record {int(indices[b])} {where} holds {int(counts[b])} objects, more than "
                f"config.dataset.max_boxes={self.max_boxes}; raise config.dataset.max_boxes"
            )
        h, w = hw[..., 0].astype(np.float32), hw[..., 1].astype(np.float32)
        x0, y0, x1, y1 = np.moveaxis(boxes, -1, 0)
        outside = (x0 < -_TOLERANCE) | (y0 < -_TOLERANCE) | (x1 > w + _TOLERANCE) | (y1 > h + _TOLERANCE)
        problems = [
            (keep & ~np.isfinite(boxes).all(axis=-1), "is not finite"),
            (keep & outside, "lies outside its {w}x{h} image"),
            (keep & ((x1 <= x0) | (y1 <= y0)), "has zero or negative width or height"),
        ]
        if self.num_classes is not None:
            problems.append((keep & ((classes < 0) | (classes >= self.num_classes)), "class"))
        for bad, what in problems:
            if not bad.any():
                continue
            b, j = np.unravel_index(int(np.argmax(bad)), bad.shape)
            image_h, image_w = (int(v) for v in np.broadcast_to(hw, (*bad.shape, 2))[b, j])
            if what == "class":
                raise ConfigError(
                    f"config.dataset.target_key: record {int(indices[b])} {where} has object {j} of class "
                    f"{int(classes[b, j]) + self.offset} (after box_class_offset={self.offset}: "
                    f"{int(classes[b, j])}), not in [0, task.num_classes={self.num_classes})"
                )
            box = ", ".join(f"{v:g}" for v in boxes[b, j])
            raise ConfigError(
                f"config.dataset.boxes_key: record {int(indices[b])} {where} has box {j} ({box}) that "
                + what.format(w=image_w, h=image_h)
            )
