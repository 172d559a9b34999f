"""jaxdl-export: converters inverted (round trip for every family, strict loading into torchvision, smp and
Ultralytics with equal outputs), the stablehlo function in a process without jaxdl, and one-line errors."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from flax import traverse_util

from jaxdl import convert, export, models
from jaxdl.convert.inverse import NotInvertibleError, declared_shapes, to_torch
from jaxdl.errors import UserError
from jaxdl.trained import TrainedRun
from tests import helpers

# One small model per family that has a converter: (registered name, kwargs, input shape).
FAMILIES = {
    "ResNet": ("resnet_tiny", {}, None),
    "VGG": ("vgg_tiny", {}, None),
    "DenseNet": ("densenet_tiny", {}, None),
    "GoogLeNet": ("googlenet_tiny", {"aux_logits": True}, None),
    "EfficientNet": ("efficientnet_tiny", {}, None),
    "ConvNeXt": ("convnext_mini", {}, None),
    "ViT": ("vit_mini", {"scan_layers": True}, None),
    "UNetWithBackbone": ("unet_resnet_tiny", {}, None),
    "YOLOv8": ("yolov8_tiny", {}, None),
    "YOLO11": ("yolo11_tiny", {}, None),
    "RecurrentNet": ("lstm", {"hidden_size": 8, "num_layers": 2, "bidirectional": True}, (1, 4, 5)),
}
MORE = [  # Layouts of the same families that take other converter paths.
    ("vit_mini", {"scan_layers": False}, None),
    ("gru", {"hidden_size": 8}, (1, 4, 5)),
    ("rnn", {"hidden_size": 8, "vocab_size": 11}, (1, 4)),
    ("vgg_tiny", {"batch_norm": False}, None),
]
NOT_INVERTIBLE = {"Classifier"}  # Its new dense head has no name in the backbone's reference.


def _random_variables(model, shape, seed=0) -> dict:
    """Variables of the model's shapes (jax.eval_shape only) with values that keep activations of order 1."""
    rng = np.random.default_rng(seed)

    def value(path, leaf):
        name, shape = path[-1], leaf.shape
        if name == "dfl":  # Ultralytics' fixed DFL bins.
            return np.arange(shape[2], dtype=np.float32).reshape(shape)
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        if len(shape) >= 2:
            return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)

    abstract = models.abstract_variables(model, shape)
    flat = traverse_util.flatten_dict(abstract)
    return traverse_util.unflatten_dict({path: value(path, leaf) for path, leaf in flat.items()})


def _model(name, kwargs, shape):
    model = models.create_model(name, **{"num_outputs": 3, **kwargs})
    return model, shape or models.default_input_shape(model)


def _assert_equal(a, b):
    flat_a, flat_b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_array_equal(np.asarray(flat_a[key]), np.asarray(flat_b[key]), err_msg="/".join(key))


def test_every_family_with_a_converter_has_a_round_trip_case():
    assert {cls.__name__ for cls in convert.converters()} == set(FAMILIES) | NOT_INVERTIBLE


@pytest.mark.parametrize("name, kwargs, shape", [*FAMILIES.values(), *MORE], ids=lambda v: str(v))
def test_export_then_import_gives_the_same_variables(name, kwargs, shape):
    model, shape = _model(name, kwargs, shape)
    variables = _random_variables(model, shape)
    tensors = to_torch(model, variables, step=7)
    assert all(v.dtype == np.float32 for k, v in tensors.items() if not k.endswith("num_batches_tracked"))
    counters = [v for k, v in tensors.items() if k.endswith("num_batches_tracked")]
    assert all(v.dtype == np.int64 and v.shape == () and v == 7 for v in counters)
    assert bool(counters) == ("batch_stats" in variables)
    _assert_equal(convert.from_torch(model, tensors, input_shape=shape), variables)


def test_shapes_a_converter_leaves_open_are_declared():
    """ConvNeXt's converter takes layer_scale as (C,) or (C, 1, 1); torchvision's module holds (C, 1, 1)."""
    assert declared_shapes()["layer_scale"]((8,)) == (8, 1, 1)
    model, shape = _model("convnext_mini", {}, None)
    tensors = to_torch(model, _random_variables(model, shape))
    assert tensors["features.1.0.layer_scale"].shape == (8, 1, 1)
    assert tensors["features.0.0.weight"].shape == (8, 3, 4, 4)  # OIHW, found from the converter's transpose.


def test_a_family_without_reference_names_is_one_line_naming_it():
    model = models.create_model("cnn", num_outputs=3, features=(4,), dense_features=8)
    with pytest.raises(NotInvertibleError, match=r"^CNN has no PyTorch converter, so no reference names"):
        to_torch(model, _random_variables(model, (1, 8, 8, 1)))
    model, shape = _model("classifier_tiny", {"backbone": "resnet_tiny"}, None)
    with pytest.raises(NotInvertibleError, match=r"^Classifier: 'params/dense_0/bias' and 3 more have no name"):
        to_torch(model, _random_variables(model, shape))


def _saved_and_loaded(tmp_path, model, variables, torch_model):
    """Writes the export with jaxdl-export's writer, loads it into `torch_model` with strict=True."""
    from safetensors.torch import load_file

    path = tmp_path / "model.safetensors"
    export.save_safetensors(to_torch(model, variables), path, {"format": "pt"})
    result = torch_model.load_state_dict(load_file(str(path)), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert os.listdir(tmp_path) == ["model.safetensors"]  # No temporary file left.
    return torch_model.eval()


def _close(ours, expected):
    ours, expected = np.asarray(ours, np.float64), np.asarray(expected, np.float64)
    assert ours.shape == expected.shape
    assert np.abs(expected).std() > 0.05  # The outputs depend on the input, not only on biases.
    assert np.max(np.abs(ours - expected)) <= 1e-4 * max(1.0, np.max(np.abs(expected)))


def _torch_input(shape, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return x, x.transpose(0, 2, 3, 1)


def test_torchvision_resnet18_loads_the_export_strictly_and_agrees(tmp_path):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    model, _ = _model("resnet18", {"num_outputs": 10}, None)
    variables = _random_variables(model, (1, 32, 32, 3))
    reference = _saved_and_loaded(tmp_path, model, variables, torchvision.models.resnet18(num_classes=10))
    x, x_nhwc = _torch_input((2, 3, 32, 48))  # Non-square: a height/width mix-up shows.
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    _close(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x_nhwc), expected)


def test_smp_unet_loads_the_export_strictly_and_agrees(tmp_path):
    torch = pytest.importorskip("torch")
    smp = pytest.importorskip("segmentation_models_pytorch")
    model, _ = _model("unet_resnet18", {}, None)
    variables = _random_variables(model, (1, 64, 64, 3))
    unet = smp.Unet(encoder_name="resnet18", encoder_weights=None, classes=3)
    reference = _saved_and_loaded(tmp_path, model, variables, unet)
    x, x_nhwc = _torch_input((1, 3, 64, 64))
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
    _close(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x_nhwc), expected)


def test_ultralytics_yolov8n_loads_the_export_strictly_and_agrees(tmp_path):
    torch = pytest.importorskip("torch")
    tasks = pytest.importorskip("ultralytics.nn.tasks")  # conftest: YOLO_OFFLINE=1, settings in a temporary dir.
    model, _ = _model("yolov8n", {}, None)
    variables = _random_variables(model, (1, 64, 64, 3))
    reference = _saved_and_loaded(tmp_path, model, variables, tasks.DetectionModel("yolov8n.yaml", nc=3, verbose=False))
    x, x_nhwc = _torch_input((1, 3, 64, 96))
    with torch.no_grad():
        _, preds = reference(torch.from_numpy(x))
    expected = torch.cat([preds["boxes"], preds["scores"]], 1).numpy().transpose(0, 2, 1)  # jaxdl's raw layout.
    _close(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x_nhwc), expected)


# --------------------------------------------------------------------------
# jaxdl-export on a trained workdir
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Two steps of a 4-wide ResNet on digits (8x8x1 uint8 records, eval transform rescale(scale=0.0625))."""
    cfg = helpers.tiny_cnn(
        model__name="resnet_tiny",
        model__kwargs="{'width': 4}",
        training__batch_size=8,
        training__num_steps=2,
        training__eval_every_steps=2,
        training__checkpoint_every_steps=2,
    )
    return helpers.shared_run(tmp_path_factory, "digits_resnet_tiny_2_steps", cfg)[0]


@pytest.mark.slow
def test_cli_safetensors_of_a_trained_run_imports_back_exactly(workdir, tmp_path, capsys):
    from safetensors import safe_open

    out = tmp_path / "resnet.safetensors"
    assert export.export_cli([f"--workdir={workdir}", "--format=safetensors", f"--out={out}"]) == 0
    run = TrainedRun.open(workdir)
    assert capsys.readouterr().out.splitlines() == [f"wrote {out} ({out.stat().st_size / 1000:.1f} KB, 74 tensors)"]
    with safe_open(str(out), "numpy") as handle:
        assert handle.metadata() == {"format": "pt", "jaxdl_model": "resnet_tiny", "jaxdl_step": str(run.step)}
        assert handle.get_tensor("layer1.0.bn1.num_batches_tracked") == run.step
        assert handle.get_tensor("conv1.weight").shape == (4, 1, 7, 7)
    _assert_equal(convert.from_torch(run.model, out, input_shape=(1, 8, 8, 1)), jax.device_get(run.variables))
    assert sorted(os.listdir(tmp_path)) == ["resnet.safetensors"]


# Runs in a fresh interpreter: only jax and numpy, never jaxdl or flax.
_CALLER = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    spec = json.load(open("model.json"))
    inputs = np.load("inputs.npy")
    function, weights = spec["function"], spec["weights"]
    outputs = {}
    for n in (1, 3):  # The call the spec documents, as written there.
        outputs[str(n)] = np.asarray(eval(spec["usage"], {"jax": jax, "numpy": np}, {**locals(), "inputs": inputs[:n]}))
    assert not {"jaxdl", "flax"} & {name.split(".")[0] for name in sys.modules}, "imported jaxdl or flax"
    np.savez("outputs.npz", **outputs)
    """
)


@pytest.mark.slow
def test_cli_stablehlo_runs_without_jaxdl_for_two_batch_sizes(workdir, tmp_path, capsys):
    out = tmp_path / "model.stablehlo"
    assert export.export_cli([f"--workdir={workdir}", "--format=stablehlo", f"--out={out}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        f"wrote {tmp_path / name}" for name in ("model.weights.npz", "model.stablehlo", "model.json")
    ]
    assert lines[0].endswith(", 62 tensors)")
    spec = json.loads((tmp_path / "model.json").read_text())
    assert spec["input"] == {"shape": ["b", 8, 8, 1], "dtype": "uint8", "key": "image"}
    assert (spec["before"], spec["applies"]) == ("", "rescale(scale=0.0625)")
    assert spec["outputs"] == [{"shape": ["b", 10], "dtype": "float32"}]
    assert spec["platforms"] == ["cpu", "cuda"] and spec["model"] == "resnet_tiny"
    inputs = np.random.default_rng(0).integers(0, 17, (3, 8, 8, 1)).astype(np.uint8)
    np.save(tmp_path / "inputs.npy", inputs)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ""}
    subprocess.run([sys.executable, "-c", _CALLER], cwd=tmp_path, env=env, check=True)
    expected = np.asarray(TrainedRun.open(workdir).outputs(inputs.astype(np.float32) * 0.0625))
    with np.load(tmp_path / "outputs.npz") as outputs:
        np.testing.assert_allclose(outputs["1"], expected[:1], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(outputs["3"], expected, rtol=1e-5, atol=1e-5)


def test_geometric_eval_transforms_stay_the_callers_and_per_pixel_ones_go_in():
    from jaxdl.data import transforms

    specs = transforms.parse("letterbox(size=64)|rescale(scale=0.5)|normalize(mean=0.5, std=2.0)")
    before, inside = export.split_eval_transforms(specs, transforms.build(specs))
    assert [s.name for s in before] == ["letterbox"]
    assert [type(op) for op in inside] == [transforms.Rescale, transforms.Normalize]
    model = models.create_model("mlp", num_outputs=2, hidden_sizes=(4,))
    variables = _random_variables(model, (1, 3))
    exported, weights = export.export_function(model, variables, (3,), "uint8", inside, platforms=("cpu",))
    x = np.arange(6, dtype=np.uint8).reshape(2, 3)
    np.testing.assert_allclose(
        exported.call(weights, x), model.apply(variables, (x * 0.5 - 0.5) / 2.0, train=False), rtol=1e-6
    )


# --------------------------------------------------------------------------
# Bad input: one line, nothing written
# --------------------------------------------------------------------------


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err and not captured.out
    return lines[0]


@pytest.mark.slow
def test_bad_arguments_are_one_line_and_write_nothing(workdir, tmp_path, capsys):
    empty = tmp_path / "untrained"
    empty.mkdir()
    for name in ("config.json", "inputs.json"):
        (empty / name).write_bytes((workdir / name).read_bytes())
    assert export.export_cli([f"--workdir={empty}"]) == 2
    assert (
        _one_error_line(capsys)
        == f"jaxdl-export: error: {empty} holds no checkpoint to restore: is it a jaxdl workdir?"
    )
    assert sorted(os.listdir(empty)) == ["config.json", "inputs.json"]
    assert export.export_cli([f"--workdir={workdir}", "--format=onnx"]) == 1
    assert _one_error_line(capsys) == (
        "jaxdl-export: error: --format=onnx is not valid; choose one of: safetensors, stablehlo"
    )
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder would be")
    assert export.export_cli([f"--workdir={workdir}", f"--out={blocker / 'model.safetensors'}"]) == 1
    assert _one_error_line(capsys).startswith(f"jaxdl-export: error: cannot write {blocker / 'model.safetensors'}: ")


def test_a_failed_write_leaves_nothing(tmp_path):
    def fail(path):
        path.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(UserError, match=r"^cannot write .*model.npz: No space left on device$"):
        export.write_atomic(tmp_path / "model.npz", fail)
    assert os.listdir(tmp_path) == []
    # Of several files, none is renamed into place until all are written.
    with pytest.raises(UserError, match=r"^cannot write .*model.json: No space left on device$"):
        export.write_files(
            [(tmp_path / "model.stablehlo", lambda path: path.write_bytes(b"done")), (tmp_path / "model.json", fail)]
        )
    assert os.listdir(tmp_path) == []
