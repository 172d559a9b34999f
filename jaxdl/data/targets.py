"""Target kinds: what `config.dataset.target_kind` names, each a class registered where it is defined.

    @register("mask")
    class Mask(TargetKind): ...

A kind owns everything the pipeline (jaxdl.data.pipeline) does differently for it:

- its keys of `config.dataset` and their checks (`check_config`), and the keys
  that name record features it reads (`feature_keys`);
- the batch keys it makes, each with the kind the key-aware transforms move it
  as (`batch_kinds`, see jaxdl.data.transforms); every kind makes `target`;
- its reader: an instance, built for one split, reads the batch keys from an
  in-memory source's columns (`read_columns`) or from records (`read_records`);
- its check after the transforms (`check_batch`), which sees the record indices;
- whether its class ids must be below `task.num_classes` (`bounded_ids`).

A task names the kinds it takes (`Task.target_kinds`); `jaxdl.tasks.build_task`
refuses the others. So a new kind is its class here (or wherever it is
registered) plus, if its batch keys hold geometry of a new kind, teaching the
geometric transforms to move it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import ml_collections
import numpy as np

from jaxdl.data import objects, transforms
from jaxdl.errors import ConfigError, check_choice

KindT = TypeVar("KindT", bound=type["TargetKind"])

_REGISTRY: dict[str, type[TargetKind]] = {}


def register(name: str) -> Callable[[KindT], KindT]:
    """Class decorator: registers the decorated TargetKind as `config.dataset.target_kind = name`."""

    def decorate(cls: KindT) -> KindT:
        old = _REGISTRY.get(name)
        if old is not None and old is not cls:
            raise ValueError(f"target kind {name!r} is already registered by {old.__module__}.{old.__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def list_kinds() -> list[str]:
    """The sorted names accepted by config.dataset.target_kind."""
    return sorted(_REGISTRY)


def kind_class(config: ml_collections.ConfigDict) -> type[TargetKind]:
    """The kind class a dataset config names; an unknown name is a ConfigError naming the key."""
    check_choice("dataset.target_kind", config.target_kind, tuple(list_kinds()))
    return _REGISTRY[config.target_kind]


class TargetKind:
    """One kind of target: its config keys, the batch keys it makes, how it reads them and checks them.

    The class methods look at a dataset config only; an instance reads split
    `split`, checking class ids against `num_classes` (None: unchecked).
    """

    name: ClassVar[str] = ""  # Set by `register`.
    bounded_ids: ClassVar[bool] = False  # Whether class ids must be below task.num_classes.
    batch_kind: ClassVar[str] = "label"  # The transforms' kind of `target` (see batch_kinds).
    # How to resolve an extra key that this kind makes itself (ends the error message).
    made_key_hint: ClassVar[str] = "remove it from config.dataset.extra_keys"

    @classmethod
    def check_config(cls, config: ml_collections.ConfigDict) -> None:
        """The kind's own keys of `config.dataset`, checked before anything is read."""
        made = cls.batch_kinds(config)
        for key in config.extra_keys:
            if key in made:
                raise ConfigError(
                    f"config.dataset.extra_keys holds '{key}', which target_kind='{cls.name}' makes itself; "
                    + cls.made_key_hint
                )

    @classmethod
    def feature_keys(cls, config: ml_collections.ConfigDict) -> tuple[str, ...]:
        """The keys of `config.dataset` that name record features this kind reads (empty values are unused)."""
        return ("target_key",)

    @classmethod
    def batch_kinds(cls, config: ml_collections.ConfigDict) -> dict[str, str]:
        """The batch keys this kind makes and their kinds for the key-aware transforms."""
        return {"target": cls.batch_kind}

    def __init__(self, config: ml_collections.ConfigDict, split: str, num_classes: int | None = None):
        self.key, self.split, self.dataset = config.target_key, split, config.name
        self.ignore_index = int(config.ignore_index)
        self.num_classes = num_classes if self.bounded_ids else None

    def read_columns(self, source: Any, indices: np.ndarray, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The kind's batch keys at `indices` of an in-memory source (its `column(key)`); `batch` holds the input."""
        return {"target": source.column(self.key)[indices]}

    def read_records(self, records: list[Mapping], indices: np.ndarray, batch: Mapping[str, list]) -> dict:
        """The kind's batch keys from `records`; a list value is stacked (or left a list of shapes that differ)."""
        return {"target": [np.asarray(record[self.key]) for record in records]}

    def check_batch(self, batch: Mapping[str, np.ndarray], indices: np.ndarray) -> None:
        """Checks a batch after the transforms (`indices`: each example's record); a problem is a ConfigError."""

    def where(self, index: int) -> str:
        """Names record `index` of this split in an error message."""
        return f"record {int(index)} of split '{self.split}' of {self.dataset}"


@register("label")
class Label(TargetKind):
    """One target per example (a class id, a value, or a tag per position): read as stored, never moved."""


@register("sequence")
class Sequence(TargetKind):
    """A target per position of a sequence: read as stored, never moved by the geometric transforms."""

    batch_kind = "sequence"


@register("mask")
class Mask(TargetKind):
    """A class id per pixel, [H, W] like its image (tfds' [H, W, 1] loses its channel axis).

    Each record's mask is checked against its image as it is read; ids are
    checked after the transforms (map_mask may rename them): each must be below
    task.num_classes or equal dataset.ignore_index.
    """

    bounded_ids = True
    batch_kind = transforms.MASK

    def read_columns(self, source: Any, indices: np.ndarray, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Masks of equally sized records: the first one checked, all squeezed and widened at once."""
        masks = source.column(self.key)[indices]
        if len(masks):
            self._mask(masks[0], batch["input"][0], indices[0])
        return {"target": self._widen(masks[..., 0] if masks.ndim == 4 and masks.shape[-1] == 1 else masks)}

    def read_records(self, records: list[Mapping], indices: np.ndarray, batch: Mapping[str, list]) -> dict:
        """Each record's mask as [H, W], checked against its own image."""
        masks = (np.asarray(record[self.key]) for record in records)
        return {"target": [self._mask(m, x, i) for m, x, i in zip(masks, batch["input"], indices, strict=True)]}

    def check_batch(self, batch: Mapping[str, np.ndarray], indices: np.ndarray) -> None:
        """Every mask id is below num_classes or the ignore_index."""
        if self.num_classes is None:
            return
        masks = batch["target"]
        bad = ((masks < 0) | (masks >= self.num_classes)) & (masks != self.ignore_index)
        if bad.any():
            b = int(np.argmax(bad.reshape(len(bad), -1).any(axis=1)))
            raise ConfigError(
                f"config.dataset.target_key: {self.where(indices[b])} holds mask id {int(masks[b][bad[b]][0])}, "
                f"not in [0, task.num_classes={self.num_classes}) nor dataset.ignore_index={self.ignore_index}; "
                "remap ids with map_mask(ids=...)"
            )

    def _mask(self, mask: np.ndarray, image: np.ndarray, index) -> np.ndarray:
        """One record's mask as [H, W], checked against its image."""
        if mask.ndim == 3 and mask.shape[-1] == 1:
            mask = mask[..., 0]
        if mask.ndim != 2 or mask.shape != image.shape[:2] or not np.issubdtype(mask.dtype, np.integer):
            raise ConfigError(
                f"config.dataset.target_key: {self.where(index)} has a {mask.dtype} mask of shape {mask.shape}, "
                f"not integer ids of its image's [H, W] {image.shape[:2]}"
            )
        return self._widen(mask)

    def _widen(self, mask: np.ndarray) -> np.ndarray:
        """The mask in a dtype that holds ignore_index (crops write it into padding)."""
        if np.iinfo(mask.dtype).max < self.ignore_index:
            return mask.astype(np.int32)
        return mask


@register("objects")
class Objects(TargetKind):
    """Objects: class ids `target` [B, max_boxes] with pixel `boxes` and `box_valid` (see jaxdl.data.objects)."""

    bounded_ids = True
    made_key_hint = "name the records' boxes in config.dataset.boxes_key (and box_valid_key)"

    @classmethod
    def check_config(cls, config: ml_collections.ConfigDict) -> None:
        """box_format, max_boxes, boxes_key, box_class_offset; boxes are not also extra keys."""
        objects.check_config(config)
        super().check_config(config)

    @classmethod
    def feature_keys(cls, config: ml_collections.ConfigDict) -> tuple[str, ...]:
        """The class ids, the boxes, and the optional valid flags, crowd flags and areas."""
        return ("target_key", "boxes_key", "box_valid_key", "box_crowd_key", "box_area_key")

    @classmethod
    def batch_kinds(cls, config: ml_collections.ConfigDict) -> dict[str, str]:
        """Class ids (and crowd flags) ride in their box slots; boxes, box_valid and areas move with the image."""
        kinds = {"target": transforms.BOX_CLASSES, "boxes": transforms.BOXES, "box_valid": transforms.BOX_VALID}
        if config.box_crowd_key:
            kinds["box_crowd"] = transforms.BOX_CLASSES
        if config.box_area_key:
            kinds["box_area"] = transforms.BOX_AREA
        return kinds

    def __init__(self, config: ml_collections.ConfigDict, split: str, num_classes: int | None = None):
        super().__init__(config, split, num_classes)
        self.reader = objects.ObjectReader(config, split, self.num_classes)

    def read_columns(self, source: Any, indices: np.ndarray, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The objects of equally sized records, checked at once."""
        columns = {key: source.column(key)[indices] for key in self.reader.keys()}
        hw = np.tile(np.asarray(batch["input"].shape[1:3]), (len(indices), 1))
        return self.reader.read_columns(columns, hw, indices)

    def read_records(self, records: list[Mapping], indices: np.ndarray, batch: Mapping[str, list]) -> dict:
        """The objects of each record, padded to max_boxes and checked against its own image."""
        hw = np.array([image.shape[:2] for image in batch["input"]], np.int64).reshape(-1, 2)
        return self.reader.read(records, hw, indices)


__all__ = ["Label", "Mask", "Objects", "Sequence", "TargetKind", "kind_class", "list_kinds", "register"]
