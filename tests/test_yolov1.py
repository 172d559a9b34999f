"""YOLO v1: the paper's network (shape, parameter count by hand), backbone variants, and the loss worked by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import models
from jaxdl.detection.heads import YOLOv1Head
from jaxdl.detection.yolov1 import yolov1_decode, yolov1_loss, yolov1_targets

# --------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------


def _trace(name: str, shape: tuple, **kwargs) -> tuple[jax.ShapeDtypeStruct, dict]:
    """Output and variables by tracing only (nothing compiled or allocated)."""
    model = models.create_model(name, **kwargs)
    return jax.eval_shape(
        lambda x: model.init_with_output(jax.random.key(0), x, train=False), jax.ShapeDtypeStruct(shape, jnp.float32)
    )


# The paper's Figure 3 convs as (kernel, input channels, output channels), written out from the layer list.
PAPER_CONVS = [
    (7, 3, 64),  # 7x7/2-64, then maxpool
    (3, 64, 192),  # 3x3-192, then maxpool
    (1, 192, 128),
    (3, 128, 256),
    (1, 256, 256),
    (3, 256, 512),  # then maxpool
    *[(1, 512, 256), (3, 256, 512)] * 4,
    (1, 512, 512),
    (3, 512, 1024),  # then maxpool
    *[(1, 1024, 512), (3, 512, 1024)] * 2,
    (3, 1024, 1024),
    (3, 1024, 1024),  # stride 2: 14x14 -> 7x7
    (3, 1024, 1024),
    (3, 1024, 1024),
]


def test_paper_network_maps_448_to_7x7x30_with_its_parameter_count() -> None:
    assert len(PAPER_CONVS) == 24
    # What a detection task's head="yolov1" needs, with the model's own boxes per cell.
    assert models.create_model("yolov1", boxes_per_cell=3).detection_head() == YOLOv1Head(boxes_per_cell=3)
    convs = sum(k * k * cin * cout + cout for k, cin, cout in PAPER_CONVS)
    fc1 = 7 * 7 * 1024 * 4096 + 4096
    fc2 = 4096 * (7 * 7 * (2 * 5 + 20)) + 7 * 7 * 30
    out, variables = _trace("yolov1", (1, 448, 448, 3))  # num_outputs defaults to VOC's 20 classes.
    assert (out.shape, out.dtype) == ((1, 7, 7, 30), jnp.float32)
    assert models.count_params(variables["params"]) == convs + fc1 + fc2 == 271_703_550
    assert variables["params"]["fc1"]["kernel"].shape == (50176, 4096)
    # BatchNorm: each conv loses its bias and gains a scale and a bias.
    _, bn = _trace("yolov1", (1, 448, 448, 3), batch_norm=True)
    assert models.count_params(bn["params"]) == convs + fc1 + fc2 + sum(cout for _, _, cout in PAPER_CONVS)
    assert set(bn["batch_stats"]) == {f"bn{i}" for i in range(1, 25)}
    # Other S, B, C: only the last layer changes; grid_size=None reads S off the 7x7 map.
    out, other = _trace("yolov1", (2, 448, 448, 3), num_outputs=3, grid_size=5, boxes_per_cell=3)
    assert out.shape == (2, 5, 5, 18) and other["params"]["fc2"]["kernel"].shape == (4096, 5 * 5 * 18)
    assert _trace("yolov1", (1, 448, 448, 3), grid_size=None)[0].shape == (1, 7, 7, 30)


def test_backbone_variants_build_by_tracing() -> None:
    out, variables = _trace("yolov1", (1, 64, 64, 3), backbone="resnet18")
    assert out.shape == (1, 7, 7, 30)
    assert set(variables["params"]) == {"backbone", "fc1", "fc2"}
    assert variables["params"]["fc1"]["kernel"].shape == (2 * 2 * 512, 4096)  # resnet18's stride-32 map at 64.
    # A 1x1 neck shrinks the first FC layer; grid_size=None takes S = 2 from the map.
    out, variables = _trace("yolov1", (1, 64, 64, 3), backbone="resnet18", neck_features=64, grid_size=None)
    assert out.shape == (1, 2, 2, 30) and variables["params"]["fc1"]["kernel"].shape == (2 * 2 * 64, 4096)
    # The conv head: 1x1 convs on an S x S map (resnet_tiny with its stride-1 stem ends at stride 8: 8x8 at 64).
    tiny = dict(backbone="resnet_tiny", backbone_kwargs={"cifar_stem": True}, head="conv", hidden_features=16)
    out, variables = _trace("yolov1", (1, 64, 64, 3), num_outputs=3, grid_size=None, **tiny)
    assert out.shape == (1, 8, 8, 13) and variables["params"]["head2"]["kernel"].shape == (1, 1, 16, 13)
    with pytest.raises(ValueError, match="head='conv' needs the deepest map to be the 7x7 grid, but it is 8x8"):
        _trace("yolov1", (1, 64, 64, 3), **tiny)


def test_tiny_variant_runs() -> None:
    model = models.create_model("yolov1_tiny", num_outputs=3)
    images = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3))
    outputs = jax.jit(lambda x: model.apply(model.init(jax.random.key(0, impl="rbg"), x, train=False), x))(images)
    assert outputs.shape == (2, 4, 4, 13) and outputs.dtype == jnp.float32
    assert bool(jnp.isfinite(outputs).all())


def test_a_training_step_of_the_loss_reaches_every_parameter() -> None:
    """Train mode (dropout, BatchNorm statistics) on a small cnn backbone, with a 1x1 neck: finite gradients."""
    model = models.create_model(
        "yolov1",
        num_outputs=3,
        backbone="cnn",
        backbone_kwargs={"features": (8, 16, 16)},
        neck_features=8,
        batch_norm=True,
        hidden_features=32,
        grid_size=4,
    )
    images = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3))
    targets = {
        "boxes": jnp.array([[[4.0, 4.0, 30.0, 20.0], [0, 0, 0, 0]], [[10.0, 40.0, 60.0, 62.0], [1, 2, 3, 4]]]),
        "classes": jnp.array([[2, 0], [1, 0]], jnp.int32),
        "valid": jnp.array([[True, False], [True, False]]),
    }

    @jax.jit
    def gradient(images: jax.Array) -> tuple:
        variables = model.init(jax.random.key(0, impl="rbg"), images, train=False)

        def loss(params: dict) -> tuple:
            out, updates = model.apply(
                {**variables, "params": params},
                images,
                train=True,
                rngs={"dropout": jax.random.key(2, impl="rbg")},
                mutable=["batch_stats"],
            )
            return yolov1_loss(out, targets, (64, 64), num_classes=3, boxes_per_cell=2)[0].mean(), updates

        return jax.grad(loss, has_aux=True)(variables["params"])

    grads, updates = gradient(images)
    assert set(grads) == {"backbone", "neck", "neck_bn", "fc1", "fc2"} and "neck_bn" in updates["batch_stats"]
    assert all(bool(jnp.isfinite(g).all()) and float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"grid_size": 0}, "grid_size=0 is not valid; it must be > 0"),
        ({"boxes_per_cell": 0}, "boxes_per_cell=0 is not valid; it must be >= 1"),
        ({"num_outputs": 0}, "num_outputs=0 is not valid; it must be >= 1"),
        ({"hidden_features": 0}, "hidden_features=0 is not valid; it must be > 0"),
        ({"neck_features": -1}, "neck_features=-1 is not valid; it must be > 0"),
        ({"dropout_rate": 1.0}, "dropout_rate=1.0 is not valid; it must be in [0, 1)"),
        ({"image_size": 0}, "image_size=0 is not valid; it must be > 0"),
        ({"head": "mlp"}, "head='mlp' is not valid; choose one of: fc, conv"),
        ({"backbone": "lstm"}, "model 'lstm' has no feature maps"),
    ],
)
def test_bad_fields_are_refused_by_name(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        models.create_model("yolov1", **kwargs)


# --------------------------------------------------------------------------
# The loss, by hand: S=2, B=2, C=2, a 64x64 image, so each cell is 32x32 pixels
# --------------------------------------------------------------------------

S, B, C, HW = 2, 2, 2, (64, 64)


def _outputs() -> np.ndarray:
    """[1, 2, 2, 12]: per cell (x, y, sqrt_w, sqrt_h, conf) for predictors 0 and 1, then 2 class scores."""
    out = np.zeros((1, S, S, B * 5 + C), np.float32)
    #                     predictor 0                 predictor 1                  classes
    out[0, 0, 0] = [0.5, 0.5, 0.5, 0.5, 0.8] + [0.875, 0.5, 0.75, 0.5, 0.6] + [0.3, 0.6]
    out[0, 0, 1] = [0.9, 0.9, 0.9, 0.9, 0.1] + [0.9, 0.9, 0.9, 0.9, 0.2] + [0.7, 0.2]
    out[0, 1, 0] = [0.9, 0.9, 0.9, 0.9, 0.0] + [0.9, 0.9, 0.9, 0.9, -0.3] + [0.7, 0.2]
    out[0, 1, 1] = [0.5, 0.5, 0.5, 0.5, 0.5] + [0.0, 0.0, 0.25, 0.25, 0.0] + [0.7, 0.2]
    return out


# Object A, class 1: (16, 8)-(32, 24) px, centre (24, 16): column floor(24 / 32) = 0, row floor(16 / 32) = 0,
# so cell (0, 0); offsets x = 24/32 = 0.75, y = 16/32 = 0.5; width = height = 16/64 = 0.25, roots 0.5.
BOX_A, CLASS_A = [16.0, 8.0, 32.0, 24.0], 1
# Object B, class 0: (40, 40)-(56, 56), centre (48, 48): cell (1, 1), x = y = 0.5, roots 0.5.
BOX_B, CLASS_B = [40.0, 40.0, 56.0, 56.0], 0


def _targets(*objects: tuple[list, int], pad_to: int = 3) -> dict:
    """One image's targets, padded with garbage (NaN boxes, an out-of-range class) marked invalid."""
    boxes = [box for box, _ in objects] + [[np.nan, 1.0, -5.0, 7.0]] * (pad_to - len(objects))
    classes = [c for _, c in objects] + [99] * (pad_to - len(objects))
    valid = [True] * len(objects) + [False] * (pad_to - len(objects))
    return {
        "boxes": jnp.array([boxes], jnp.float32),
        "classes": jnp.array([classes], jnp.int32),
        "valid": jnp.array([valid]),
    }


_STATIC = ("image_hw", "num_classes", "boxes_per_cell", "lambda_coord", "lambda_noobj", "confidence_target")
_jit_loss = jax.jit(yolov1_loss, static_argnames=_STATIC)


def _loss(outputs, targets, **kwargs) -> tuple:
    """The loss of S=2, B=2, C=2 outputs on a 64x64 image, jitted (one compile per set of options and shapes)."""
    return _jit_loss(jnp.asarray(outputs), targets, image_hw=HW, num_classes=C, boxes_per_cell=B, **kwargs)


# Cell (0, 0), object A:
#   predictor 0: centre ((0 + 0.5)/2 * 64, (0 + 0.5)/2 * 64) = (16, 16), size 0.5² * 64 = 16 -> (8, 8)-(24, 24);
#     with A: intersection 8 x 16 = 128, union 256 + 256 - 128 = 384, IoU 1/3.
#   predictor 1: centre (0.875/2 * 64, 16) = (28, 16), width 0.75² * 64 = 36, height 16 -> (10, 8)-(46, 24),
#     which contains A: IoU 256 / 576 = 4/9 > 1/3, so predictor 1 is responsible.
#   xy:  5 * ((0.875 - 0.75)² + (0.5 - 0.5)²) = 5 * 0.015625 = 0.078125
#   wh:  5 * ((0.75 - 0.5)² + (0.5 - 0.5)²)   = 5 * 0.0625   = 0.3125
#   object: (0.6 - 4/9)² = (7/45)² = 49/2025 (target: the IoU); (0.6 - 1)² = 0.16 with confidence_target="one"
#   class: (0.3 - 0)² + (0.6 - 1)² = 0.09 + 0.16 = 0.25
# no_object: every other predictor's confidence, squared:
#   cell (0,0) predictor 0: 0.8² = 0.64; cell (0,1): 0.1² + 0.2² = 0.05; cell (1,0): 0² + 0.3² = 0.09;
#   cell (1,1): 0.5² + 0² = 0.25 -> 0.5 * (0.64 + 0.05 + 0.09 + 0.25) = 0.5 * 1.03 = 0.515
ONE_OBJECT = {"xy": 0.078125, "wh": 0.3125, "object": 49 / 2025, "no_object": 0.515, "class": 0.25}


def _check(loss, parts, expected: dict) -> None:
    assert set(parts) == set(expected)
    for key, value in expected.items():
        assert float(parts[key][0]) == pytest.approx(value, rel=1e-6, abs=1e-7), key
    np.testing.assert_allclose(float(loss[0]), sum(expected.values()), rtol=1e-6)


def test_loss_of_one_object_by_hand() -> None:
    _check(*_loss(_outputs(), _targets((BOX_A, CLASS_A))), ONE_OBJECT)
    _check(*_loss(_outputs(), _targets((BOX_A, CLASS_A)), confidence_target="one"), {**ONE_OBJECT, "object": 0.16})
    # The weights scale their terms only.
    loss, parts = _loss(_outputs(), _targets((BOX_A, CLASS_A)), lambda_coord=1.0, lambda_noobj=1.0)
    _check(loss, parts, {**ONE_OBJECT, "xy": 0.015625, "wh": 0.0625, "no_object": 1.03})


def test_loss_of_objects_in_two_cells_by_hand() -> None:
    # Cell (1, 1), object B: predictor 0 decodes to (40, 40)-(56, 56) = B, IoU 1; predictor 1 to the 4x4 box
    # (30, 30)-(34, 34), IoU 0. Predictor 0 is responsible: xy 0, wh 0, object (0.5 - 1)² = 0.25;
    # class (0.7 - 1)² + (0.2 - 0)² = 0.13; predictor 1 joins no_object with 0² instead of predictor 0's 0.5²:
    # no_object = 0.5 * (0.64 + 0.05 + 0.09 + 0) = 0.39.
    expected = {**ONE_OBJECT, "object": 49 / 2025 + 0.25, "no_object": 0.39, "class": 0.25 + 0.13}
    _check(*_loss(_outputs(), _targets((BOX_A, CLASS_A), (BOX_B, CLASS_B))), expected)
    _check(*_loss(_outputs(), _targets((BOX_B, CLASS_B), (BOX_A, CLASS_A))), expected)  # Order does not matter.


def test_an_image_without_objects_has_only_the_no_object_term() -> None:
    # 0.5 * (0.8² + 0.6² + 0.1² + 0.2² + 0² + 0.3² + 0.5² + 0²) = 0.5 * 1.39 = 0.695
    expected = {"xy": 0.0, "wh": 0.0, "object": 0.0, "no_object": 0.695, "class": 0.0}
    _check(*_loss(_outputs(), _targets()), expected)


def test_the_first_of_two_objects_in_one_cell_is_used() -> None:
    # Object D (class 0) is centred at (24, 16) too: same cell (0, 0) as A.
    box_d = [0.0, 0.0, 48.0, 32.0]
    _check(*_loss(_outputs(), _targets((BOX_A, CLASS_A), (box_d, 0))), ONE_OBJECT)
    d_first = _loss(_outputs(), _targets((box_d, 0), (BOX_A, CLASS_A)))[0]
    assert float(d_first[0]) == pytest.approx(float(_loss(_outputs(), _targets((box_d, 0)))[0][0]))
    assert float(d_first[0]) != pytest.approx(sum(ONE_OBJECT.values()))


def test_batch_jit_and_gradient() -> None:
    """Three images at once (one object, two, none) match their single-image losses, jitted or not."""
    outputs = jnp.asarray(np.concatenate([_outputs()] * 3))
    single = [_targets((BOX_A, CLASS_A)), _targets((BOX_A, CLASS_A), (BOX_B, CLASS_B)), _targets()]
    targets = jax.tree.map(lambda *x: jnp.concatenate(x), *single)
    loss = lambda out: yolov1_loss(out, targets, HW, num_classes=C, boxes_per_cell=B)
    eager, eager_parts = loss(outputs)
    jitted, jitted_parts = jax.jit(loss)(outputs)
    expected = [float(_loss(_outputs(), t)[0][0]) for t in single]
    np.testing.assert_allclose(eager, expected, rtol=1e-6)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), jitted_parts, eager_parts)

    gradient = jax.jit(
        jax.grad(lambda out, targets: yolov1_loss(out, targets, HW, num_classes=C, boxes_per_cell=B)[0].sum())
    )
    grad = gradient(outputs, targets)
    assert bool(jnp.isfinite(grad).all())
    # Image 0, cell (0, 0), predictor 1 (channels 5-9): the IoU choosing it and its confidence target carry no
    # gradient, so d/dx = 2 * 5 * (0.875 - 0.75) = 1.25, d/dconf = 2 * (0.6 - 4/9) = 14/45.
    np.testing.assert_allclose(grad[0, 0, 0, [5, 9]], [1.25, 14 / 45], rtol=1e-6)
    # Predictor 0 there only has the no_object term: d/dconf = 0.5 * 2 * 0.8, nothing on its box.
    np.testing.assert_allclose(grad[0, 0, 0, :5], [0, 0, 0, 0, 0.8], atol=1e-7)
    # Negative roots and empty truth boxes stay finite too.
    zero_box = {**targets, "boxes": targets["boxes"].at[0, 0].set(jnp.array([20.0, 20.0, 20.0, 20.0]))}
    assert bool(jnp.isfinite(gradient(-outputs, zero_box)).all())


def test_targets_on_the_grid() -> None:
    truth = yolov1_targets(_targets((BOX_A, CLASS_A), (BOX_B, CLASS_B)), HW, grid_size=S, num_classes=C)
    np.testing.assert_array_equal(truth["has_object"][0], [[True, False], [False, True]])
    np.testing.assert_allclose(truth["xy"][0, 0, 0], [0.75, 0.5])
    np.testing.assert_allclose(truth["sqrt_wh"][0, 1, 1], [0.5, 0.5])
    np.testing.assert_allclose(truth["box"][0, 0, 0], np.array(BOX_A) / 64)
    np.testing.assert_array_equal(truth["classes"][0], [[[0, 1], [0, 0]], [[0, 0], [1, 0]]])


def test_decode_by_hand() -> None:
    out = np.zeros((1, S, S, B * 5 + C), np.float32)
    # Cell (1, 0), predictor 1, on a 64 (high) x 128 (wide) image: centre ((0 + 0.5)/2 * 128, (1 + 0.25)/2 * 64)
    # = (32, 40), size (0.5² * 128, 0.75² * 64) = (32, 36) -> (16, 22)-(48, 58); its row is (1*2 + 0)*2 + 1 = 5.
    out[0, 1, 0, 5:10] = [0.5, 0.25, 0.5, 0.75, 0.8]
    out[0, 1, 0, 10:] = [1.2, -0.1]  # Class scores clipped to (1, 0): scores (0.8 * 1, 0.8 * 0).
    # Cell (0, 1), predictor 0: a confidence of 1.5 scores as 1; a negative root is width 0.
    # Centre ((1 + 0.5)/2 * 128, (0 + 0.5)/2 * 64) = (96, 16), width 0, height 0.5² * 64 = 16 -> (96, 8)-(96, 24).
    out[0, 0, 1, 0:5] = [0.5, 0.5, -0.4, 0.5, 1.5]
    out[0, 0, 1, 10:] = [0.25, 0.5]
    # Cell (1, 1), predictor 1: centre (96, 48), the image's size 128 x 64 -> (32, 16)-(160, 80), or clipped to it.
    out[0, 1, 1, 5:9] = [0.5, 0.5, 1.0, 1.0]
    boxes, scores = yolov1_decode(jnp.asarray(out), (64, 128), num_classes=C, boxes_per_cell=B)
    assert boxes.shape == (1, 8, 4) and scores.shape == (1, 8, 2)
    np.testing.assert_allclose(boxes[0, 5], [16, 22, 48, 58])
    np.testing.assert_allclose(scores[0, 5], [0.8, 0.0], rtol=1e-6)
    np.testing.assert_allclose(boxes[0, 2], [96, 8, 96, 24])
    np.testing.assert_allclose(scores[0, 2], [0.25, 0.5])
    assert float(scores[0, 3].sum()) == 0.0  # Cell (0, 1), predictor 1: confidence 0.
    # Zero outputs: every box a point at its cell's corner, e.g. cell (1, 1) -> (64, 32).
    np.testing.assert_allclose(boxes[0, 6], [64, 32, 64, 32])
    clipped, _ = yolov1_decode(jnp.asarray(out), (64, 128), num_classes=C, boxes_per_cell=B, clip=True)
    np.testing.assert_allclose(boxes[0, 7], [32, 16, 160, 80])
    np.testing.assert_allclose(clipped[0, 7], [32, 16, 128, 64])
    np.testing.assert_allclose(clipped[0, 5], [16, 22, 48, 58])
    with pytest.raises(ValueError, match="have 12 channels per cell, but boxes_per_cell=3 and num_classes=2 need 17"):
        yolov1_decode(jnp.asarray(out), (64, 128), num_classes=C, boxes_per_cell=3)


@pytest.mark.slow
def test_outputs_made_from_the_targets_score_map_1():
    """Targets written as YOLOv1 outputs, decoded, NMS'd and scored by the task: mAP 1 with one object per cell."""
    from jaxdl.tasks.detection import Detection, Outputs

    rng = np.random.default_rng(0)
    n, s, g = 6, 4, 3
    boxes = np.zeros((n, g, 4), np.float32)
    for b in range(n):
        cells = rng.choice(s * s, g, replace=False)  # One object per cell.
        for k, cell in enumerate(cells):
            cy, cx = (cell // s + rng.uniform(0.3, 0.7)) * 16, (cell % s + rng.uniform(0.3, 0.7)) * 16
            w, h = rng.uniform(6, 20, 2)
            boxes[b, k] = np.clip([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 0, 64)
    truth = {"boxes": boxes, "target": rng.integers(0, 3, (n, g)), "box_valid": np.ones((n, g), np.uint8)}
    task = Detection(3, "yolov1", iou_threshold=0.5).with_head(YOLOv1Head(boxes_per_cell=2))
    grid = yolov1_targets(task.targets(truth), (64, 64), grid_size=s, num_classes=3)
    exact = jnp.concatenate([grid["xy"], grid["sqrt_wh"], grid["has_object"][..., None].astype(jnp.float32)], -1)
    outputs = jnp.concatenate([exact, jnp.zeros_like(exact), grid["classes"]], -1)  # Predictor 2 finds nothing.
    values = {k: np.asarray(v) for k, v in task.host_values(Outputs(outputs, (64, 64)), truth).items()}
    metrics, keys = task.host_metrics(values), ("map50_95", "map50", "map75", "mar_100")
    assert {k: metrics[k] for k in keys} == pytest.approx(dict.fromkeys(keys, 1.0), abs=1e-9)


def test_the_task_decodes_with_the_head_it_is_bound_to():
    """The loss and decoding are the bound head's; a task without one, or with another format's, refuses."""
    from jaxdl.detection.heads import YOLOv8Head
    from jaxdl.tasks.detection import Detection, Outputs

    task = Detection(3, "yolov1")
    outputs = Outputs(jnp.zeros((1, 4, 4, 3 * 5 + 3)), (64, 64))
    with pytest.raises(RuntimeError, match=r"no model head yet: use task.for_model\(model\)"):
        task.decode(outputs)
    with pytest.raises(ValueError, match="the task decodes 'yolov1' outputs, not the 'yolov8'"):
        task.with_head(YOLOv8Head())
    model = models.create_model("yolov1_tiny", num_outputs=3, boxes_per_cell=3)
    boxes, scores = task.for_model(model).decode(outputs)
    assert boxes.shape == (1, 4 * 4 * 3, 4) and scores.shape == (1, 4 * 4 * 3, 3)  # Three predictors a cell.
    assert task.model_head is None  # Binding makes a new task.
