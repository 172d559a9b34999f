"""Import PyTorch state dicts (torchvision naming) into jaxdl variables, without torch.

A state dict comes from a `.safetensors` or `.npz` file, from a PyTorch
checkpoint (`.pth`, `.pt`, `.bin`, `.ckpt`: read by `torch_files` without torch and
without running the file's code), or from a mapping of arrays (numpy arrays, or
anything with `.numpy()` such as torch tensors). A state dict whose every name
starts with 'module.' (saved from a DistributedDataParallel wrapper) is read
without that prefix. Each
model family has a converter in `jaxdl/convert/<family>.py` that walks the
torch names and writes flax variables through an `Importer`, which transposes
the layouts (OIHW -> HWIO, out x in -> in x out), checks every shape against the
model's own abstract variables, and reports every missing, extra or mis-shaped
tensor by name.

    variables = jaxdl.convert.from_torch("resnet18", "resnet18.safetensors", num_outputs=1000)
    logits = model.apply(variables, images_nhwc, train=False)
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import numpy as np
from flax import traverse_util

from jaxdl import models
from jaxdl.convert import torch_files
from jaxdl.convert.registry import register, registered
from jaxdl.errors import StateDictError

log = logging.getLogger(__name__)


# The file suffixes load_state_dict reads.
SUFFIXES = (".safetensors", ".npz", *torch_files.SUFFIXES)


def load_state_dict(source: str | Path | Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A flat {torch name: numpy array} from a .safetensors/.npz/.pth/.pt/.bin/.ckpt path or a mapping."""
    return _without_ddp_prefix(_load(source))


def _load(source: str | Path | Mapping[str, Any]) -> dict[str, np.ndarray]:
    if isinstance(source, Mapping):
        return {str(k): _to_numpy(v) for k, v in source.items()}
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"no state dict at {path}")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return dict(load_file(str(path)))
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    if path.suffix in torch_files.SUFFIXES:
        return torch_files.read_state_dict(path)
    raise ValueError(f"{path}: expected a state dict file ending in {', '.join(SUFFIXES)}")


def _without_ddp_prefix(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """DistributedDataParallel's state dict names everything 'module.<name>': read as '<name>'."""
    prefix = "module."
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # A torch tensor; torch itself is never imported here.
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def converters() -> dict[type, Callable]:
    """Model class -> converter, after importing every module of this package (each registers its own)."""
    # Imported on first use rather than with the package: the converter modules
    # import `Importer` from here.
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return registered()


class Importer:
    """Writes torch tensors into a copy of a model's variable tree, checking names and shapes.

    Paths are '/'-joined flax paths starting with the collection, for example
    'params/layer1_0/conv1/kernel'. `finish` raises if any torch tensor was not
    used or any flax variable was not written.
    """

    def __init__(self, state_dict: Mapping[str, np.ndarray], template: Mapping, skip_mismatched: bool = False):
        self.tensors = dict(state_dict)
        self.unused = set(self.tensors)
        self.expected = {"/".join(k): v for k, v in traverse_util.flatten_dict(template).items()}
        self.written: dict[str, np.ndarray] = {}
        self.skip_mismatched = skip_mismatched
        self.skipped: list[str] = []
        self.kept: list[str] = []
        self.errors: list[str] = []

    def tensor(self, key: str) -> np.ndarray | None:
        """The torch tensor `key`, marked as used; records an error if it is missing."""
        if key not in self.tensors:
            self.errors.append(f"missing tensor '{key}'")
            return None
        self.unused.discard(key)
        return self.tensors[key]

    def has(self, key: str) -> bool:
        """Whether the state dict holds `key`."""
        return key in self.tensors

    def ignore(self, key: str) -> None:
        """Marks a torch buffer that has no flax counterpart (e.g. num_batches_tracked) as used."""
        self.unused.discard(key)

    def ignore_prefix(self, prefix: str) -> None:
        """Marks every tensor whose name starts with `prefix` as used, if any (a head a features_only model lacks)."""
        for key in [k for k in self.tensors if k.startswith(prefix)]:
            self.ignore(key)

    def keep_init(self, path: str) -> None:
        """Leaves the model's variables under flax `path` (e.g. 'params/head') out of the result, unfilled.

        For layers the reference model does not have (a new head on a pretrained
        backbone): the caller keeps their fresh init, as `config.init_from` does.
        """
        self.kept += [name for name in self.expected if name.startswith(path + "/")]

    def scoped(self, path: str, key: str) -> Importer:
        """A view for a model nested in another: torch names under `key` (e.g. "encoder.") fill module `path`.

        A family's converter given the view fills the submodule, e.g. `convert_resnet(
        importer.scoped("encoder", "encoder."), backbone)` writes 'encoder.conv1.weight'
        to 'params/encoder/conv1/kernel'.
        """
        return _ScopedImporter(self, path, key)

    def set(self, path: str, value: np.ndarray | None, key: str) -> None:
        """Writes `value` (from torch tensor `key`) at flax `path`, checking its shape."""
        if value is None:
            return
        if path not in self.expected:
            self.errors.append(f"tensor '{key}' maps to '{path}', which the model does not have")
            return
        want = tuple(self.expected[path].shape)
        if tuple(value.shape) != want:
            if self.skip_mismatched:
                self.skipped.append(path)
                return
            self.errors.append(f"tensor '{key}' has shape {tuple(value.shape)}; the model expects {want} at '{path}'")
            return
        # A copy: the imported variables must not share memory with the caller's torch tensors.
        self.written[path] = np.array(value, dtype=np.float32, copy=True)

    # Layout helpers: torch name prefix -> flax path prefix.
    def conv(self, path: str, key: str, bias: bool | None = None) -> None:
        """Conv2d: weight (O, I/groups, kh, kw) -> kernel (kh, kw, I/groups, O); optional bias."""
        weight = self.tensor(f"{key}.weight")
        self.set(f"{path}/kernel", None if weight is None else weight.transpose(2, 3, 1, 0), f"{key}.weight")
        if bias or (bias is None and self.has(f"{key}.bias")):
            self.set(f"{path}/bias", self.tensor(f"{key}.bias"), f"{key}.bias")

    def dense(self, path: str, key: str, bias: bool | None = None) -> None:
        """Linear: weight (out, in) -> kernel (in, out); optional bias."""
        weight = self.tensor(f"{key}.weight")
        self.set(f"{path}/kernel", None if weight is None else weight.T, f"{key}.weight")
        if bias or (bias is None and self.has(f"{key}.bias")):
            self.set(f"{path}/bias", self.tensor(f"{key}.bias"), f"{key}.bias")

    def batch_norm(self, path: str, key: str) -> None:
        """BatchNorm2d: weight/bias -> params scale/bias; running stats -> batch_stats mean/var.

        `path` is relative to the collections, e.g. 'layer1_0/bn1'.
        """
        self.set(f"params/{path}/scale", self.tensor(f"{key}.weight"), f"{key}.weight")
        self.set(f"params/{path}/bias", self.tensor(f"{key}.bias"), f"{key}.bias")
        self.set(f"batch_stats/{path}/mean", self.tensor(f"{key}.running_mean"), f"{key}.running_mean")
        self.set(f"batch_stats/{path}/var", self.tensor(f"{key}.running_var"), f"{key}.running_var")
        self.ignore(f"{key}.num_batches_tracked")

    def layer_norm(self, path: str, key: str) -> None:
        """LayerNorm: weight/bias -> scale/bias (`path` includes the collection)."""
        self.set(f"{path}/scale", self.tensor(f"{key}.weight"), f"{key}.weight")
        self.set(f"{path}/bias", self.tensor(f"{key}.bias"), f"{key}.bias")

    def finish(self) -> dict:
        """The nested variables; raises StateDictError naming every problem found."""
        errors = list(self.errors)
        errors += [f"unexpected tensor '{k}'" for k in sorted(self.unused)]
        unwritten = sorted(set(self.expected) - set(self.written) - set(self.skipped) - set(self.kept))
        errors += [f"model variable '{p}' was not filled from the state dict" for p in unwritten]
        if errors:
            shown = "; ".join(errors[:20]) + (f"; ... ({len(errors) - 20} more)" if len(errors) > 20 else "")
            raise StateDictError(f"state dict does not fit the model: {shown}")
        if self.skipped:
            log.info("kept the model's own init for mismatched %s", ", ".join(self.skipped))
        return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in self.written.items()})


class _ScopedImporter(Importer):
    """An `Importer` over the torch names under one prefix, writing under one flax submodule of its parent."""

    def __init__(self, parent: Importer, path: str, key: str):
        """A view of `parent`, which keeps all the state (used tensors, written variables, errors)."""
        self.parent, self.path, self.key = parent, path, key

    @property
    def tensors(self) -> dict[str, np.ndarray]:  # type: ignore[override]
        """The parent's tensors under the prefix, named without it."""
        return {k[len(self.key) :]: v for k, v in self.parent.tensors.items() if k.startswith(self.key)}

    def _path(self, path: str) -> str:
        collection, _, rest = path.partition("/")
        return f"{collection}/{self.path}/{rest}"

    def tensor(self, key: str) -> np.ndarray | None:
        """The parent's tensor `<prefix><key>`."""
        return self.parent.tensor(self.key + key)

    def has(self, key: str) -> bool:
        """Whether the parent holds `<prefix><key>`."""
        return self.parent.has(self.key + key)

    def ignore(self, key: str) -> None:
        """Marks the parent's `<prefix><key>` as used."""
        self.parent.ignore(self.key + key)

    def keep_init(self, path: str) -> None:
        """The parent's `keep_init` of `<collection>/<submodule>/<rest of path>`."""
        self.parent.keep_init(self._path(path))

    def set(self, path: str, value: np.ndarray | None, key: str) -> None:
        """Writes at `<collection>/<submodule>/<rest of path>` in the parent."""
        self.parent.set(self._path(path), value, self.key + key)

    def finish(self) -> dict:
        """A view has nothing of its own to finish; the parent checks everything."""
        raise TypeError("finish the Importer this view was made from")


def from_torch(
    model: nn.Module | str,
    state_dict: str | Path | Mapping[str, Any],
    *,
    input_shape: tuple[int, ...] | None = None,
    skip_mismatched: bool = False,
    **model_kwargs: Any,
) -> dict:
    """jaxdl variables ({'params': ..., 'batch_stats': ...}) from a torchvision-named state dict.

    Args:
      model: a jaxdl model, or a registered name built with `model_kwargs`.
      state_dict: a .safetensors/.npz/.pth/.pt/.bin/.ckpt path or a mapping of arrays.
      input_shape: an input shape the model accepts (default: one image at the
        model's `image_size`, else 224x224).
      skip_mismatched: leave variables whose shape differs (a new head) out of
        the result instead of raising; the caller keeps its own init for them.
    """
    if isinstance(model, str):
        model = models.create_model(model, **model_kwargs)
    table = converters()
    if type(model) not in table:
        names = ", ".join(sorted(cls.__name__ for cls in table)) or "none"
        raise ValueError(f"no PyTorch converter for {type(model).__name__}; converters exist for: {names}")
    template = models.abstract_variables(model, input_shape or models.default_input_shape(model))
    importer = Importer(load_state_dict(state_dict), template, skip_mismatched=skip_mismatched)
    table[type(model)](importer, model)
    return importer.finish()


__all__ = ["SUFFIXES", "Importer", "StateDictError", "converters", "from_torch", "load_state_dict", "register"]
