"""RandAugment, random erasing and repeated augmentation, on fixed inputs and against torchvision's ops."""

import json
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode

from jaxdl.data import pipeline, transforms
from jaxdl.data.transforms import RAND_AUGMENT_OPS, RandAugment, RandomErasing, rand_augment_op
from jaxdl.errors import ConfigError

from . import helpers

# A smooth ramp (geometric ops: resampling differences stay small) and a noisy image (pixel ops).
_Y, _X = np.mgrid[0:24, 0:32]
RAMP = np.stack([_X * 7, _Y * 9, (_X + _Y) * 4], -1).astype(np.uint8)
NOISY = np.random.default_rng(0).integers(0, 256, (24, 32, 3)).astype(np.uint8)
NOISY[..., 0] //= 2  # A channel that autocontrast must stretch.


def _torch(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).contiguous()


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.permute(1, 2, 0).numpy()


# torchvision's tensor ops (independent of PIL) at the ranges of `rand_augment_op` (level 0.5 or 1).
PIXEL_REFERENCES = {
    "identity": (0.5, 1, lambda t: t),
    "autocontrast": (0.5, 1, F.autocontrast),
    "equalize": (0.5, 1, F.equalize),
    "solarize": (0.5, 1, lambda t: F.solarize(t, 128)),  # 256 - 256 * 0.5
    "posterize": (0.5, 1, lambda t: F.posterize(t, 2)),  # 4 - int(4 * 0.5) bits
    "color": (0.5, 1, lambda t: F.adjust_saturation(t, 1.45)),  # 1 + 0.9 * 0.5
    "contrast": (0.5, -1, lambda t: F.adjust_contrast(t, 0.55)),
    "brightness": (0.5, 1, lambda t: F.adjust_brightness(t, 1.45)),
    "sharpness": (1.0, 1, lambda t: F.adjust_sharpness(t, 1.9)),
}


@pytest.mark.parametrize("op", sorted(PIXEL_REFERENCES))
def test_pixel_ops_equal_torchvision(op):
    level, sign, reference = PIXEL_REFERENCES[op]
    ours = rand_augment_op(NOISY, op, level, sign).astype(int)
    # PIL rounds the grey mean and the blends to integers where torchvision keeps floats: at most 1 apart.
    np.testing.assert_allclose(ours, _numpy(reference(_torch(NOISY))).astype(int), atol=1)


def _affine(shear=(0.0, 0.0), translate=(0.0, 0.0), angle=0.0, center=None):
    def apply(t):
        return F.affine(
            t,
            angle=angle,
            translate=list(translate),
            scale=1.0,
            shear=[math.degrees(math.atan(s)) for s in shear],
            center=center,
            interpolation=InterpolationMode.BILINEAR,
        )

    return apply


def _geometric_reference(op: str, sign: float):
    """torchvision's map of `op` at level 1 (rotations at 0.5), as torchvision's own RandAugment calls it."""
    if op == "rotate":
        return lambda t: F.rotate(t, 15.0 * sign, interpolation=InterpolationMode.BILINEAR)
    if op == "shear_x":
        return _affine(shear=(0.3 * sign, 0.0), center=[0, 0])
    if op == "shear_y":
        return _affine(shear=(0.0, 0.3 * sign), center=[0, 0])
    if op == "translate_x":
        return _affine(translate=(0.45 * 32 * sign, 0.0))
    return _affine(translate=(0.0, 0.45 * 24 * sign))


@pytest.mark.parametrize("op", ["rotate", "shear_x", "shear_y", "translate_x", "translate_y"])
@pytest.mark.parametrize("sign", [1, -1])
def test_geometric_ops_equal_torchvision(op, sign):
    level = 0.5 if op == "rotate" else 1.0
    ours = rand_augment_op(RAMP, op, level, sign, fill=0).astype(int)

    def far_from(reference) -> float:
        """The fraction of pixels more than 2 levels away (the two resamplers differ along the image's edges)."""
        return float(np.mean(np.abs(ours - _numpy(reference(_torch(RAMP))).astype(int)) > 2))

    assert far_from(_geometric_reference(op, sign)) < 0.06
    assert far_from(_geometric_reference(op, -sign)) > 0.5  # The direction matters and is right.


def test_every_op_keeps_shape_and_dtype_and_grayscale_works():
    gray = RAMP[..., :1]
    for op in RAND_AUGMENT_OPS:
        for image in (RAMP, gray):
            out = rand_augment_op(image, op, 0.9, -1)
            assert out.shape == image.shape and out.dtype == np.uint8


def test_n_ops_are_drawn_per_image_uniformly_with_m_scaling():
    params = RandAugment(n=2, m=9).draw(np.random.default_rng(0), 2000)
    chosen = [RandAugment(n=2, m=9).ops(p) for p in params]
    assert all(len(c) == 2 for c in chosen)
    names = [op for c in chosen for op, _, _ in c]
    counts = np.array([names.count(op) for op in RAND_AUGMENT_OPS])
    assert counts.sum() == 4000 and counts.min() > 4000 / 14 * 0.75  # Every op, about equally often.
    assert {level for c in chosen for _, level, _ in c} == {0.9}  # M / 10, M = 10 being each op's full range.
    # With mstd: magnitudes ~ N(m, mstd), clipped to [0, 30].
    levels = np.array([level for p in params for _, level, _ in RandAugment(n=2, m=9, mstd=0.5).ops(p)])
    assert abs(levels.mean() - 0.9) < 0.01 and abs(levels.std() - 0.05) < 0.005
    top = [level for p in params for _, level, _ in RandAugment(n=2, m=29.5, mstd=3).ops(p)]
    assert max(top) == 3.0
    # p: each drawn op runs with that probability.
    runs = [len(RandAugment(n=2, m=9, p=0.25).ops(p)) for p in params]
    assert abs(np.mean(runs) - 0.5) < 0.05


def test_rand_augment_is_deterministic_per_seed_and_parses():
    [op] = transforms.build(transforms.parse("rand_augment(n=2, m=9, mstd=0.5)"))
    batch = {"input": np.stack([RAMP, NOISY, RAMP, NOISY]), "label": np.arange(4)}
    first = op.random_map(batch, np.random.default_rng(1))
    np.testing.assert_array_equal(first["input"], op.random_map(batch, np.random.default_rng(1))["input"])
    assert not np.array_equal(first["input"], op.random_map(batch, np.random.default_rng(2))["input"])
    assert first["input"].dtype == np.uint8 and np.array_equal(first["label"], batch["label"])
    # Each image got exactly the ops its parameters name.
    params = op.draw(np.random.default_rng(1), 4)
    for b in range(4):
        expected = batch["input"][b]
        for name, level, sign in op.ops(params[b]):
            expected = rand_augment_op(expected, name, level, sign)
        np.testing.assert_array_equal(first["input"][b], expected)
    # p = 0: nothing runs. A resizing crop's float32 0..255 output is taken (rounded).
    [off] = transforms.build(transforms.parse("rand_augment(n=2, m=9, p=0.0)"))
    out = off.random_map({"input": batch["input"].astype(np.float32)}, np.random.default_rng(1))
    np.testing.assert_array_equal(out["input"], batch["input"])


def test_rand_augment_and_erasing_refuse_what_they_cannot_handle():
    for name in ("rand_augment()", "random_erasing()"):
        with pytest.raises(ValueError, match="is for image-label data"):
            transforms.build(transforms.parse(name), kinds={"input": "image", "target": "mask"})
    [augment] = transforms.build(transforms.parse("rand_augment()"))
    with pytest.raises(ValueError, match="before rescale/normalize"):
        augment.random_map({"input": RAMP[None].astype(np.float32) / 255 - 0.5}, np.random.default_rng(0))
    [erase] = transforms.build(transforms.parse("random_erasing(p=1.0)"))
    with pytest.raises(ValueError, match="after normalize"):
        erase.random_map({"input": RAMP[None]}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="rand_augment: bad"):
        RandAugment(m=31)


def _erased_boxes(p: float, seed: int = 0, size: int = 200):
    images = np.full((size, 40, 50, 3), 100.0, np.float32)  # No N(0, 1) draw comes near 100.
    out = RandomErasing(p=p).random_map({"input": images}, np.random.default_rng(seed))["input"]
    changed = np.any(out != 100.0, axis=-1)
    boxes = []
    for b in range(size):
        rows, cols = np.nonzero(changed[b])
        if len(rows):
            h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
            assert changed[b].sum() == h * w  # One filled rectangle.
            boxes.append((h, w))
    return out, changed, boxes


def test_random_erasing_boxes_stay_within_area_and_aspect_bounds():
    out, changed, boxes = _erased_boxes(1.0)
    assert len(boxes) == 200  # p = 1: every image (a box fits on the first try at these bounds, or a later one).
    hw = np.array(boxes, np.float64)
    area = hw.prod(axis=1) / (40 * 50)
    aspect = hw[:, 0] / hw[:, 1]
    # Rounding h and w to pixels moves area and aspect a little past the drawn values.
    assert area.min() >= 0.02 * 0.8 and area.max() <= 1 / 3 * 1.2
    assert aspect.min() >= 0.3 * 0.8 and aspect.max() <= 3.3 * 1.25
    noise = out[changed[..., None].repeat(3, -1)]
    assert abs(noise.mean()) < 0.02 and abs(noise.std() - 1) < 0.02  # Per-pixel N(0, 1), timm's 'pixel' mode.
    assert _erased_boxes(0.0)[2] == []  # p = 0: the identity.
    assert 0.4 < len(_erased_boxes(0.5, seed=1)[2]) / 200 < 0.6


def test_repeated_augmentation_order_counts_copies_and_process_split():
    records, batch, k = 48, 12, 3
    one = pipeline._EpochBatches(records, batch, seed=0, process_index=0, process_count=1, repeats=k)
    epoch = np.concatenate([one[i] for i in range(one.batches_per_epoch)])
    assert one.batches_per_epoch == 4 and len(epoch) == records  # The epoch keeps its length...
    values, counts = np.unique(epoch, return_counts=True)
    assert len(values) == records // k and set(counts) == {k}  # ...with 1/k of the examples, k times each.
    for i in range(2 * one.batches_per_epoch):
        global_batch = one[i]
        np.testing.assert_array_equal(global_batch, np.tile(global_batch[: batch // k], k))
        # Three processes: each holds one copy of every example of the batch; together the one-process batch.
        parts = [pipeline._EpochBatches(records, batch, 0, p, 3, repeats=k)[i] for p in range(3)]
        np.testing.assert_array_equal(np.concatenate(parts), global_batch)
        assert all(np.array_equal(part, parts[0]) for part in parts)
    # Consecutive epochs are different subsamples.
    assert not np.array_equal(one[0], one[one.batches_per_epoch])


def test_repeated_augmentation_in_the_pipeline_augments_copies_apart_and_resumes():
    splits = pipeline.Splits(
        helpers.config(
            "digits_cnn",
            dataset__repeated_augmentations=2,
            dataset__train_transforms="rand_augment(n=2, m=9)|rescale(scale=0.0625)|random_erasing(p=0.5)",
        ).dataset,
        batch_size=16,
    )
    iterator = iter(pipeline.train_loader(splits, global_batch_size=16, seed=0))
    first = next(iterator)
    np.testing.assert_array_equal(first["target"][:8], first["target"][8:])  # The copies...
    assert not np.array_equal(first["input"][:8], first["input"][8:])  # ...augmented each on its own.
    next(iterator)
    state = json.dumps(iterator.get_state())
    expected = [next(iterator) for _ in range(2)]
    resumed = iter(pipeline.train_loader(splits, global_batch_size=16, seed=0))
    resumed.set_state(json.loads(state))
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_repeated_augmentation_must_divide_the_batch():
    cfg = helpers.config("digits_cnn", dataset__repeated_augmentations=3)
    with pytest.raises(ConfigError, match=r"config\.dataset\.repeated_augmentations=3 does not divide"):
        pipeline.Splits(cfg.dataset, batch_size=16)
    with pytest.raises(ConfigError, match=r"config\.dataset\.repeated_augmentations"):
        pipeline.Splits(helpers.config("digits_cnn", dataset__repeated_augmentations=0).dataset)
