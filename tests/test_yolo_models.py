"""YOLOv8 / YOLO11: parameter counts, the output contract, and parity with Ultralytics' DetectionModel."""

import os
import re
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxdl import convert, models
from jaxdl.detection.boxes import make_anchors
from jaxdl.detection.heads import YOLOv8Head
from jaxdl.models.yolo import YOLO11, DetectHead, YOLOv8

# Ultralytics' published counts at 80 classes (the scale comments of yolov8.yaml and yolo11.yaml); 8.4.190 builds these.
PUBLISHED = {
    "yolov8n": 3_157_200,
    "yolov8s": 11_166_560,
    "yolov8m": 25_902_640,
    "yolov8l": 43_691_520,
    "yolov8x": 68_229_648,
    "yolo11n": 2_624_080,
    "yolo11s": 9_458_752,
    "yolo11m": 20_114_688,
    "yolo11l": 25_372_160,
    "yolo11x": 56_966_176,
}
REG_MAX = 16
STRIDES = (8, 16, 32)


@pytest.fixture(scope="module")
def tasks():
    """ultralytics.nn.tasks, imported offline with its settings in a temporary dir (skips without ultralytics)."""
    return _ultralytics_tasks()


def _ultralytics_tasks():
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="ultralytics-"))
    # Ultralytics first: imported before torch, it keeps torch at one thread (OMP_NUM_THREADS=1), which is faster here.
    return pytest.importorskip("ultralytics.nn.tasks")


def _reference(tasks, cfg, num_classes: int, seed: int = 0):
    """An Ultralytics DetectionModel with random weights and random BatchNorm statistics, in eval mode.

    torch's default init shrinks the features through the network (the image-dependent
    part of the outputs has a std of about 0.03 around bias_init's constants), so
    the head's last convs get larger weights and random biases: the outputs then
    vary by about 1 and a relative error measures the whole network.
    """
    import torch

    from tests.torch_reference import randomize_norm_stats

    torch.manual_seed(seed)
    reference = tasks.DetectionModel(cfg, nc=num_classes, verbose=False).eval()
    randomize_norm_stats(reference, seed)
    detect = reference.model[-1]
    with torch.no_grad():
        for branch in (*detect.cv2, *detect.cv3):
            branch[-1].weight.mul_(30.0)
            branch[-1].bias.copy_(torch.randn(branch[-1].bias.shape) * 0.1)
    return reference


def _relative_error(ours: np.ndarray, expected: np.ndarray) -> float:
    ours, expected = np.asarray(ours, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(ours - expected)) / np.max(np.abs(expected)))


def _num_anchors(height: int, width: int) -> int:
    return sum((height // s) * (width // s) for s in STRIDES)


# --------------------------------------------------------------------------
# Sizes and the output contract (tracing only)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_equal_ultralytics(name: str) -> None:
    """Counted as Ultralytics does: with the DFL's 16 fixed bins, which jaxdl keeps as `head/dfl`."""
    model = models.create_model(name)  # 80 classes.
    ours = models.count_params(models.abstract_variables(model, (1, 64, 64, 3))["params"])
    assert ours == PUBLISHED[name]
    tasks = _ultralytics_tasks()
    reference = tasks.DetectionModel(f"{name}.yaml", nc=80, verbose=False)
    assert ours == sum(p.numel() for p in reference.parameters())


@pytest.mark.parametrize("name", ["yolov8_tiny", "yolo11_tiny"])
def test_output_is_one_float32_array_of_anchors_by_channels(name: str) -> None:
    model = models.create_model(name, num_outputs=3, dtype=jnp.bfloat16)
    x = jax.ShapeDtypeStruct((2, 64, 96, 3), jnp.float32)
    for train in (False, True):
        out = jax.eval_shape(lambda x, train=train: model.init_with_output(jax.random.key(0), x, train=train)[0], x)
        assert out.shape == (2, 8 * 12 + 4 * 6 + 2 * 3, 4 * REG_MAX + 3) and out.dtype == jnp.float32
    assert model.strides == (8, 16, 32) and model.detection_head() == YOLOv8Head(reg_max=REG_MAX, strides=(8, 16, 32))
    head = models.create_model(name, num_outputs=3, reg_max=8).detection_head()  # The head carries the model's reg_max.
    assert (head.name, head.reg_max, head.strides) == ("yolov8", 8, (8, 16, 32))


@pytest.mark.parametrize("shape", [(1, 48, 64, 3), (1, 64, 80, 3)])
def test_input_sides_must_be_multiples_of_32(shape: tuple) -> None:
    model = models.create_model("yolov8_tiny", num_outputs=2)
    got = f"{shape[1]}x{shape[2]}"
    with pytest.raises(
        ValueError, match=rf"^YOLOv8 needs an input height and width that are multiples of 32 .*got {got}"
    ):
        models.abstract_variables(model, shape)
    with pytest.raises(ValueError, match=r"takes NHWC images \[B, H, W, C\]; got shape \(64, 64, 3\)"):
        models.abstract_variables(models.create_model("yolo11_tiny"), (64, 64, 3))


def test_hyperparameter_checks_and_registered_scales() -> None:
    with pytest.raises(ValueError, match=r"^width_multiple=0.0 is not valid; it must be > 0"):
        models.create_model("yolov8n", width_multiple=0.0)
    with pytest.raises(ValueError, match=r"^reg_max=0 is not valid; it must be >= 1"):
        models.create_model("yolo11n", reg_max=0)
    assert models.model_defaults("yolo11m") == {
        "depth_multiple": 0.5,
        "width_multiple": 1.0,
        "max_channels": 512,
        "c3k": True,
    }
    assert models.model_class("yolov8x") is YOLOv8 and models.model_class("yolo11_tiny") is YOLO11


def test_fresh_head_biases_follow_ultralytics_bias_init() -> None:
    """Box logits start at 2.0 (Ultralytics 8.4's bias_init); class logits at log(5 / nc / (640 / stride)^2)."""
    head = DetectHead(4, STRIDES, depthwise=True)
    maps = [jnp.zeros((1, 64 // s, 64 // s, c)) for s, c in zip(STRIDES, (16, 32, 64), strict=True)]
    params = jax.jit(lambda maps: head.init(jax.random.key(0, impl="rbg"), maps))(maps)["params"]
    for level, stride in enumerate(STRIDES):
        np.testing.assert_array_equal(params[f"box_{level}_2"]["bias"], np.full(4 * REG_MAX, 2.0, np.float32))
        expected = np.log(5 / 4 / (640 / stride) ** 2)
        np.testing.assert_allclose(params[f"cls_{level}_2"]["bias"], np.full(4, expected), rtol=1e-6)
    np.testing.assert_array_equal(params["dfl"].reshape(-1), np.arange(REG_MAX))


# --------------------------------------------------------------------------
# Parity with Ultralytics
# --------------------------------------------------------------------------


def _decode(raw: np.ndarray, height: int, width: int) -> np.ndarray:
    """Ultralytics' eval output from the raw one: [B, A, 4 + nc], xywh in pixels (DFL expectation) + sigmoid scores."""
    logits = raw[..., : 4 * REG_MAX].reshape(*raw.shape[:2], 4, REG_MAX)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    distances = (probs / probs.sum(-1, keepdims=True)) @ np.arange(REG_MAX)  # [B, A, 4]: left, top, right, bottom.
    points, strides = [], []
    for s in STRIDES:
        ys, xs = np.mgrid[0 : height // s, 0 : width // s]
        points.append(np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], -1))
        strides.append(np.full((xs.size, 1), s))
    points, strides = np.concatenate(points), np.concatenate(strides)
    top_left, bottom_right = points - distances[..., :2], points + distances[..., 2:]
    boxes = np.concatenate([(top_left + bottom_right) / 2, bottom_right - top_left], -1) * strides
    anchors, anchor_strides = make_anchors((height, width), STRIDES)
    np.testing.assert_array_equal(anchors * anchor_strides, points * strides)
    return np.concatenate([boxes, 1 / (1 + np.exp(-raw[..., 4 * REG_MAX :]))], -1)


def _yolo11_with_c3k(tasks) -> dict:
    """yolo11.yaml at yolo11n's size under scale "m", for which parse_model puts C3k blocks in every C3k2."""
    cfg = tasks.yaml_model_load("yolo11m.yaml")
    cfg["scales"]["m"] = cfg["scales"]["n"]
    return cfg


@pytest.mark.parametrize(
    ("name", "num_classes", "kwargs"),
    [("yolov8n", 3, {}), ("yolo11n", 3, {}), ("yolo11n", 80, {"c3k": True})],
    ids=["yolov8n", "yolo11n", "yolo11n-c3k-80"],
)
def test_imported_weights_give_ultralytics_outputs(name: str, num_classes: int, kwargs: dict, tasks) -> None:
    """Raw head outputs equal Ultralytics' preds["boxes"] / preds["scores"]; decoding them gives its eval output."""
    import torch

    cfg = _yolo11_with_c3k(tasks) if kwargs.get("c3k") else f"{name}.yaml"
    reference = _reference(tasks, cfg, num_classes, seed=num_classes)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 96)).astype(np.float32)  # Non-square: catches layouts.
    with torch.no_grad():
        decoded, preds = reference(torch.from_numpy(x))
    raw = torch.cat([preds["boxes"], preds["scores"]], 1).numpy().transpose(0, 2, 1)
    model = models.create_model(name, num_outputs=num_classes, **kwargs)
    variables = convert.from_torch(model, reference.state_dict(), input_shape=(1, 64, 96, 3))
    ours = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x.transpose(0, 2, 3, 1)))
    assert ours.shape == raw.shape == (2, _num_anchors(64, 96), 4 * REG_MAX + num_classes)
    assert raw.std(axis=1).mean() > 0.3  # The outputs depend on the image, not only on the biases.
    assert _relative_error(ours[..., : 4 * REG_MAX], raw[..., : 4 * REG_MAX]) < 1e-4
    assert _relative_error(ours[..., 4 * REG_MAX :], raw[..., 4 * REG_MAX :]) < 1e-4
    expected = decoded.numpy().transpose(0, 2, 1)
    assert _relative_error(_decode(ours, 64, 96), expected) < 1e-4


def test_training_mode_matches_ultralytics_and_updates_batch_stats(tasks) -> None:
    """Batch statistics in the forward pass, and running means moved with Ultralytics' momentum 0.03."""
    import torch

    reference = _reference(tasks, "yolov8n.yaml", 3, seed=5)
    model = models.create_model("yolov8n", num_outputs=3)
    # Copies: the imported arrays share memory with the torch buffers, which the torch forward below updates.
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    variables = convert.from_torch(model, state, input_shape=(1, 64, 64, 3))
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    reference.train()
    with torch.no_grad():
        preds = reference(torch.from_numpy(x))
    raw = torch.cat([preds["boxes"], preds["scores"]], 1).numpy().transpose(0, 2, 1)
    step = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    ours, updates = step(variables, x.transpose(0, 2, 3, 1))
    assert ours.shape == raw.shape == (2, _num_anchors(64, 64), 4 * REG_MAX + 3)
    assert _relative_error(ours, raw) < 1e-4
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(variables["batch_stats"])
    for path, key in [("model_0/bn", "model.0.bn"), ("head/cls_2_1/bn", "model.22.cv3.2.1.bn")]:
        mean = traverse_util.flatten_dict(updates["batch_stats"], sep="/")[f"{path}/mean"]
        before = traverse_util.flatten_dict(variables["batch_stats"], sep="/")[f"{path}/mean"]
        assert not np.allclose(mean, before)
        np.testing.assert_allclose(mean, reference.state_dict()[f"{key}.running_mean"].numpy(), atol=1e-5)


def _flat(variables: dict) -> dict:
    return traverse_util.flatten_dict(variables, sep="/")


@pytest.mark.parametrize("name", ["yolov8n", "yolo11n"])
def test_fine_tuning_import_keeps_all_but_the_class_logits(name: str, tasks) -> None:
    """80-class weights into a 3-class model: with skip_mismatched only the class-logit convs keep their init."""
    state = _reference(tasks, f"{name}.yaml", 80).state_dict()
    shape = (1, 64, 64, 3)
    full = _flat(convert.from_torch(models.create_model(name, num_outputs=80), state, input_shape=shape))
    # The class branch as wide as the source's (Ultralytics' max(64, min(80, 100)) = 80): only the logits differ.
    model = models.create_model(name, num_outputs=3, class_channels=80)
    with pytest.raises(convert.StateDictError, match=r"tensor 'model\.2[23]\.cv3\.0\.2\.weight' has shape"):
        convert.from_torch(model, state, input_shape=shape)
    imported = _flat(convert.from_torch(model, state, input_shape=shape, skip_mismatched=True))
    logits = {f"params/head/cls_{level}_2/{p}" for level in range(3) for p in ("kernel", "bias")}
    assert set(full) - set(imported) == logits
    for path, value in imported.items():
        np.testing.assert_array_equal(value, full[path])
    # With the default width (max(64, min(3, 100)) = 64) the hidden class layers are new as well.
    default = _flat(
        convert.from_torch(models.create_model(name, num_outputs=3), state, input_shape=shape, skip_mismatched=True)
    )
    skipped = set(full) - set(default)
    assert logits < skipped and all(re.match(r"(params|batch_stats)/head/cls_\d_", p) for p in skipped)
    depthwise = {p for p in skipped if re.match(r".*/cls_\d_0_0/", p)}
    assert not depthwise  # YOLO11's first depthwise conv reads the neck, whose width did not change.


def test_import_names_missing_and_extra_tensors(tasks) -> None:
    state = dict(_reference(tasks, "yolo11n.yaml", 2).state_dict())
    del state["model.10.m.0.attn.pe.bn.running_var"]
    state["model.24.extra.weight"] = state["model.23.dfl.conv.weight"]
    with pytest.raises(convert.StateDictError) as info:
        convert.from_torch(models.create_model("yolo11n", num_outputs=2), state, input_shape=(1, 64, 64, 3))
    assert "missing tensor 'model.10.m.0.attn.pe.bn.running_var'" in str(info.value)
    assert "unexpected tensor 'model.24.extra.weight'" in str(info.value)
