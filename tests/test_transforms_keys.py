"""Transforms that move every key with the image: masks (nearest), boxes (geometry) and box_valid.

A property test over random chains of geometric ops, then each op on a tiny
hand-made example.
"""

import numpy as np
import pytest

from jaxdl.data import transforms

KINDS = {"input": "image", "target": "mask", "boxes": "boxes", "box_valid": "box_valid", "box_classes": "other"}
IGNORE = 255
OBJECT, BACKGROUND = np.array([200, 100, 50], np.float32), np.array([20, 30, 40], np.float32)
# The rule the property test checks, after any chain of ops:
# - a mask pixel's centre lies within TOLERANCE px of its object's box when the box is valid
#   (nearest resampling of an already resampled mask may move an edge by half an input pixel);
# - a box that left the image (box_valid 0) leaves no object pixel in the mask, except edge
#   slivers: object pixels only in the outermost row or column of the output;
# - mask object pixels ERODE px inside the object show the object's colour (bilinear
#   taps at up to ~2x upscaling per op reach at most this far).
TOLERANCE, ERODE = 1.0, 4


def _ops(spec: str) -> list:
    return transforms.build(transforms.parse(spec), kinds=KINDS, ignore_index=IGNORE)


def _run(ops: list, batch: dict, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    for op in ops:
        batch = op.random_map(batch, rng) if isinstance(op, transforms.RandomTransform) else op.map(batch)
    return batch


def _scene(rng: np.random.Generator, size: int, height: int, width: int) -> dict:
    """A batch of flat backgrounds, each with one rectangle in image, mask and box (slot 1 is padding)."""
    images = np.broadcast_to(BACKGROUND.astype(np.uint8), (size, height, width, 3)).copy()
    masks = np.zeros((size, height, width), np.uint8)
    boxes = np.zeros((size, 2, 4), np.float32)
    for b in range(size):
        h, w = rng.integers(4, height // 2), rng.integers(4, width // 2)
        top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        images[b, top : top + h, left : left + w] = OBJECT.astype(np.uint8)
        masks[b, top : top + h, left : left + w] = 1
        boxes[b, 0] = (left, top, left + w, top + h)
    valid = np.array([[1, 0]] * size, np.uint8)
    return {"input": images, "target": masks, "boxes": boxes, "box_valid": valid, "box_classes": valid.astype(np.int32)}


def _chain(rng: np.random.Generator, height: int, width: int) -> str:
    """1 to 4 random geometric ops; output sizes never more than ~2x upscale an op's input."""
    parts = []
    for _ in range(rng.integers(1, 5)):
        side = int(min(height, width))
        name = rng.choice(["flip", "crop", "rrc", "center", "resize", "letterbox"])
        if name == "flip":
            parts.append("random_flip()")
        elif name == "crop":
            parts.append(f"random_crop(padding={rng.integers(2, 10)})")
        elif name == "rrc":
            size = int(rng.integers(side * 2 // 3, side + 1))
            parts.append(f"random_resized_crop(size={size}, scale=(0.3, 1.0))")
            height = width = size
        elif name == "center":
            size = int(rng.integers(side // 2, side + 1))
            parts.append(f"center_crop(size={size}, fraction={rng.uniform(0.6, 1.0):.2f})")
            height = width = size
        elif name == "resize":
            height, width = int(rng.integers(height // 2, height + 1)), int(rng.integers(width // 2, width + 1))
            parts.append(f"resize(size=({height}, {width}))")
        else:
            size = int(rng.integers(max(height, width) // 2, max(height, width) + 1))
            parts.append(f"letterbox(size={size})")
            height = width = size
    return "|".join(parts)


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    """Pixels whose (2r+1)^2 neighbourhood lies wholly in `mask` (outside the image counts as not)."""
    padded = np.pad(mask, r)
    out = np.ones_like(mask)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out &= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]]
    return out


def test_random_chains_keep_image_mask_and_boxes_aligned():
    """~20 seeded chains over batches of 32-48 px scenes: the module docstring's rules hold."""
    rng = np.random.default_rng(0)
    counts = {"valid": 0, "invalid": 0, "coloured": 0}
    for chain in range(20):
        height, width = (int(v) for v in rng.integers(32, 49, 2))
        spec = _chain(rng, height, width)
        batch = _scene(rng, 16, height, width)
        out = _run(_ops(spec), batch, seed=chain)
        assert out["target"].dtype == np.uint8, spec
        assert set(np.unique(out["target"])) <= {0, 1, IGNORE}, spec
        np.testing.assert_array_equal(out["box_classes"], batch["box_classes"])  # Ride along untouched.
        assert not out["box_valid"][:, 1].any() and not out["boxes"][:, 1].any(), spec  # Padding stays padding.
        for b in range(16):
            obj = out["target"][b] == 1
            ys, xs = np.nonzero(obj)
            x0, y0, x1, y1 = out["boxes"][b, 0]
            if out["box_valid"][b, 0]:
                counts["valid"] += 1
                assert x0 < x1 and y0 < y1, spec
                assert 0 <= x0 and x1 <= obj.shape[1] and 0 <= y0 and y1 <= obj.shape[0], spec
                assert np.all(xs + 0.5 >= x0 - TOLERANCE) and np.all(xs + 0.5 <= x1 + TOLERANCE), spec
                assert np.all(ys + 0.5 >= y0 - TOLERANCE) and np.all(ys + 0.5 <= y1 + TOLERANCE), spec
            else:
                counts["invalid"] += 1
                assert not out["boxes"][b, 0].any(), spec
                assert not obj[1:-1, 1:-1].any(), spec  # At most an edge sliver.
            interior = _erode(obj, ERODE)
            if interior.any():
                counts["coloured"] += 1
                np.testing.assert_allclose(
                    out["input"][b][interior], np.broadcast_to(OBJECT, (interior.sum(), 3)), atol=0.5, err_msg=spec
                )
    # The chains exercised both outcomes and the colour check.
    assert counts["valid"] > 100 and counts["invalid"] > 5 and counts["coloured"] > 50, counts


# --- each op on a tiny example ----------------------------------------------------


def _tiny(height: int = 4, width: int = 6) -> dict:
    """One image whose pixel values are their own index, a mask of ids, one box and a padding slot."""
    image = np.arange(height * width * 3, dtype=np.uint8).reshape(1, height, width, 3)
    mask = (np.arange(height * width) % 3).astype(np.uint8).reshape(1, height, width)
    boxes = np.array([[[1, 1, 3, 2], [0, 0, 0, 0]]], np.float32)
    return {
        "input": image,
        "target": mask,
        "boxes": boxes,
        "box_valid": np.array([[1, 0]], np.uint8),
        "box_classes": np.array([[2, 0]], np.int32),
        "label": np.array([7]),
    }


def test_random_flip_mirrors_image_mask_and_boxes():
    batch = _tiny()
    [op] = _ops("random_flip(p=1.0)")
    out = _run([op], batch)
    np.testing.assert_array_equal(out["input"], batch["input"][:, :, ::-1])
    np.testing.assert_array_equal(out["target"], batch["target"][:, :, ::-1])
    np.testing.assert_array_equal(out["boxes"][0, 0], [3, 1, 5, 2])  # x -> 6 - x, ends swapped.
    np.testing.assert_array_equal(out["box_valid"], [[1, 0]])
    assert out["input"].dtype == np.uint8 and out["target"].dtype == np.uint8
    np.testing.assert_array_equal(out["label"], [7])


def test_random_crop_shifts_everything_and_pads_masks_with_ignore():
    batch = _tiny()
    [op] = _ops("random_crop(padding=2)")
    top, left = 1, 3  # The window's corner in the padded image: content moves by (+1, -1).
    out = op.apply(batch, np.array([[top, left]]))
    padded_mask = np.pad(batch["target"][0], 2, constant_values=IGNORE)
    np.testing.assert_array_equal(out["target"][0], padded_mask[top : top + 4, left : left + 6])
    padded_image = np.pad(batch["input"][0], [(2, 2), (2, 2), (0, 0)])
    np.testing.assert_array_equal(out["input"][0], padded_image[top : top + 4, left : left + 6])
    np.testing.assert_array_equal(out["boxes"][0, 0], [0, 2, 2, 3])  # (1, 1, 3, 2) + (-1, 1).
    np.testing.assert_array_equal(out["box_valid"], [[1, 0]])
    assert out["input"].dtype == np.uint8 and out["target"].dtype == np.uint8


def test_boxes_that_leave_the_image_become_invalid():
    """A box moved wholly outside the output gets box_valid 0 and zero coordinates; touching the edge counts."""
    [op] = _ops("random_crop(padding=3)")
    batch = _tiny()
    batch["boxes"] = np.array([[[0, 0, 1, 1], [5, 3, 6, 4]]], np.float32)
    batch["box_valid"] = np.array([[1, 1]], np.uint8)
    out = op.apply(batch, np.array([[0, 0]]))  # Window at top-left of the padded image: shift by +3.
    np.testing.assert_array_equal(out["boxes"][0], [[3, 3, 4, 4], [0, 0, 0, 0]])  # (8, 6, 9, 7) is outside.
    np.testing.assert_array_equal(out["box_valid"], [[1, 0]])
    out = op.apply(batch, np.array([[6, 6]]))  # Shift by -3: the first box leaves at the top-left.
    np.testing.assert_array_equal(out["boxes"][0], [[0, 0, 0, 0], [2, 0, 3, 1]])
    np.testing.assert_array_equal(out["box_valid"], [[0, 1]])
    # Once invalid, a box stays invalid even where it would be back inside.
    again = op.apply(out, np.array([[3, 3]]))
    np.testing.assert_array_equal(again["box_valid"], [[0, 1]])


def test_resize_doubles_with_nearest_masks_and_bilinear_images():
    batch = _tiny()
    [op] = _ops("resize(size=(8, 12))")
    out = op.map(batch)
    np.testing.assert_array_equal(out["target"][0], batch["target"][0].repeat(2, 0).repeat(2, 1))
    assert out["target"].dtype == np.uint8 and out["input"].dtype == np.float32
    np.testing.assert_allclose(out["input"][0], transforms.resized_crop(batch["input"][0], (0, 0, 4, 6), (8, 12)))
    np.testing.assert_array_equal(out["boxes"][0, 0], [2, 2, 6, 4])
    square = _ops("resize(size=3)")[0].map(batch)
    assert square["input"].shape == (1, 3, 3, 3) and square["target"].shape == (1, 3, 3)
    np.testing.assert_allclose(square["boxes"][0, 0], [0.5, 0.75, 1.5, 1.5])


def test_letterbox_keeps_aspect_and_pads_with_fill_and_ignore():
    batch = _tiny(height=2, width=4)
    [op] = _ops("letterbox(size=8, fill=-1.0)")
    out = op.map(batch)
    assert out["input"].shape == (1, 8, 8, 3) and out["target"].shape == (1, 8, 8)
    # Scale 2: the 4 x 8 content sits at rows 2..5.
    np.testing.assert_array_equal(out["target"][0, 2:6], batch["target"][0].repeat(2, 0).repeat(2, 1))
    assert (out["target"][0, :2] == IGNORE).all() and (out["target"][0, 6:] == IGNORE).all()
    assert (out["input"][0, :2] == -1).all() and (out["input"][0, 6:] == -1).all()
    np.testing.assert_allclose(out["input"][0, 2:6], transforms.resized_crop(batch["input"][0], (0, 0, 2, 4), (4, 8)))
    np.testing.assert_array_equal(out["boxes"][0, 0], [2, 4, 6, 6])  # (1, 1, 3, 2) * 2 + (0, 2).


def test_letterbox_and_resize_take_images_of_different_sizes():
    rng = np.random.default_rng(0)
    shapes = [(10, 6), (5, 12)]
    batch = {
        "input": [rng.integers(0, 255, (h, w, 3)).astype(np.uint8) for h, w in shapes],
        "target": [np.ones((h, w), np.uint8) for h, w in shapes],
        "boxes": np.array([[[0, 0, 6, 10]], [[0, 0, 12, 5]]], np.float32),
        "box_valid": np.ones((2, 1), np.uint8),
    }
    out = _ops("letterbox(size=12)")[0].map(batch)
    assert out["input"].shape == (2, 12, 12, 3) and out["target"].shape == (2, 12, 12)
    # Each image's content: 12 x 7 centred (cols 2..8), then 5 x 12 centred (rows 3..7).
    np.testing.assert_array_equal(out["boxes"][:, 0], [[2, 0, 9, 12], [0, 3, 12, 8]])
    assert (out["target"][0] == 1).sum() == 12 * 7 and (out["target"][1] == 1).sum() == 5 * 12
    out = _ops("resize(size=4)")[0].map(batch)
    assert out["input"].shape == (2, 4, 4, 3) and (out["target"] == 1).all()
    np.testing.assert_array_equal(out["boxes"][:, 0], [[0, 0, 4, 4], [0, 0, 4, 4]])


def test_center_crop_crops_masks_and_boxes_alike():
    batch = _tiny(height=6, width=6)
    batch["boxes"] = np.array([[[0, 2, 3, 5], [0, 0, 0, 0]]], np.float32)
    out = _ops("center_crop(size=3, fraction=0.5)")[0].map(batch)  # The 3 x 3 window at (1, 1).
    np.testing.assert_array_equal(out["target"][0], batch["target"][0, 1:4, 1:4])
    np.testing.assert_allclose(out["input"][0], batch["input"][0, 1:4, 1:4])
    np.testing.assert_array_equal(out["boxes"][0, 0], [0, 1, 2, 3])  # (-1, 1, 2, 4), clipped to 3 x 3.


def test_random_resized_crop_moves_masks_and_boxes_with_its_box():
    batch = _tiny(height=8, width=8)
    batch["target"] = np.arange(64, dtype=np.uint8).reshape(1, 8, 8)
    [op] = _ops("random_resized_crop(size=4, scale=(0.2, 0.5))")
    u = op.draw(np.random.default_rng(0), 1)[0]
    top, left, h, w = op.box(8, 8, u)
    out = _run([op], batch)
    np.testing.assert_array_equal(out["target"][0], transforms.nearest_crop(batch["target"][0], (top, left, h, w), 4))
    np.testing.assert_allclose(out["input"][0], transforms.resized_crop(batch["input"][0], (top, left, h, w), 4))
    sx, sy = 4 / w, 4 / h
    expected = np.array([(1 - left) * sx, (1 - top) * sy, (3 - left) * sx, (2 - top) * sy])
    if out["box_valid"][0, 0]:
        np.testing.assert_allclose(out["boxes"][0, 0], np.clip(expected, 0, 4), rtol=1e-6)
    else:
        assert np.clip(expected[2], 0, 4) <= np.clip(expected[0], 0, 4) or expected[3] <= 0 or expected[1] >= 4


def test_nearest_crop_takes_the_pixel_under_each_output_centre():
    mask = np.arange(6, dtype=np.int16).reshape(1, 6)
    np.testing.assert_array_equal(transforms.nearest_crop(mask, (0, 0, 1, 6), (1, 3)), [[1, 3, 5]])
    np.testing.assert_array_equal(transforms.nearest_crop(mask, (0, 0, 1, 6), (1, 4)), [[0, 2, 3, 5]])
    assert transforms.nearest_crop(mask, (0, 0, 1, 6), (1, 4)).dtype == np.int16


def test_map_mask_rewrites_listed_ids_only():
    batch = {"input": np.zeros((1, 2, 2, 3), np.uint8), "target": np.array([[[1, 2], [3, 255]]], np.uint8)}
    out = _ops("map_mask(ids={1: 1, 2: 0, 3: 255})")[0].map(batch)
    np.testing.assert_array_equal(out["target"], [[[1, 0], [255, 255]]])
    assert out["target"].dtype == np.uint8
    with pytest.raises(ValueError, match="map_mask: ids must be a dict"):
        _ops("map_mask(ids=(1, 2))")


def test_label_targets_and_unkinded_keys_are_untouched():
    """With the default kinds only the input moves (today's behaviour)."""
    batch = {"input": np.arange(12, dtype=np.uint8).reshape(1, 2, 6, 1), "target": np.array([[1, 2, 3, 4, 5, 6]])}
    out = transforms.build(transforms.parse("random_flip(p=1.0)|resize(size=(4, 12))"))
    out = _run(out, batch)
    np.testing.assert_array_equal(out["target"], batch["target"])
    assert out["input"].shape == (1, 4, 12, 1)


def test_build_checks_kinds():
    with pytest.raises(ValueError, match="box_valid key beside them"):
        transforms.build([], kinds={"input": "image", "boxes": "boxes"})
    with pytest.raises(ValueError, match="unknown kind 'pixels'"):
        transforms.build([], kinds={"input": "pixels"})
    with pytest.raises(ValueError, match="resize: bad size"):
        transforms.build(transforms.parse("resize(size=(1, 2, 3))"))


def test_random_ops_on_masks_do_not_depend_on_the_process_split():
    """A process's half of a global batch moves its masks and boxes as the one-process run does."""
    batch = _scene(np.random.default_rng(1), 8, 20, 24)
    for spec in ["random_crop(padding=3)", "random_flip()", "random_resized_crop(size=12)"]:
        [whole_op] = _ops(spec)
        whole = whole_op.random_map(batch, np.random.default_rng(5))
        [half_op] = transforms.build(transforms.parse(spec), kinds=KINDS, ignore_index=IGNORE, global_batch=8, offset=4)
        half = half_op.random_map({k: v[4:] for k, v in batch.items()}, np.random.default_rng(5))
        for key in batch:
            np.testing.assert_array_equal(half[key], whole[key][4:], err_msg=f"{spec} {key}")
