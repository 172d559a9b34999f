"""jaxdl variables -> a PyTorch state dict with the reference library's names: each family's converter run backwards.

    tensors = to_torch(model, variables)     # {"conv1.weight": (64, 3, 7, 7) float32, ...}
    from_torch(model, tensors)               # gives `variables` back

No second mapping per family is written here. A converter only reads torch
tensors (`Importer.tensor`), rearranges them with numpy (transposes, reshapes,
stacks) and writes them to flax paths (`Importer.set`), so it is a permutation
of the elements. `to_torch` runs the family's own converter against a
recording Importer whose tensors are index arrays: each torch element gets a
unique integer id, the converter moves the ids exactly as it would move the
values, and what arrives at flax path P says which torch element each element
of P came from. Inverting that permutation writes the torch tensors.

The ids need each torch tensor's shape before the converter reads it, and only
the flax side is known. The shapes are found by running the converter again:
1. every tensor is "missing" (None); the converter passes None on to `set`
   with the torch name, which tells the flax path each name fills;
2. each name gets a candidate shape, the permutations of its flax shape in
   turn (the flax shape itself first), as zero-memory broadcast arrays; a name
   whose value reaches its path with another shape tries its next candidate.
   A transpose has exactly one shape that fits, so conv (OIHW -> HWIO), dense,
   GRU/LSTM and attention kernels and the YOLO DFL bins are found this way;
3. a converter that reshapes accepts more than one shape (ConvNeXt's
   `layer_scale` is (C, 1, 1) in torch and (C,) here; its converter takes
   both), so its module declares the torch shape in `TORCH_SHAPES`
   ({last name component: flax shape -> torch shape}).
Then one pass with index arrays does the mapping. A value that is not made of
ids (a constant the converter invents) cannot be inverted and is an error, as
is a flax variable no torch name reaches (a new dense head on a pretrained
backbone, `Importer.keep_init`) and a torch element nothing fills.

BatchNorm's `num_batches_tracked` (which the converters skip with
`Importer.ignore`) is written as an int64 scalar holding the training step the
variables come from (0 where none is given), so `load_state_dict(...,
strict=True)` finds it. torchvision's and Ultralytics' BatchNorms use a
momentum, for which torch never reads the count.

A scanned ViT (`scan_layers=True`) is inverted through its looped twin
(`unstack_layers`): the torch names are the same, and the converter's
layer-stacking view drops the None of step 1.
"""

from __future__ import annotations

import importlib
import itertools
import pkgutil
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

import jaxdl.convert as convert
from jaxdl.errors import UserError
from jaxdl.models.vit import ViT, unstack_layers

BATCHES_TRACKED = "num_batches_tracked"


class NotInvertibleError(UserError, ValueError):
    """A model whose variables have no reference names: no converter, or variables the converter does not reach."""


def declared_shapes() -> dict[str, Callable[[tuple[int, ...]], tuple[int, ...]]]:
    """{last torch name component: flax shape -> torch shape}, gathered from every converter module's TORCH_SHAPES."""
    table = {}
    for info in pkgutil.iter_modules(convert.__path__):
        module = importlib.import_module(f"{convert.__name__}.{info.name}")
        table.update(getattr(module, "TORCH_SHAPES", {}))
    return table


def _candidates(flax_shape: tuple[int, ...], declared) -> list[tuple[int, ...]]:
    """Torch shapes to try for a tensor that fills a flax variable of `flax_shape`, most likely first."""
    if declared is not None:
        return [tuple(declared(flax_shape))]
    return list(dict.fromkeys(itertools.permutations(flax_shape)))  # Identity first, duplicates once.


class _Recorder(convert.Importer):
    """An Importer that hands out stand-ins for torch tensors and records where the converter puts them.

    mode 'shape': a name with a known shape gets a zero-memory array of it, one
    without gets None; `routes` collects name -> flax path and `misfits` the
    names whose value arrived mis-shaped. mode 'trace': names get id arrays
    and `set` copies the flax values to the ids' places in `flat`.
    """

    def __init__(self, variables: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]], mode: str):
        super().__init__({}, traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in variables.items()}))
        self.variables, self.shapes, self.mode = variables, shapes, mode
        self.order: list[str] = []  # Torch names in the order the converter reads them.
        self.routes: dict[str, str] = {}
        self.misfits: set[str] = set()
        self.absent: set[str] = set()  # Names whose path the model lacks (e.g. an optional bias): not written.
        self.buffers: list[str] = []
        self.ids: dict[str, tuple[int, int]] = {}  # Name -> (first id, size).
        self.total = sum(int(np.prod(s)) for s in shapes.values())
        self.flat = np.zeros(self.total, np.float32) if mode == "trace" else None
        self.filled = np.zeros(self.total, bool) if mode == "trace" else None
        self.next_id = 0

    def has(self, key: str) -> bool:
        """Every name is there: the export writes the full reference layout (current spellings, biases present)."""
        return True

    def ignore(self, key: str) -> None:
        """A skipped torch buffer: BatchNorm's counter is written; others have no value to write."""
        if key.rsplit(".", 1)[-1] == BATCHES_TRACKED and key not in self.buffers:
            self.buffers.append(key)

    def tensor(self, key: str) -> np.ndarray | None:
        """The stand-in of torch tensor `key` (None while its shape is unknown)."""
        if key not in self.order:
            self.order.append(key)
        shape = self.shapes.get(key)
        if shape is None:
            return None
        if self.mode == "shape":
            return np.broadcast_to(np.int64(0), shape)
        if key not in self.ids:
            self.ids[key] = (self.next_id, int(np.prod(shape)))
            self.next_id += self.ids[key][1]
        start, size = self.ids[key]
        return np.arange(start, start + size, dtype=np.int64).reshape(shape)

    def set(self, path: str, value: np.ndarray | None, key: str) -> None:
        """Records that `key` fills `path`; in 'trace' mode copies the flax values to the torch elements."""
        if path not in self.expected:
            self.absent.add(key)
            return
        self.routes.setdefault(key, path)
        if value is None:
            return
        want = tuple(self.expected[path].shape)
        if tuple(value.shape) != want:
            self.misfits.add(key)
            return
        if self.mode == "trace":
            if value.dtype != np.int64:
                raise NotInvertibleError(f"the converter computes '{path}' from '{key}'; only rearrangements invert")
            self.flat[value.ravel()] = np.asarray(self.variables[path], np.float32).ravel()
            self.filled[value.ravel()] = True
        self.written[path] = value


def _family(model: nn.Module) -> str:
    return type(model).__name__


def to_torch(model: nn.Module, variables: Mapping, *, step: int = 0) -> dict[str, np.ndarray]:
    """The reference state dict of `variables` ({torch name: float32 array}; int64 BatchNorm counters).

    Raises NotInvertibleError (one line naming the family) for a model without
    a converter or one whose variables the converter does not all reach.
    """
    table = convert.converters()
    if type(model) not in table:
        names = ", ".join(sorted(cls.__name__ for cls in table))
        raise NotInvertibleError(
            f"{_family(model)} has no PyTorch converter, so no reference names to export to; converters exist for: "
            f"{names}"
        )
    if isinstance(model, ViT) and model.scan_layers:
        model, variables = model.clone(scan_layers=False), unstack_layers(variables)
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(variables)).items()}
    converter = table[type(model)]
    declared = declared_shapes()
    shapes: dict[str, tuple[int, ...]] = {}
    tried: dict[str, list[tuple[int, ...]]] = {}
    while True:
        recorder = _Recorder(flat, shapes, "shape")
        converter(recorder, model)
        changed = False
        for key in recorder.order:
            if key in recorder.absent or key not in recorder.routes:
                continue
            if key not in tried:
                flax_shape = tuple(flat[recorder.routes[key]].shape)
                tried[key] = _candidates(flax_shape, declared.get(key.rsplit(".", 1)[-1]))
            elif key not in recorder.misfits:
                continue
            if not tried[key]:
                raise NotInvertibleError(
                    f"{_family(model)}: no torch shape of '{key}' gives the shape of '{recorder.routes[key]}'"
                )
            shapes[key] = tried[key].pop(0)
            changed = True
        if not changed:
            break
    unrouted = [key for key in recorder.order if key not in recorder.routes and key not in recorder.absent]
    if unrouted:
        raise NotInvertibleError(f"{_family(model)}: the converter reads '{unrouted[0]}' but writes it nowhere")
    recorder = _Recorder(flat, {k: s for k, s in shapes.items() if k not in recorder.absent}, "trace")
    converter(recorder, model)
    unreached = sorted(set(flat) - set(recorder.written))
    if unreached:
        more = f" and {len(unreached) - 1} more" if len(unreached) > 1 else ""
        raise NotInvertibleError(
            f"{_family(model)}: '{unreached[0]}'{more} have no name in the reference library's state dict"
        )
    tensors: dict[str, np.ndarray] = {}
    for key in recorder.order:
        if key not in recorder.ids:
            continue
        start, size = recorder.ids[key]
        if not recorder.filled[start : start + size].all():
            raise NotInvertibleError(f"{_family(model)}: parts of '{key}' are filled from no variable")
        tensors[key] = recorder.flat[start : start + size].reshape(recorder.shapes[key])
    for key in recorder.buffers:
        tensors[key] = np.array(step, np.int64)
    return tensors


__all__ = ["NotInvertibleError", "declared_shapes", "to_torch"]
