"""PyTorch checkpoints read without torch: equal to torch's own tensors, and refused when the pickle asks for code.

torch (installed for the tests) writes every file here with `torch.save` and is
the reference for the values; the reader itself never imports it (checked in a
process where `import torch` fails).
"""

import collections
import io
import json
import os
import pickle
import subprocess
import sys
import types
import zipfile

import jax
import numpy as np
import pytest
import torch

from jaxdl import convert, experiment
from jaxdl.convert import torch_files
from tests import helpers


def _expected(tensor: torch.Tensor) -> np.ndarray:
    """torch's values as the reader gives them: conj/neg bits applied, float16/bfloat16 as float32."""
    tensor = tensor.resolve_conj().resolve_neg()
    if tensor.is_floating_point() and tensor.element_size() < 4:  # float16, bfloat16, float8.
        tensor = tensor.float()
    return tensor.numpy()


def _strided_tensors() -> dict[str, torch.Tensor]:
    """Views, offsets, strides of 0, shared storages and every dtype torch.save writes for weights."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    half = torch.randn(4, 6, generator=g).half()
    return {
        "base": base,
        "transposed": base.t(),  # Shares base's storage, strides (1, 5).
        "offset_view": base[2:, 1:4],  # Storage offset 11.
        "every_other_column": base[:, ::2],
        "row": base[3],
        "expanded": torch.arange(3.0).expand(4, 3),  # Stride 0.
        "float64_scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.zeros(0, 3),
        "float16": half,
        "float16_view": half[1:, ::3],
        "bfloat16_transposed": torch.randn(2, 3, generator=g).to(torch.bfloat16).t(),
        "int64": torch.arange(-5, 7).reshape(3, 4)[:, 1:],
        "int32": torch.arange(-3, 3, dtype=torch.int32),
        "int8": torch.arange(-128, 128, 51, dtype=torch.int8),
        "uint8": torch.arange(250, 256, dtype=torch.uint8),
        "bool": torch.rand(3, 3, generator=g) > 0.5,
        # Dtypes without a storage class (torch._utils._rebuild_tensor_v3).
        "uint16": torch.arange(0, 60000, 7000, dtype=torch.int32).to(torch.uint16)[1:],
        "float8_e4m3fn": torch.randn(5, generator=g).to(torch.float8_e4m3fn)[1:],
        "float8_e5m2_transposed": torch.randn(2, 3, generator=g).to(torch.float8_e5m2).t(),
        "complex_conj": torch.randn(3, dtype=torch.complex64, generator=g).conj(),
        "negative_view": torch._neg_view(torch.randn(3, generator=g)),
    }


def test_tensors_equal_torch_with_their_strides_offsets_and_dtypes(tmp_path):
    tensors = _strided_tensors()
    path = tmp_path / "views.pth"
    torch.save(tensors, path)
    with zipfile.ZipFile(path) as archive:  # The views share storages: fewer records than tensors.
        assert len([n for n in archive.namelist() if "/data/" in n]) < len(tensors) - 4
    loaded = torch_files.read_state_dict(path)
    assert list(loaded) == list(tensors)
    for name, tensor in tensors.items():
        want = _expected(tensor)
        assert loaded[name].dtype == want.dtype and loaded[name].shape == want.shape, name
        np.testing.assert_array_equal(loaded[name], want, err_msg=name)
        assert loaded[name].flags.c_contiguous and loaded[name].flags.writeable, name
    assert loaded["float16"].dtype == np.float32 and loaded["int64"].dtype == np.int64


def test_big_endian_archive_is_swapped(tmp_path):
    """The byteorder record: a file written on a big-endian machine reads as the same numbers."""
    tensors = {"f": torch.randn(2, 3), "c": torch.randn(2, dtype=torch.complex64), "i": torch.arange(-2, 2)}
    path, swapped = tmp_path / "little.pth", tmp_path / "big.pth"
    torch.save(tensors, path)
    parts = {"0": "u4", "1": "u4", "2": "u8"}  # Element (complex: each half) sizes of the three storages.
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(swapped, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            folder, _, key = info.filename.rpartition("/")
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif folder.endswith("/data"):
                data = np.frombuffer(data, parts[key]).byteswap().tobytes()
            target.writestr(info, data)
    loaded = torch_files.read_state_dict(swapped)
    for name, tensor in tensors.items():
        np.testing.assert_array_equal(loaded[name], tensor.numpy())


@pytest.fixture(scope="module")
def resnet18_files(tmp_path_factory):
    """torchvision's resnet18 with random BatchNorm statistics, as .pth, .safetensors and checkpoint wrappers."""
    import torchvision
    from safetensors.numpy import save_file

    from tests.torch_reference import randomize_norm_stats

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    randomize_norm_stats(model, 0)
    state = model.state_dict()
    folder = tmp_path_factory.mktemp("resnet18")
    torch.save(state, folder / "resnet18.pth")
    save_file({k: v.numpy() for k, v in state.items()}, str(folder / "resnet18.safetensors"))
    torch.save(state, folder / "pytorch_model.bin")  # HF transformers' name: the same zip format.
    # Lightning's wrapper around a DistributedDataParallel model's names.
    ddp = {f"module.{k}": v for k, v in state.items()}
    torch.save({"epoch": 3, "state_dict": ddp, "hyper_parameters": {"lr": 0.1}}, folder / "lightning.ckpt")
    # PyTorch's checkpoint tutorial.
    torch.save({"epoch": 3, "model_state_dict": state, "optimizer_state_dict": {}}, folder / "tutorial.pt")
    return folder, {k: v.numpy() for k, v in state.items()}


def test_pth_and_safetensors_import_identically(resnet18_files):
    folder, state = resnet18_files
    for name in ("resnet18.pth", "pytorch_model.bin", "lightning.ckpt", "tutorial.pt"):
        loaded = convert.load_state_dict(folder / name)
        assert list(loaded) == list(state), name
        for key, value in state.items():
            np.testing.assert_array_equal(loaded[key], value, err_msg=f"{name}: {key}")
    from_pth = convert.from_torch("resnet18", folder / "resnet18.pth", num_outputs=1000, input_shape=(1, 32, 32, 3))
    from_safetensors = convert.from_torch(
        "resnet18", folder / "resnet18.safetensors", num_outputs=1000, input_shape=(1, 32, 32, 3)
    )
    assert jax.tree.structure(from_pth) == jax.tree.structure(from_safetensors)
    for a, b in zip(jax.tree.leaves(from_pth), jax.tree.leaves(from_safetensors), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_dict_without_a_state_dict_names_its_keys(tmp_path):
    path = tmp_path / "training.pt"
    torch.save({"epoch": 3, "net": {"w": torch.zeros(2)}, "optimizer": {}}, path)
    with pytest.raises(torch_files.TorchFileError, match=r"training\.pt: holds a dict with keys 'epoch', 'net', "):
        convert.load_state_dict(path)


class _RunsCommand:
    """What a malicious checkpoint pickles: unpickling it calls `call(*args)` (then BUILDs `state`, if given)."""

    def __init__(self, call, *args, state=None):
        self.call, self.args, self.state = call, args, state

    def __reduce__(self):
        return (self.call, self.args) if self.state is None else (self.call, self.args, self.state)

    def __call__(self, *args):  # So that a _RunsCommand may itself be what another one calls.
        raise AssertionError("never called by the tests")


_STORAGE = object()  # Stands for the archive's storage '0' of four floats.


class _Pickler(pickle.Pickler):
    """Writes `_STORAGE` as torch.save writes a storage: a persistent id."""

    def persistent_id(self, obj):
        return ("storage", torch.FloatStorage, "0", "cpu", 4) if obj is _STORAGE else None


def _archive(path, obj, protocol: int = 2) -> None:
    """A torch.save-shaped zip of `obj` with storage '0' (four zero floats)."""
    data = io.BytesIO()
    _Pickler(data, protocol=protocol).dump(obj)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data.getvalue())
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/data/0", bytes(16))


def _payload(kind: str, marker) -> tuple[object, str, int]:
    """(what to pickle, the name the refusal gives, pickle protocol) for each way of asking for a call."""
    command = f"touch {marker}"
    system = f"{os.system.__module__}.system"  # posix.system on Linux.
    from_type = torch._tensor._rebuild_from_type_v2  # Allowed, but only with a tensor rebuild function.
    return {
        "os.system": (_RunsCommand(os.system, command), system, 2),
        "protocol 0": (_RunsCommand(os.system, command), system, 0),
        "eval": (_RunsCommand(eval, f"__import__('os').system('{command}')"), "builtins.eval", 2),
        "subprocess.Popen": (_RunsCommand(subprocess.Popen, ["touch", str(marker)]), "subprocess.Popen", 2),
        # getattr(os.system, "__call__")(command)
        "through getattr": (_RunsCommand(_RunsCommand(getattr, os.system, "__call__"), command), "builtins.getattr", 2),
        "through a rebuild": (_RunsCommand(from_type, os.system, None, (command,), None), system, 2),
    }[kind]


@pytest.mark.parametrize(
    "kind", ["os.system", "protocol 0", "eval", "subprocess.Popen", "through getattr", "through a rebuild"]
)
def test_a_pickle_that_asks_for_code_is_refused_and_nothing_runs(tmp_path, kind):
    marker = tmp_path / "ran"
    payload, called, protocol = _payload(kind, marker)
    path = tmp_path / "weights.pth"
    weight = _RunsCommand(torch._utils._rebuild_tensor_v2, _STORAGE, 0, (4,), (1,))
    _archive(path, {"hook": payload, "weight": weight}, protocol)
    with pytest.raises(torch_files.UnsafePickleError) as info:
        convert.load_state_dict(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: its pickle asks to call {called}"), message
    assert not marker.exists()
    if kind == "os.system":  # The payload is live: Python's own pickle runs it.
        with zipfile.ZipFile(path) as archive:
            data = archive.read("archive/data.pkl")
        with pytest.raises(pickle.UnpicklingError):  # After running os.system, the storage needs torch's loader.
            pickle.loads(data)
        assert marker.exists()


@pytest.mark.parametrize(
    ("state", "stride", "error"),
    [
        (None, 4, r"a tensor of size \(2,\), stride \(4,\) and offset 0 reaches past its storage '0' of 4"),
        ((_STORAGE, 0, (64,), (1,), False, False), 1, "the pickle sets the state of a Tensor record"),
    ],
    ids=["stride past the storage", "BUILD on a tensor"],
)
def test_a_tensor_cannot_reach_past_its_storage(tmp_path, state, stride, error):
    """as_strided reads raw memory: a stride past the storage, or a tensor rewritten after its checks, is refused."""
    args = (_STORAGE, 0, (2,), (stride,), False, collections.OrderedDict())
    tensor = _RunsCommand(torch._utils._rebuild_tensor_v2, *args, state=state)
    path = tmp_path / "bad.pth"
    _archive(path, {"w": tensor})
    with pytest.raises(torch_files.TorchFileError, match=error):
        convert.load_state_dict(path)


def test_config_init_from_refuses_the_pickle_in_one_line(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "resnet.pth"
    torch.save({"weight": torch.zeros(2), "hook": _RunsCommand(os.system, f"touch {marker}")}, path)
    cfg = helpers.tiny_cnn(init_from=str(path))
    with pytest.raises(experiment.ConfigError, match=rf"^config\.init_from: {path}: its pickle asks to call "):
        experiment.Experiment(cfg)
    assert not marker.exists()


def test_unknown_classes_are_placeholders_never_imported(tmp_path, monkeypatch):
    """An object of a class jaxdl does not know is recorded, not imported: its module's code never runs."""
    marker = tmp_path / "imported"
    (tmp_path / "jaxdl_test_payload.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).touch()\n"
        "class Settings:\n"
        "    def __init__(self):\n"
        "        self.lr = 0.1\n"
        "    def __setstate__(self, state):\n"
        f"        pathlib.Path({str(marker)!r}).touch()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import jaxdl_test_payload

    path = tmp_path / "with_settings.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "settings": jaxdl_test_payload.Settings()}, path)
    marker.unlink()
    monkeypatch.delitem(sys.modules, "jaxdl_test_payload")
    assert list(convert.load_state_dict(path)) == ["w"]
    assert not marker.exists() and "jaxdl_test_payload" not in sys.modules


@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:FutureWarning")
def test_legacy_and_torchscript_files_say_how_to_resave(tmp_path):
    legacy = tmp_path / "old.pth"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    resave = r"torch\.save\(torch\.load\('old\.pth', weights_only=True\), 'old_zip\.pth'\)"
    with pytest.raises(torch_files.TorchFileError, match=rf"old\.pth: written in torch's legacy format.*{resave}$"):
        convert.load_state_dict(legacy)
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(scripted))
    with pytest.raises(torch_files.TorchFileError, match=r"scripted\.pt: a TorchScript archive"):
        convert.load_state_dict(scripted)


# --------------------------------------------------------------------------
# Ultralytics checkpoints: a pickled DetectionModel in fp16, written by the trainer's own code.


@pytest.fixture(scope="module")
def ultralytics_checkpoints(tmp_path_factory):
    """last.pt from BaseTrainer.save_model and its released form from strip_optimizer, for a 3-class yolov8n.

    The trainer's method runs on a stand-in holding what it reads (EMA, optimizer,
    scaler, args as the trainer sets them on the model); no dataset is needed.
    """
    pytest.importorskip("ultralytics")
    from ultralytics.cfg import get_cfg
    from ultralytics.engine.trainer import BaseTrainer
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.torch_utils import ModelEMA, strip_optimizer

    from tests.torch_reference import randomize_norm_stats

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    randomize_norm_stats(model, 0)
    model.args = get_cfg()  # What DetectionTrainer.set_model_attributes does.
    ema = ModelEMA(model)
    folder = tmp_path_factory.mktemp("ultralytics") / "weights"
    fitness = np.float64(0.25)
    trainer = types.SimpleNamespace(
        ema=ema,
        model=model,
        epoch=0,
        best_fitness=fitness,
        fitness=fitness,
        stopper=types.SimpleNamespace(best_fitness=fitness, best_epoch=0),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        args=model.args,
        metrics={"metrics/mAP50-95(B)": fitness},
        read_results_csv=dict,
        wdir=folder,
        last=folder / "last.pt",
        best=folder / "best.pt",
        save_period=-1,
    )
    BaseTrainer.save_model(trainer)
    strip_optimizer(folder / "best.pt", str(folder / "yolov8n_3.pt"))
    half = {k: v.half().float() if v.is_floating_point() else v for k, v in ema.ema.state_dict().items()}
    return folder, {k: v.numpy() for k, v in half.items()}


def test_ultralytics_training_and_released_checkpoints_give_the_fp16_weights(ultralytics_checkpoints):
    folder, expected = ultralytics_checkpoints
    with zipfile.ZipFile(folder / "last.pt") as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    assert b"DetectionModel" in data and b"IterableSimpleNamespace" in data  # A pickled model, not a state dict.
    for name in ("last.pt", "yolov8n_3.pt"):  # 'model' None and 'ema' set; then 'model' set, 'ema' None.
        loaded = convert.load_state_dict(folder / name)
        assert list(loaded) == list(expected), name
        for key, value in expected.items():
            assert loaded[key].dtype == value.dtype, key  # float32 from fp16; num_batches_tracked stays int64.
            np.testing.assert_array_equal(loaded[key], value, err_msg=f"{name}: {key}")
    variables = convert.from_torch("yolov8n", folder / "yolov8n_3.pt", num_outputs=3, input_shape=(1, 64, 64, 3))
    kernel = expected["model.0.conv.weight"].transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(variables["params"]["model_0"]["conv"]["kernel"], kernel)


def test_config_init_from_an_ultralytics_training_checkpoint(ultralytics_checkpoints):
    folder, expected = ultralytics_checkpoints
    cfg = helpers.config(
        "shapes_yolov8n",
        init_from=str(folder / "last.pt"),
        dataset__split_sizes=(16, 8, 8),
        training__batch_size=8,
        parallel__num_devices=1,
    )
    run = experiment.Experiment(cfg)
    direct = convert.from_torch(run.model, expected, input_shape=run.sample_input.shape)
    assert jax.tree.structure(run.pretrained) == jax.tree.structure(direct)
    for a, b in zip(jax.tree.leaves(run.pretrained), jax.tree.leaves(direct), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_reader_runs_where_torch_cannot_be_imported(ultralytics_checkpoints, resnet18_files):
    folder, expected = ultralytics_checkpoints
    resnet_folder, state = resnet18_files
    script = (
        "import json, sys\n"
        "sys.modules['torch'] = None  # import torch raises ImportError\n"
        "from jaxdl import convert\n"
        "out = {}\n"
        "for path in sys.argv[1:]:\n"
        "    loaded = convert.load_state_dict(path)\n"
        "    out[path] = {k: float(abs(v.astype('float64')).sum()) for k, v in loaded.items()}\n"
        "assert sys.modules['torch'] is None\n"
        "print(json.dumps(out))\n"
    )
    paths = [str(folder / "last.pt"), str(resnet_folder / "resnet18.pth")]
    done = subprocess.run(
        [sys.executable, "-c", script, *paths], capture_output=True, text=True, cwd=helpers.ROOT, check=False
    )
    assert done.returncode == 0, done.stderr
    sums = json.loads(done.stdout.strip().splitlines()[-1])
    for path, tensors in zip(paths, (expected, state), strict=True):
        assert list(sums[path]) == list(tensors)
        for key, value in tensors.items():
            assert sums[path][key] == pytest.approx(float(np.abs(value.astype(np.float64)).sum()), rel=1e-12), key
