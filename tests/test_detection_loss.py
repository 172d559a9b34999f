"""jaxdl.detection (boxes, task-aligned assigner, YOLOv8 loss) against ultralytics 8.4 and torchvision."""

import os
import tempfile
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.detection import assigner, boxes, heads, loss

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp())

NC = 3
STRIDES = (8, 16, 32)


def relative_error(ours, reference) -> float:
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float(np.max(np.abs(ours - reference)) / max(np.max(np.abs(reference)), 1e-12))


def close(ours, reference, rtol=1e-4, atol=1e-6) -> bool:
    return bool(np.allclose(np.asarray(ours, np.float64), np.asarray(reference, np.float64), rtol=rtol, atol=atol))


def random_gt(rng, image_hw, counts):
    """Pixel xyxy boxes of several sizes (some below the 16 px widening) per image, classes; counts per image."""
    height, width = image_hw
    out = []
    for n in counts:
        w = rng.choice([3.0, 10.0, 24.0, 50.0, 0.7 * width], size=n) * rng.uniform(0.8, 1.2, n)
        h = rng.choice([4.0, 12.0, 30.0, 0.6 * height], size=n) * rng.uniform(0.8, 1.2, n)
        w, h = np.minimum(w, width - 2), np.minimum(h, height - 2)
        x0 = rng.uniform(1, width - w - 1)
        y0 = rng.uniform(1, height - h - 1)
        out.append((np.stack([x0, y0, x0 + w, y0 + h], -1), rng.integers(0, NC, n)))
    return out


def ultralytics_batch(torch, gts, image_hw):
    """The ultralytics batch (normalised xywh) and the pixel boxes its loss reconstructs from it."""
    from ultralytics.utils.ops import xywh2xyxy, xyxy2xywh

    height, width = image_hw
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    idx, cls, norm, pixel = [], [], [], []
    for i, (xyxy, classes) in enumerate(gts):
        xywhn = xyxy2xywh(torch.tensor(xyxy, dtype=torch.float64)).float() / scale
        idx += [i] * len(classes)
        cls += list(classes)
        norm.append(xywhn)
        pixel.append(xywh2xyxy(xywhn * scale).numpy())
    batch = {
        "batch_idx": torch.tensor(idx, dtype=torch.float32),
        "cls": torch.tensor(cls, dtype=torch.float32).view(-1, 1),
        "bboxes": torch.cat(norm) if norm else torch.zeros(0, 4),
    }
    return batch, pixel


def jax_targets(gts, pixel, max_boxes):
    b = len(gts)
    out = {
        "boxes": np.full((b, max_boxes, 4), 7.0, np.float32),  # padding holds garbage
        "classes": np.full((b, max_boxes), 2, np.int32),
        "valid": np.zeros((b, max_boxes), bool),
    }
    for i, ((_, classes), xyxy) in enumerate(zip(gts, pixel, strict=True)):
        n = len(classes)
        out["boxes"][i, :n], out["classes"][i, :n], out["valid"][i, :n] = xyxy, classes, True
    return out


def detection_model_stub(torch, reg_max=16):
    """What v8DetectionLoss reads from a DetectionModel: args (gains), model[-1] (the head), parameters()."""
    head = types.SimpleNamespace(stride=torch.tensor(STRIDES, dtype=torch.float32), nc=NC, reg_max=reg_max)
    gains = types.SimpleNamespace(box=7.5, cls=0.5, dfl=1.5)
    return types.SimpleNamespace(args=gains, model=[head], parameters=lambda: iter([torch.zeros(1)]))


def ultralytics_loss(torch, model, pred_boxes, pred_scores, feats, batch):
    """ultralytics' (loss items [box, cls, dfl], grad of the summed loss w.r.t. boxes, w.r.t. scores)."""
    from ultralytics.utils.loss import v8DetectionLoss

    criterion = v8DetectionLoss(model)
    pred_boxes = pred_boxes.detach().clone().requires_grad_(True)
    pred_scores = pred_scores.detach().clone().requires_grad_(True)
    preds = {"boxes": pred_boxes, "scores": pred_scores, "feats": feats}
    (fg_mask, *_), total, items = criterion.get_assigned_targets_and_loss(preds, batch)  # as criterion() but fg too
    (total * len(pred_boxes)).sum().backward()
    items = np.array([float(v) for v in items.values()])
    return items, pred_boxes.grad.numpy(), pred_scores.grad.numpy(), int(fg_mask.sum())


def check_parity(torch, model, pred_boxes, pred_scores, feats, gts, image_hw, max_boxes=12, head=None):
    """ultralytics' loss items and gradients against those of `head` (default: ultralytics' YOLOv8 head)."""
    head = head or heads.YOLOv8Head()
    batch, pixel = ultralytics_batch(torch, gts, image_hw)
    items, grad_boxes, grad_scores, num_fg = ultralytics_loss(torch, model, pred_boxes, pred_scores, feats, batch)
    raw = jnp.asarray(torch.cat([pred_boxes, pred_scores], 1).transpose(1, 2).detach().numpy())
    targets = jax_targets(gts, pixel, max_boxes)

    def summed(r):
        per_example, parts = head.loss(r, targets, image_hw, num_classes=NC)
        return per_example.sum(), (per_example, parts)

    (_, (per_example, parts)), grad = jax.jit(jax.value_and_grad(summed, has_aux=True))(raw)
    third = "dfl" if head.reg_max > 1 else "l1"  # ultralytics' third item: DFL, or L1 of the sides without bins.
    ours, grad = np.array([parts["box"], parts["cls"], parts[third]]), np.asarray(grad)
    reference_grad = np.concatenate([grad_boxes, grad_scores], 1).transpose(0, 2, 1)
    errors = {
        "fg": num_fg,
        "parts": relative_error(ours, items),
        "each": [abs(o - r) / max(abs(r), 1e-12) for o, r in zip(ours, items, strict=True)],
        "grad": relative_error(grad, reference_grad),
    }
    assert close(ours, items), (ours, items, errors)
    assert np.isclose(float(per_example.mean()), ours.sum(), rtol=1e-5), (per_example, ours)
    assert errors["grad"] < 1e-4, errors
    return errors


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    pytest.importorskip("ultralytics")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


def test_model_outputs_match_ultralytics(torch):
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=NC, verbose=False).train()
    model.args = types.SimpleNamespace(box=7.5, cls=0.5, dfl=1.5)  # the gains v8DetectionLoss reads
    image_hw = (64, 96)
    with torch.no_grad():
        preds = model(torch.randn(3, 3, *image_hw))
    gts = random_gt(np.random.default_rng(0), image_hw, [5, 0, 8])
    errors = check_parity(torch, model, preds["boxes"], preds["scores"], preds["feats"], gts, image_hw)
    print("model preds:", errors)


@pytest.mark.parametrize("seed,counts", [(1, [10, 4, 0]), (2, [3, 10, 6]), (3, [0, 0, 0])])
def test_random_outputs_match_ultralytics(torch, seed, counts):
    """Spread-out random predictions and many large boxes: many anchors are foreground (or none at all)."""
    rng = np.random.default_rng(seed)
    image_hw, b = (96, 128), 3
    feats = [torch.zeros(b, 1, image_hw[0] // s, image_hw[1] // s) for s in STRIDES]
    num_anchors = sum(f.shape[2] * f.shape[3] for f in feats)
    pred_boxes = torch.tensor(rng.normal(0, 3, (b, 64, num_anchors)), dtype=torch.float32)
    pred_scores = torch.tensor(rng.normal(-1, 2, (b, NC, num_anchors)), dtype=torch.float32)
    gts = random_gt(rng, image_hw, counts)
    errors = check_parity(torch, detection_model_stub(torch), pred_boxes, pred_scores, feats, gts, image_hw)
    assert errors["fg"] >= 40 or not sum(counts)
    print(f"random preds {seed}:", errors)


@pytest.mark.parametrize("reg_max", [8, 1])
def test_a_head_of_other_reg_max_matches_ultralytics(torch, reg_max):
    """Fewer DFL bins (8), or none (1: the four distances predicted directly, an L1 term in place of the DFL)."""
    rng = np.random.default_rng(4)
    image_hw, b = (96, 128), 3
    feats = [torch.zeros(b, 1, image_hw[0] // s, image_hw[1] // s) for s in STRIDES]
    num_anchors = sum(f.shape[2] * f.shape[3] for f in feats)
    # Bin logits, or (reg_max=1) the distances themselves, in strides.
    shape = (b, 4 * reg_max, num_anchors)
    raw_box = rng.normal(0, 3, shape) if reg_max > 1 else rng.uniform(0.2, 4, shape)
    pred_boxes = torch.tensor(raw_box, dtype=torch.float32)
    pred_scores = torch.tensor(rng.normal(-1, 2, (b, NC, num_anchors)), dtype=torch.float32)
    gts = random_gt(rng, image_hw, [6, 3, 9])
    model = detection_model_stub(torch, reg_max)
    head = heads.YOLOv8Head(reg_max=reg_max)
    errors = check_parity(torch, model, pred_boxes, pred_scores, feats, gts, image_hw, head=head)
    assert errors["fg"] >= 20, errors


def test_head_decodes_with_its_reg_max_and_refuses_what_it_cannot_use():
    points, stride = boxes.make_anchors((64, 96))
    # reg_max=4: a distribution peaked on bin 2 for every side; reg_max=1: the distances themselves.
    peaked = jnp.zeros((1, points.shape[0], 4 * 4 + NC)).at[..., 2:16:4].set(30.0)
    direct = jnp.zeros((1, points.shape[0], 4 + NC)).at[..., :4].set(2.0)
    for raw, reg_max in ((peaked, 4), (direct, 1)):
        decoded, scores = heads.YOLOv8Head(reg_max=reg_max).decode(raw, (64, 96), num_classes=NC)
        expected = np.concatenate([points - 2, points + 2], -1) * stride
        np.testing.assert_allclose(np.asarray(decoded[0]), expected, atol=1e-3)
        assert scores.shape == (1, points.shape[0], NC)
    with pytest.raises(ValueError, match="raw has 67 channels; reg_max=8 and 3 classes need 35"):
        heads.YOLOv8Head(reg_max=8).decode(jnp.zeros((1, points.shape[0], 67)), (64, 96), num_classes=NC)
    for bad, message in [
        (dict(reg_max=0), r"^reg_max=0 is not valid; it must be an int >= 1"),
        (dict(reg_max=2.0), r"^reg_max=2.0 is not valid"),
        (dict(strides=(16, 8)), r"^strides=\(16, 8\) is not valid; they must increase"),
        (dict(strides=(0, 8)), r"^strides=\(0, 8\) is not valid; give positive ints"),
    ]:
        with pytest.raises(ValueError, match=message):
            heads.YOLOv8Head(**bad)
    with pytest.raises(ValueError, match=r"^boxes_per_cell=0 is not valid"):
        heads.YOLOv1Head(boxes_per_cell=0)


@pytest.mark.parametrize("seed,topk2", [(0, None), (1, None), (2, 4)])
def test_assigner_matches_ultralytics(torch, seed, topk2):
    from ultralytics.utils.tal import TaskAlignedAssigner

    rng = np.random.default_rng(seed)
    image_hw, b, g = (96, 128), 3, 7
    points, stride = boxes.make_anchors(image_hw, STRIDES)
    points = points * stride
    a = len(points)
    dist = rng.uniform(0.5, 6, (b, a, 4)).astype(np.float32) * stride[None]
    pred = np.concatenate([points - dist[..., :2], points + dist[..., 2:]], -1)
    scores = rng.uniform(0, 1, (b, a, NC)).astype(np.float32)
    counts = [g - 2, 0, 4]
    gts = random_gt(rng, image_hw, counts)
    gt_boxes, gt_classes = np.zeros((b, g, 4), np.float32), np.zeros((b, g), np.int32)
    valid = np.zeros((b, g), bool)
    for i, (xyxy, classes) in enumerate(gts):
        gt_boxes[i, : len(classes)], gt_classes[i, : len(classes)], valid[i, : len(classes)] = xyxy, classes, True

    reference = TaskAlignedAssigner(topk=10, num_classes=NC, alpha=0.5, beta=6.0, stride=list(STRIDES), topk2=topk2)
    _, ref_boxes, ref_scores, ref_fg, ref_idx = reference(
        torch.tensor(scores),
        torch.tensor(pred),
        torch.tensor(points),
        torch.tensor(gt_classes[..., None], dtype=torch.float32),
        torch.tensor(gt_boxes),
        torch.tensor(valid[..., None], dtype=torch.float32),
    )
    ours = jax.jit(assigner.task_aligned_assign, static_argnames=("topk2",))(
        scores, pred, points, gt_boxes, gt_classes, valid, topk2=topk2
    )
    # Where ties at t = 0 fill a top-k list, torch and jax.lax.top_k pick different zero-metric anchors: those can
    # differ in fg_mask (with a zero target score, so no loss changes); every anchor with a score must agree.
    fg, ref_scores = ref_fg.numpy(), ref_scores.numpy()
    scored = ref_scores.sum(-1) > 0
    assert scored.sum() > 20
    np.testing.assert_allclose(np.asarray(ours.target_scores), ref_scores, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(ours.fg_mask)[scored], fg[scored])
    np.testing.assert_array_equal(np.asarray(ours.target_gt_idx)[scored], ref_idx.numpy()[scored])
    np.testing.assert_array_equal(np.asarray(ours.target_boxes)[scored], ref_boxes.numpy()[scored])
    zero_ties = np.asarray(ours.fg_mask) != fg
    assert zero_ties.sum() <= 0.2 * fg.sum(), zero_ties.sum()
    print(f"assigner {seed}: fg {fg.sum()} (scored {scored.sum()}), fg differing on zero-metric ties {zero_ties.sum()}")


def test_ciou_and_box_iou(torch):
    import torchvision
    from ultralytics.utils.metrics import bbox_iou

    rng = np.random.default_rng(0)

    def random_boxes(n):
        xy = rng.uniform(0, 50, (n, 2))
        return np.concatenate([xy, xy + rng.uniform(0.1, 40, (n, 2))], -1).astype(np.float32)

    a, b = random_boxes(300), random_boxes(300)
    b[:50] = a[:50] + rng.normal(0, 1, (50, 4)).astype(np.float32)  # overlapping pairs too
    reference = bbox_iou(torch.tensor(a), torch.tensor(b), xywh=False, CIoU=True)[:, 0].numpy()
    ours = np.asarray(boxes.bbox_iou(a, b, ciou=True))
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)
    reference = torchvision.ops.box_iou(torch.tensor(a[:40]), torch.tensor(b[:30])).numpy()
    np.testing.assert_allclose(np.asarray(boxes.box_iou(a[:40], b[:30])), reference, rtol=1e-5, atol=1e-6)
    batched = boxes.box_iou(jnp.stack([a[:40], b[:40]]), jnp.stack([b[:30], a[:30]]))
    assert batched.shape == (2, 40, 30)
    np.testing.assert_allclose(np.asarray(batched[0]), reference, rtol=1e-5, atol=1e-6)


def test_anchors_and_decode():
    points, stride = boxes.make_anchors((64, 96))
    assert points.shape == (8 * 12 + 4 * 6 + 2 * 3, 2) and stride.shape == (points.shape[0], 1)
    np.testing.assert_array_equal(points[:3], [[0.5, 0.5], [1.5, 0.5], [2.5, 0.5]])
    np.testing.assert_array_equal(points[12], [0.5, 1.5])
    np.testing.assert_array_equal(points[96], [0.5, 0.5])
    assert stride[95, 0] == 8 and stride[96, 0] == 16 and stride[-1, 0] == 32
    with pytest.raises(ValueError):
        boxes.make_anchors((60, 96))
    # A distribution peaked on bin 3 for every side decodes to a box 3 strides from the anchor on each side.
    raw = jnp.zeros((1, points.shape[0], 64 + NC)).at[..., 3:64:16].set(30.0)
    decoded, scores = boxes.decode(raw, (64, 96))
    expected = np.concatenate([points - 3, points + 3], -1) * stride
    np.testing.assert_allclose(np.asarray(decoded[0]), expected, atol=1e-3)
    np.testing.assert_allclose(np.asarray(scores), 0.5)
    xyxy = jnp.asarray([[1.0, 2.0, 5.0, 10.0]])
    np.testing.assert_allclose(np.asarray(boxes.xyxy_to_xywh(xyxy)), [[3.0, 6.0, 4.0, 8.0]])
    np.testing.assert_allclose(np.asarray(boxes.xywh_to_xyxy(boxes.xyxy_to_xywh(xyxy))), xyxy)
    np.testing.assert_allclose(np.asarray(boxes.bbox2dist(jnp.asarray([3.0, 4.0]), xyxy[0])), [2.0, 2.0, 2.0, 6.0])


@pytest.mark.slow
def test_jit_padding_and_empty_batch():
    rng = np.random.default_rng(0)
    image_hw, b = (64, 64), 2
    a = boxes.make_anchors(image_hw)[0].shape[0]
    raw = jnp.asarray(rng.normal(0, 1, (b, a, 64 + NC)), jnp.float32)
    gts = random_gt(rng, image_hw, [3, 2])
    targets = jax_targets(gts, [xyxy for xyxy, _ in gts], 5)
    targets["boxes"][1, 2:] = np.nan  # garbage in padding slots changes nothing
    fn = lambda r, t: loss.yolov8_loss(r, t, image_hw, num_classes=NC)
    jitted = jax.jit(fn)
    eager, eager_parts = fn(raw, targets)
    per_example, parts = jitted(raw, targets)
    np.testing.assert_allclose(np.asarray(per_example), np.asarray(eager), rtol=1e-5)
    for k in ("box", "cls", "dfl"):
        assert eager_parts[k] > 0
        np.testing.assert_allclose(float(parts[k]), float(eager_parts[k]), rtol=1e-5)
    np.testing.assert_allclose(float(per_example.mean()), sum(float(v) for v in parts.values()), rtol=1e-5)

    empty = jax_targets([(np.zeros((0, 4)), np.zeros(0, int))] * b, [np.zeros((0, 4))] * b, 5)
    empty["boxes"][:] = np.nan
    per_example, parts = jitted(raw, empty)
    grad = jax.jit(jax.grad(lambda r: fn(r, empty)[0].mean()))(raw)
    assert np.all(np.isfinite(np.asarray(per_example))) and np.all(np.isfinite(np.asarray(grad)))
    assert float(parts["box"]) == 0.0 and float(parts["dfl"]) == 0.0
    expected_cls = 0.5 * np.asarray(loss.bce_with_logits(raw[..., 64:], 0.0)).sum()
    np.testing.assert_allclose(float(parts["cls"]), expected_cls, rtol=1e-5)
    assert not np.any(np.asarray(grad[..., :64]))


def test_imported_model_and_loss_equal_ultralytics_end_to_end(torch):
    """Ultralytics' yolov8n weights in jaxdl's yolov8n: jaxdl's train-mode outputs and loss equal ultralytics'."""
    from ultralytics.nn.tasks import DetectionModel

    from jaxdl import convert, models
    from tests.torch_reference import randomize_norm_stats

    torch.manual_seed(3)
    reference = DetectionModel("yolov8n.yaml", nc=NC, verbose=False)
    randomize_norm_stats(reference, 3)
    reference.args = types.SimpleNamespace(box=7.5, cls=0.5, dfl=1.5)
    model = models.create_model("yolov8n", num_outputs=NC)
    state = {k: v.clone() for k, v in reference.state_dict().items()}  # Before the train-mode forward moves them.
    variables = convert.from_torch(model, state, input_shape=(1, 64, 96, 3))
    image_hw = (64, 96)
    images = np.random.default_rng(3).standard_normal((3, 3, *image_hw)).astype(np.float32)
    gts = random_gt(np.random.default_rng(4), image_hw, [4, 0, 6])
    batch, pixel = ultralytics_batch(torch, gts, image_hw)
    reference.train()
    items = np.array([float(v) for v in v8_items(reference, reference(torch.from_numpy(images)), batch)])

    def jaxdl_loss(variables, x):
        raw, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return loss.yolov8_loss(raw, jax_targets(gts, pixel, 8), image_hw, num_classes=NC)[1]

    parts = jax.jit(jaxdl_loss)(variables, images.transpose(0, 2, 3, 1))
    ours = np.array([parts["box"], parts["cls"], parts["dfl"]])
    assert close(ours, items, rtol=1e-4, atol=1e-5), (ours, items)


def v8_items(model, preds, batch):
    """ultralytics' loss items (box, cls, dfl) of a DetectionModel's training outputs."""
    from ultralytics.utils.loss import v8DetectionLoss

    with torch_no_grad():
        return v8DetectionLoss(model)(preds, batch)[1].values()


def torch_no_grad():
    import torch

    return torch.no_grad()
