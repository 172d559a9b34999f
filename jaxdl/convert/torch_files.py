"""PyTorch checkpoints (`.pth`, `.pt`, `.bin`, `.ckpt`) read without torch and without running the file's code.

`torch.save` (torch >= 1.6) writes a zip archive with one top folder:
`<top>/data.pkl` is a pickle of the saved object, and each tensor's bytes are the
record `<top>/data/<key>`. In the pickle a tensor is a call
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
hooks[, metadata])` whose storage is a persistent id `('storage', torch.FloatStorage,
key, location, numel)`; the `byteorder` record says how the numbers were written.

A pickle is a small program: GLOBAL imports any name and REDUCE calls it, which
is how a checkpoint runs `os.system` inside `torch.load(weights_only=False)`.
This reader unpickles with a `find_class` that imports nothing (Python's pickle
docs, "Restricting Globals"; the allow-list idea of torch's weights_only loader):

- the tensor rebuild functions and the storage types resolve to jaxdl's own code,
  which only records (storage key, dtype, offset, shape, strides);
- `collections.OrderedDict`, `set`, `frozenset`, `slice`, `complex` resolve to the
  builtins themselves, which only build containers and numbers, and
  `collections.defaultdict`, `torch.Size`, `_codecs.encode` (protocol 2's bytes)
  and `copyreg._reconstructor` to small functions of this module that do the same
  for data and placeholders only;
- every other name becomes an inert placeholder class that records its module and
  name and is never imported. Pickle rebuilds ordinary objects (an Ultralytics
  model is a tree of nn.Module objects) with NEWOBJ, then BUILD with the object's
  `__dict__`: on a placeholder these only record the arguments and the state.
- Calling a placeholder (REDUCE, what `__reduce__` uses to call a function) is
  refused with UnsafePickleError, before anything else is read. The exception is a
  short list of data types that pickle rebuilds by a call (`_DATA_TYPES`: numpy
  scalars, paths, namespaces, dates, torch.device): their calls also give a
  placeholder that records the arguments, and nothing is called.

Then the state dict is taken from what was loaded, and only its tensors' bytes
are read (an Ultralytics training checkpoint's optimizer state is never read):

- a mapping whose values are all tensors is the state dict;
- a placeholder nn.Module (its state has `_parameters`, `_buffers`, `_modules`)
  gives the names `Module.state_dict()` gives: parameters, persistent buffers, then
  each child under `<child>.`;
- a dict is a checkpoint wrapper, read under its first key of `WRAPPER_KEYS` whose
  value is not None: 'state_dict' (Lightning, timm), 'model_state_dict' (PyTorch's
  checkpoint tutorial), 'model' (torchvision's reference scripts, Ultralytics),
  'ema' (an Ultralytics training checkpoint, whose 'model' is None).

Each tensor is cut from its storage with its offset, shape and strides (so views,
transposes and tensors sharing a storage come out as torch shows them; a view that
reaches past its storage is an error, and BUILD cannot rewrite a checked record), with its
`neg`/`conj` bits applied; dtypes without a storage class (uint16, float8) come
through `_rebuild_tensor_v3`, which names the dtype. float16, bfloat16 and float8
become float32 (exact; jaxdl's variables are float32 and numpy has no bfloat16
arithmetic); other dtypes stay.

A legacy file (torch < 1.6, or `_use_new_zipfile_serialization=False`) and a
TorchScript archive are one-line errors that say how to re-save the weights.
"""

from __future__ import annotations

import _compat_pickle
import collections
import dataclasses
import pickle
import sys
import tarfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from jaxdl.errors import UserError, first_line

# File suffixes read as torch.save checkpoints (HF transformers' pytorch_model.bin and Lightning's .ckpt included).
SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Where a checkpoint dict keeps the state dict, in the order tried.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "ema")


class TorchFileError(UserError, ValueError):
    """A file that is not a readable torch.save checkpoint or holds no state dict; names the file."""


class UnsafePickleError(TorchFileError):
    """A checkpoint whose pickle asks to call a function jaxdl does not run; names the file and the function."""


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """{name: numpy array} of the state dict in a torch.save zip checkpoint, without torch or running its code.

    Raises:
      UnsafePickleError: the pickle asks to call something other than tensor rebuilding.
      TorchFileError: a legacy (pre-1.6) or TorchScript file, a damaged archive, or
        no state dict in it; one line naming the file.
    """
    path = Path(path)
    with _open_archive(path) as archive:
        loaded = archive.unpickle()
        tensors = _find_state_dict(loaded, path)
        return {name: _widen(archive.array(tensor)) for name, tensor in tensors.items()}


# ----------------------------------------------------------------------------
# What the pickle builds: records of storages and tensors, and placeholders.


def _no_build(record, state) -> None:
    """The records' __setstate__, in place of the dataclass's own: a BUILD must not rewrite a checked record."""
    raise _Malformed(f"the pickle sets the state of a {type(record).__name__[1:]} record")


@dataclasses.dataclass(frozen=True, slots=True)
class _StorageType:
    """torch.FloatStorage and its kind: the element dtype of a storage."""

    name: str
    dtype: np.dtype

    __setstate__ = _no_build


@dataclasses.dataclass(frozen=True, slots=True)
class _Storage:
    """A persistent id: the record `data/<key>` holds `numel` elements of `dtype`."""

    key: str
    dtype: np.dtype
    numel: int

    __setstate__ = _no_build


@dataclasses.dataclass(frozen=True, slots=True)
class _TorchDtype:
    """A torch dtype (torch.uint16) named in the pickle: its numpy dtype."""

    name: str
    dtype: np.dtype

    __setstate__ = _no_build


@dataclasses.dataclass(frozen=True, slots=True)
class _Tensor:
    """A tensor as torch would rebuild it: a strided view (in elements of `dtype`) of a storage, bytes not yet read."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: np.dtype
    neg: bool = False
    conj: bool = False

    __setstate__ = _no_build


class _Refused(Exception):
    """Raised inside the unpickler when the pickle asks to call `name`; becomes an UnsafePickleError."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class _Malformed(Exception):
    """Raised inside the unpickler for arguments torch itself would not have written."""


class _PlaceholderType(type):
    """The metaclass of placeholders: calling one (REDUCE, INST) is refused unless it is a data type."""

    def __call__(cls, *args, **kwargs):
        if not cls.data_type:
            raise _Refused(f"{cls.module}.{cls.qualname}")
        return cls.__new__(cls, *args, **kwargs)

    def __repr__(cls) -> str:
        return f"<placeholder {cls.module}.{cls.qualname}>"


class Placeholder(metaclass=_PlaceholderType):
    """An object of a class that was never imported: the arguments and state pickle gave it, nothing run.

    `args`/`kwargs` come from NEWOBJ (or a data type's call), `state` from BUILD
    (an nn.Module's `__dict__`), `items`/`list` from SETITEMS/APPENDS (dict and list
    subclasses).
    """

    module = ""
    qualname = ""
    data_type = False

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.__dict__.update(args=args, kwargs=kwargs, state=None, items={}, list=[])
        return obj

    def __setstate__(self, state) -> None:
        self.__dict__["state"] = state

    def __setitem__(self, key, value) -> None:
        self.__dict__["items"][key] = value

    def append(self, value) -> None:
        self.__dict__["list"].append(value)

    def extend(self, values) -> None:
        self.__dict__["list"].extend(values)

    def __repr__(self) -> str:
        return f"<{type(self).module}.{type(self).qualname} placeholder>"


# Data types pickle rebuilds by a call (their __reduce__): read as placeholders holding the arguments.
_DATA_TYPES = frozenset(
    {
        "numpy.dtype",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar",
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "pathlib.Path",
        "pathlib.PosixPath",
        "pathlib.WindowsPath",
        "pathlib.PurePosixPath",
        "pathlib.PureWindowsPath",
        "types.SimpleNamespace",
        "argparse.Namespace",
        # Ultralytics' training arguments on a trainer checkpoint's model (a SimpleNamespace subclass).
        "ultralytics.utils.IterableSimpleNamespace",
        "datetime.date",
        "datetime.datetime",
        "datetime.time",
        "datetime.timedelta",
        "datetime.timezone",
        "torch.device",
    }
)

# Element types of torch's storage classes (torch/storage.py's _dtype_to_storage_type_map, inverted).
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
    "UntypedStorage": np.dtype(np.uint8),
}

# torch dtypes by the name a pickle gives them (a dtype pickles as `torch.<name>`), for _rebuild_tensor_v3.
_TORCH_DTYPES = {
    **{name: np.dtype(name) for name in ("float64", "float32", "float16", "int64", "int32", "int16", "int8")},
    **{name: np.dtype(name) for name in ("uint8", "uint16", "uint32", "uint64", "bool", "complex64", "complex128")},
    **{name: np.dtype(getattr(ml_dtypes, name)) for name in ("bfloat16", "float8_e4m3fn", "float8_e5m2")},
    **{name: np.dtype(getattr(ml_dtypes, name)) for name in ("float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu")},
}


def _python3_name(module: str, name: str) -> tuple[str, str]:
    """A Python 2 name as Python 3 spells it: protocol 2 writes `__builtin__.set` and `commands.Popen`.

    pickle's own find_class does this (with the standard library's table); this reader replaces it.
    """
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _ints(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise _Malformed(f"a tensor's {what} is {value!r}, not a tuple of non-negative ints")
    return tuple(value)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> _Tensor:
    """torch._utils._rebuild_tensor: a record, nothing read yet."""
    if not isinstance(storage, _Storage):
        raise _Malformed(f"a tensor's storage is {storage!r}, not a storage of the archive")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise _Malformed(f"a tensor's storage offset is {storage_offset!r}")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    if len(shape) != len(strides):
        raise _Malformed(f"a tensor has size {shape} but stride {strides}")
    return _Tensor(storage, storage_offset, shape, strides, storage.dtype)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    """torch._utils._rebuild_tensor_v2: `metadata` may set the lazy negation and conjugation bits."""
    tensor = _rebuild_tensor(storage, storage_offset, size, stride)
    if metadata:
        if not isinstance(metadata, dict) or not set(metadata) <= {"neg", "conj"}:
            raise _Malformed(f"a tensor's metadata {metadata!r} is not torch's neg/conj bits")
        tensor = dataclasses.replace(tensor, neg=bool(metadata.get("neg")), conj=bool(metadata.get("conj")))
    return tensor


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    """torch._utils._rebuild_tensor_v3 (dtypes without a storage class, e.g. uint16, float8): bytes read as `dtype`."""
    if not isinstance(dtype, _TorchDtype):
        raise _Malformed(f"a tensor's dtype is {dtype!r}, which jaxdl does not read")
    tensor = _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata)
    return dataclasses.replace(tensor, dtype=dtype.dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    """torch._utils._rebuild_parameter(_with_state): the parameter's tensor (its Python state is not needed)."""
    if not isinstance(data, _Tensor):
        raise _Malformed(f"a parameter's data is {data!r}, not a tensor")
    return data


_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter)


def _rebuild_from_type_v2(func, new_type, args, state):
    """torch._tensor._rebuild_from_type_v2 (a tensor subclass or a tensor with attributes): rebuilt by `func`."""
    if func not in _REBUILDERS or not isinstance(args, tuple):
        name = f"{func.module}.{func.qualname}" if isinstance(func, _PlaceholderType) else repr(func)
        raise _Refused(f"{name} (through torch._tensor._rebuild_from_type_v2)")
    return func(*args)


def _reconstructor(cls, base, state):
    """copyreg._reconstructor (objects in protocol 0/1 pickles): a placeholder of `cls`, nothing called."""
    if not (isinstance(cls, type) and issubclass(cls, Placeholder)):
        raise _Refused(f"copyreg._reconstructor of {cls!r}")
    return cls.__new__(cls, state)


def _encode(text, encoding="utf-8"):
    """_codecs.encode, as protocol 2 pickles write bytes: only str to latin-1."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


def _size(sizes=()):
    """torch.Size: a tuple of ints."""
    return _ints(sizes, "torch.Size")


def _defaultdict(default_factory=None, *args):
    """collections.defaultdict: a plain dict (the factory is a placeholder and is never called)."""
    return dict(*args)


def _unsupported(name: str):
    def rebuild(*args):
        raise _Malformed(f"it holds a tensor rebuilt by {name} (quantized, sparse, nested or device-only)")

    return rebuild


_ALLOWED = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch.Size": _size,
    "collections.OrderedDict": collections.OrderedDict,
    "collections.defaultdict": _defaultdict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.slice": slice,
    "builtins.complex": complex,
    "copyreg._reconstructor": _reconstructor,
    "_codecs.encode": _encode,
}


class _Unpickler(pickle.Unpickler):
    """pickle's C unpickler with jaxdl's find_class (imports nothing) and torch's storage persistent ids."""

    def __init__(self, file, storages: dict[str, _Storage]):
        super().__init__(file)
        self.storages = storages
        self.placeholders: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        module, name = _python3_name(module, name)
        full = f"{module}.{name}"
        if full in _ALLOWED:
            return _ALLOWED[full]
        if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return _TorchDtype(name, _TORCH_DTYPES[name])
        if module == "torch._utils" and name.startswith("_rebuild"):
            return _unsupported(full)
        if full not in self.placeholders:
            attributes = {"module": module, "qualname": name, "data_type": full in _DATA_TYPES}
            self.placeholders[full] = _PlaceholderType(name.rpartition(".")[2] or "_", (Placeholder,), attributes)
        return self.placeholders[full]

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise _Malformed(f"persistent id {pid!r} is not a torch storage")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise _Malformed(f"a storage of type {storage_type!r}, which jaxdl does not read")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise _Malformed(f"storage id {pid!r}")
        storage = self.storages.setdefault(key, _Storage(key, storage_type.dtype, numel))
        if storage.dtype != storage_type.dtype:  # torch.save refuses to write this.
            raise _Malformed(f"storage {key} is read as both {storage.dtype} and {storage_type.dtype}")
        return storage


# ----------------------------------------------------------------------------
# The archive.


class _Archive:
    """An open torch.save zip: the pickle, and the storages' bytes read on demand (each once)."""

    def __init__(self, path: Path, zip_file: zipfile.ZipFile, top: str):
        self.path, self.zip, self.top = path, zip_file, top
        names = set(zip_file.namelist())
        order = zip_file.read(f"{top}byteorder").decode("ascii") if f"{top}byteorder" in names else "little"
        if order not in ("little", "big"):
            raise TorchFileError(f"{path}: its byteorder record says '{order}'; torch writes 'little' or 'big'")
        self.swap = order != sys.byteorder
        self.storages: dict[str, _Storage] = {}
        self.bytes: dict[str, np.ndarray] = {}
        self.arrays: dict[tuple[str, np.dtype], np.ndarray] = {}

    def __enter__(self) -> _Archive:
        return self

    def __exit__(self, *exc) -> None:
        self.zip.close()

    def unpickle(self) -> Any:
        with self.zip.open(f"{self.top}data.pkl") as file:
            unpickler = _Unpickler(file, self.storages)
            try:
                return unpickler.load()
            except _Refused as refused:
                raise UnsafePickleError(
                    f"{self.path}: its pickle asks to call {refused.name}, and jaxdl runs no code from a checkpoint "
                    "(it reads tensors, containers and recorded objects only); if you trust the file, re-save its "
                    "weights with torch: torch.save(model.state_dict(), 'weights.pth')"
                ) from None
            except _Malformed as error:
                raise TorchFileError(f"{self.path}: not a checkpoint jaxdl can read: {error}") from None
            except Exception as error:  # Anything else the pickle does wrong is about this file.
                raise TorchFileError(
                    f"{self.path}: its data.pkl is not a readable pickle ({type(error).__name__}: {first_line(error)})"
                ) from None

    def _elements(self, storage: _Storage, dtype: np.dtype) -> np.ndarray:
        """The storage's bytes as one flat array of `dtype`, in this machine's byte order (read once)."""
        if storage.key not in self.bytes:
            name = f"{self.top}data/{storage.key}"
            nbytes = storage.numel * storage.dtype.itemsize
            try:
                info = self.zip.getinfo(name)
            except KeyError:
                raise TorchFileError(f"{self.path}: the archive has no record '{name}' for a tensor") from None
            if info.file_size < nbytes:
                raise TorchFileError(
                    f"{self.path}: record '{name}' holds {info.file_size} bytes; its tensor needs {nbytes}"
                )
            with self.zip.open(info) as file:
                self.bytes[storage.key] = np.frombuffer(file.read(nbytes), np.uint8)
        if (storage.key, dtype) not in self.arrays:
            data = self.bytes[storage.key]
            array = data[: data.size - data.size % dtype.itemsize].view(dtype)
            if self.swap and dtype.itemsize > 1:
                # Complex numbers swap each of their two parts.
                part = dtype.itemsize // (2 if dtype.kind == "c" else 1)
                array = array.view(f"u{part}").byteswap().view(dtype)
            self.arrays[storage.key, dtype] = array
        return self.arrays[storage.key, dtype]

    def array(self, tensor: _Tensor) -> np.ndarray:
        """The tensor's values: its strided view of the storage, copied into a contiguous array."""
        storage = self._elements(tensor.storage, tensor.dtype)
        try:  # Checked again (as at rebuild): as_strided trusts them.
            for value, what in ((tensor.shape, "size"), (tensor.stride, "stride"), ((tensor.offset,), "offset")):
                _ints(value, what)
        except _Malformed as error:
            raise TorchFileError(f"{self.path}: not a checkpoint jaxdl can read: {error}") from None
        if 0 in tensor.shape:
            return np.zeros(tensor.shape, storage.dtype)
        last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride, strict=True))
        if last >= storage.size:  # as_strided would read past the storage.
            raise TorchFileError(
                f"{self.path}: a tensor of size {tensor.shape}, stride {tensor.stride} and offset {tensor.offset} "
                f"reaches past its storage '{tensor.storage.key}' of {storage.size} elements"
            )
        # As opaque items of the same size: as_strided goes through __array_interface__, which knows no float8.
        item = storage.dtype.itemsize
        items = storage.view(np.dtype((np.void, item)))
        view = np.lib.stride_tricks.as_strided(
            items[tensor.offset :], tensor.shape, [s * item for s in tensor.stride], writeable=False
        )
        array = np.array(view, order="C", copy=True).view(storage.dtype)
        if tensor.neg:
            array = np.negative(array)
        if tensor.conj:
            array = np.conj(array)
        return array


def _open_archive(path: Path) -> _Archive:
    """The zip archive torch.save wrote, or a one-line TorchFileError saying what the file is instead."""
    if not path.is_file():
        raise TorchFileError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        with path.open("rb") as file:
            head = file.read(2)
        if head[:1] == b"\x80" or tarfile.is_tarfile(path):
            raise TorchFileError(
                f"{path}: written in torch's legacy format (before torch 1.6, or _use_new_zipfile_serialization="
                f"False), which jaxdl does not read; re-save it with torch >= 1.6: "
                f"torch.save(torch.load('{path.name}', weights_only=True), '{path.stem}_zip{path.suffix}')"
            )
        raise TorchFileError(f"{path}: not a PyTorch checkpoint (torch.save writes a zip archive)")
    try:
        zip_file = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise TorchFileError(f"{path}: not a readable zip archive ({first_line(error)})") from None
    names = zip_file.namelist()
    tops = sorted({name[: -len("data.pkl")] for name in names if name.endswith("data.pkl") and name.count("/") == 1})
    if any(name.endswith(("/constants.pkl", "/code/")) or "/code/" in name for name in names):
        zip_file.close()
        raise TorchFileError(
            f"{path}: a TorchScript archive (torch.jit.save); save the weights with torch.save(model.state_dict(), ...)"
        )
    if len(tops) != 1:
        zip_file.close()
        raise TorchFileError(f"{path}: a zip archive without one <folder>/data.pkl, so not written by torch.save")
    return _Archive(path, zip_file, tops[0])


# ----------------------------------------------------------------------------
# The state dict in what was loaded.


def _is_module(obj: Any) -> bool:
    """A placeholder nn.Module: its pickled __dict__ has the three registries of torch.nn.Module."""
    state = obj.state if isinstance(obj, Placeholder) else None
    return isinstance(state, dict) and all(
        isinstance(state.get(k), dict) for k in ("_parameters", "_buffers", "_modules")
    )


def _module_state_dict(module: Placeholder, path: Path) -> dict[str, _Tensor]:
    """The names and tensors torch's Module.state_dict() gives, from the recorded __dict__ of each module."""
    out: dict[str, _Tensor] = {}

    def visit(obj: Placeholder, prefix: str, parents: tuple[int, ...]) -> None:
        if id(obj) in parents:
            raise TorchFileError(f"{path}: module '{prefix[:-1]}' contains itself")
        state = obj.state
        transient = state.get("_non_persistent_buffers_set") or set()
        entries = [*state["_parameters"].items()]
        entries += [(k, v) for k, v in state["_buffers"].items() if k not in transient]
        for name, value in entries:
            if value is None:
                continue
            if not isinstance(value, _Tensor):
                raise TorchFileError(f"{path}: '{prefix}{name}' of a pickled module is {value!r}, not a tensor")
            out[prefix + name] = value
        for name, child in state["_modules"].items():
            if child is None:
                continue
            if not _is_module(child):
                raise TorchFileError(f"{path}: submodule '{prefix}{name}' is {child!r}, not a pickled nn.Module")
            visit(child, f"{prefix}{name}.", (*parents, id(obj)))

    visit(module, "", ())
    return out


def _tensor_mapping(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, _Tensor) for v in obj.values())


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = ", ".join(repr(k) for k in list(obj)[:8]) + (", ..." if len(obj) > 8 else "")
        return f"a dict with keys {keys}" if obj else "an empty dict"
    return repr(obj) if isinstance(obj, Placeholder) else f"a {type(obj).__name__}"


def _find_state_dict(obj: Any, path: Path) -> dict[str, _Tensor]:
    """The state dict in the loaded object (see the module docstring for the rule)."""
    if _tensor_mapping(obj):
        tensors = dict(obj)
    elif _is_module(obj):
        tensors = _module_state_dict(obj, path)
    elif isinstance(obj, Mapping) and any(obj.get(k) is not None for k in WRAPPER_KEYS):
        key = next(k for k in WRAPPER_KEYS if obj.get(k) is not None)
        inner = obj[key]
        if _tensor_mapping(inner):
            tensors = dict(inner)
        elif _is_module(inner):
            tensors = _module_state_dict(inner, path)
        else:
            raise TorchFileError(f"{path}: its '{key}' entry is {_describe(inner)}, not a state dict or a module")
    else:
        wrappers = ", ".join(f"'{k}'" for k in WRAPPER_KEYS)
        raise TorchFileError(
            f"{path}: holds {_describe(obj)}, not a state dict; jaxdl reads a mapping of tensors, a pickled "
            f"nn.Module, or a dict with one of them under {wrappers}"
        )
    if not tensors:
        raise TorchFileError(f"{path}: its state dict has no tensors")
    names = [k for k in tensors if not isinstance(k, str)]
    if names:
        raise TorchFileError(f"{path}: its state dict has a name {names[0]!r} that is not a string")
    return tensors


def _widen(array: np.ndarray) -> np.ndarray:
    """Floats narrower than 32 bits (float16, bfloat16, float8) as float32 (exact); every other dtype as stored."""
    if (array.dtype.kind == "f" and array.dtype.itemsize < 4) or array.dtype in _ML_FLOATS:
        return array.astype(np.float32)
    return array


# ml_dtypes' floats, whose numpy kind is "V" rather than "f".
_ML_FLOATS = frozenset(v for k, v in _TORCH_DTYPES.items() if k.startswith(("bfloat", "float8")))
