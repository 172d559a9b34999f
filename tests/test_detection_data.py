"""Detection batches: objects read as padded pixel boxes, checked per record; mosaic; voc and coco via tfds."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxdl.data import objects, pipeline, shapes, transforms
from jaxdl.errors import ConfigError
from tests import helpers

SIZES = (48, 16, 12)


def _objects_config(data_dir, **values):
    """shapes_yolov8n's dataset section on a small shapes build, plus `values`."""
    dataset = helpers.config("shapes_yolov8n").dataset
    settings = {"data_dir": str(data_dir), "split_sizes": SIZES, "train_transforms": "", "eval_transforms": ""}
    for key, value in {**settings, **values}.items():
        dataset[key] = value
    return dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


def test_shapes_objects_are_read_as_padded_zero_based_boxes(data_dir):
    config = _objects_config(data_dir, max_boxes=6)
    splits = pipeline.Splits(config, batch_size=8, num_classes=3)
    batches = list(pipeline.eval_batches(splits, "test", global_batch_size=8))
    truth = shapes.generate(SIZES[2], 2)
    got = {k: np.concatenate([b[k] for b in batches])[: SIZES[2]] for k in ("target", "boxes", "box_valid")}
    assert set(batches[0]) == {"input", "target", "boxes", "box_valid", "mask"}
    assert got["boxes"].shape == (12, 6, 4) and got["target"].dtype == np.int32
    valid = truth["box_valid"].astype(bool)
    np.testing.assert_array_equal(got["box_valid"][:, :4], valid)
    assert not got["box_valid"][:, 4:].any()
    np.testing.assert_array_equal(got["boxes"][:, :4], truth["boxes"])
    np.testing.assert_array_equal(got["target"][:, :4], np.where(valid, truth["box_classes"] - 1, 0))


def test_flips_move_boxes_and_keep_classes(data_dir):
    config = _objects_config(data_dir, train_transforms="random_flip(p=1.0)")
    splits = pipeline.Splits(config, batch_size=8, num_classes=3)
    batch = next(iter(pipeline.train_loader(splits, global_batch_size=8, seed=0)))
    source = splits.source("train")
    for b in range(8):
        # Which record is this? The flipped image matches exactly one.
        record = next(
            source[i] for i in range(len(source)) if np.array_equal(source[i]["image"][:, ::-1], batch["input"][b])
        )
        n = int(record["box_valid"].sum())
        x0, y0, x1, y1 = record["boxes"][:n].T
        np.testing.assert_allclose(batch["boxes"][b, :n], np.stack([64 - x1, y0, 64 - x0, y1], 1))
        np.testing.assert_array_equal(batch["target"][b, :n], record["box_classes"][:n] - 1)


def _mosaic(batch, p=1.0, seed=0):
    kinds = {
        "input": transforms.IMAGE,
        "target": transforms.BOX_CLASSES,
        "boxes": transforms.BOXES,
        "box_valid": transforms.BOX_VALID,
    }
    [op] = transforms.build(transforms.parse(f"mosaic(p={p})"), kinds=kinds)
    return op.random_map(dict(batch), np.random.default_rng(seed))


def test_mosaic_keeps_every_box_on_its_pixels():
    """Each object is painted in a colour of its own: after a mosaic, a valid box covers (part of) its colour."""
    n, size, g = 6, 32, 3
    images = np.zeros((n, size, size, 3), np.uint8)
    boxes = np.zeros((n, g, 4), np.float32)
    classes = np.zeros((n, g), np.int32)
    rng = np.random.default_rng(1)
    colours = {}
    for b in range(n):
        for j in range(2):
            x0, y0 = rng.integers(0, 5) + 18 * j, rng.integers(0, 20)  # Side by side: objects never overlap.
            w, h = rng.integers(6, 11, 2)
            colour = (b * 2 + j + 1) * 10
            images[b, y0 : y0 + h, x0 : x0 + w] = colour
            boxes[b, j] = (x0, y0, x0 + w, y0 + h)
            classes[b, j] = colour
            colours[colour] = (b, j)
    valid = (classes > 0).astype(np.uint8)
    batch = {"input": images, "target": classes, "boxes": boxes, "box_valid": valid}
    seen = 0
    for seed in range(5):
        out = _mosaic(batch, seed=seed)
        assert out["input"].shape == images.shape and out["boxes"].shape == boxes.shape
        for b in range(n):
            for (x0, y0, x1, y1), cls, v in zip(out["boxes"][b], out["target"][b], out["box_valid"][b], strict=True):
                if not v:
                    assert cls == 0 and not (x1 - x0)
                    continue
                seen += 1
                inside = out["input"][b, int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1)), 0]
                # The box is exactly the visible part of its object: it is all its colour.
                assert (inside == cls).all(), (seed, b, cls)
                assert x1 - x0 >= 2 and y1 - y0 >= 2
    assert seen > n * 5  # Most mosaics hold more objects than one image.


def test_mosaic_off_leaves_the_batch_as_it_was():
    rng = np.random.default_rng(0)
    batch = {
        "input": rng.integers(0, 255, (4, 32, 32, 3)).astype(np.uint8),
        "target": np.array([[1, 0]] * 4, np.int32),
        "boxes": np.array([[[1, 2, 10, 12], [0, 0, 0, 0]]] * 4, np.float32),
        "box_valid": np.array([[1, 0]] * 4, np.uint8),
    }
    out = _mosaic(batch, p=0.0)
    for key in batch:
        np.testing.assert_array_equal(out[key], batch[key])


def test_mosaic_partners_come_from_the_split_whatever_the_process_layout(data_dir, monkeypatch):
    """Each of 2 simulated processes reads its half of the global batch: together they equal one process's batch;
    the partners are records of the whole split (not only of the batch)."""
    import jax

    config = _objects_config(data_dir, train_transforms="mosaic(p=0.7)|random_flip()")
    splits = pipeline.Splits(config, batch_size=8, num_classes=3)

    def batches(index: int, count: int) -> list[dict]:
        monkeypatch.setattr(jax, "process_index", lambda: index)
        monkeypatch.setattr(jax, "process_count", lambda: count)
        loader = iter(pipeline.train_loader(splits, global_batch_size=8, seed=3))
        return [next(loader) for _ in range(3)]

    whole, halves = batches(0, 1), [batches(i, 2) for i in range(2)]
    for step, batch in enumerate(whole):
        for key, value in batch.items():
            np.testing.assert_array_equal(np.concatenate([h[step][key] for h in halves]), value, err_msg=key)
    # The pipeline hands the mosaic a reader of the whole split, by record index, through the ops before it.
    [op] = [op for op in splits.operations("train", train=True, global_batch=8) if isinstance(op, transforms.Mosaic)]
    assert op.num_records == SIZES[0] and op.partners is not None
    assert op.partners(np.array([5, 7]))["input"].shape == (2, 64, 64, 3)


def test_crowd_flags_and_areas_move_with_their_boxes():
    """A crop drops a box with its flags in its slot; a resize scales areas like w*h; mosaic gathers both."""
    kinds = {
        "input": transforms.IMAGE,
        "target": transforms.BOX_CLASSES,
        "boxes": transforms.BOXES,
        "box_valid": transforms.BOX_VALID,
        "box_crowd": transforms.BOX_CLASSES,
        "box_area": transforms.BOX_AREA,
    }
    batch = {
        "input": np.zeros((2, 32, 32, 3), np.uint8),
        "target": np.array([[1, 2], [0, 1]], np.int32),
        "boxes": np.array([[[1, 1, 9, 9], [20, 20, 30, 26]], [[2, 2, 6, 6], [0, 0, 0, 0]]], np.float32),
        "box_valid": np.array([[1, 1], [1, 0]], np.uint8),
        "box_crowd": np.array([[0, 1], [1, 0]], np.uint8),
        "box_area": np.array([[50.0, 40.0], [12.0, 0.0]], np.float32),
    }
    [resize] = transforms.build(transforms.parse("resize(size=(16, 64))"), kinds=kinds)
    out = resize.map(dict(batch))
    np.testing.assert_allclose(out["box_area"], batch["box_area"] * 0.5 * 2)  # Scales (x 2, y 0.5).
    np.testing.assert_array_equal(out["box_crowd"], batch["box_crowd"])
    [crop] = transforms.build(transforms.parse("random_crop(padding=12)"), kinds=kinds)
    out = crop.apply(dict(batch), np.array([[24, 24], [12, 12]]))  # Image 0 shifted by -12: box 0 leaves it.
    np.testing.assert_array_equal(out["box_valid"], [[0, 1], [1, 0]])
    np.testing.assert_array_equal(out["box_area"], batch["box_area"])  # A crop keeps an annotation's area.
    [mosaic] = transforms.build(transforms.parse("mosaic(p=1.0)"), kinds=kinds)
    out = mosaic.apply(dict(batch), np.array([[0.0, 0.5, 0.5, 0.5, 0.0, 0.0], [0.0, 0.5, 0.5, 0.5, 0.0, 0.0]]))
    # Offset (0, 0): each output is its own image, whose boxes keep their flags and areas in their slots.
    for key in ("box_crowd", "box_area", "target"):
        np.testing.assert_array_equal(out[key], np.where(batch["box_valid"], batch[key], 0), err_msg=key)
    with pytest.raises(ValueError, match=r"mosaic must come before the random transforms \(random_flip\)"):
        transforms.build(transforms.parse("random_flip()|mosaic()"), kinds=kinds)


# --- bad records ---------------------------------------------------------------------


def _reader(**values):
    config = helpers.config("shapes_yolov8n").dataset
    for key, value in values.items():
        config[key] = value
    return objects.ObjectReader(config, "train", num_classes=3)


@pytest.mark.parametrize(
    "box, cls, message",
    [
        ((-2, 0, 10, 10), 1, r"record 7 .* box 0 \(-2, 0, 10, 10\) that lies outside its 64x64 image"),
        ((5, 5, 70, 10), 1, "lies outside its 64x64 image"),
        ((5, 5, 5, 10), 1, "has zero or negative width or height"),
        ((5, 9, 8, 4), 1, "has zero or negative width or height"),
        ((5, 5, 10, 10), 4, r"object 0 of class 4 .*not in \[0, task.num_classes=3\)"),
    ],
)
def test_a_bad_object_is_one_line_naming_the_record(box, cls, message):
    record = {
        "boxes": np.array([box], np.float32),
        "box_classes": np.array([cls]),
        "box_valid": np.array([1], np.uint8),
    }
    with pytest.raises(ConfigError, match=message) as error:
        _reader().read([record], np.array([[64, 64]]), np.array([7]))
    assert "\n" not in str(error.value)
    # The same check on stacked columns (an in-memory source).
    columns = {k: v[None] for k, v in record.items()}
    with pytest.raises(ConfigError, match=message):
        _reader().read_columns(columns, np.array([[64, 64]]), np.array([7]))


def test_more_objects_than_max_boxes_names_the_key():
    record = {
        "boxes": np.tile([[1, 1, 5, 5]], (5, 1)).astype(np.float32),
        "box_classes": np.ones(5),
        "box_valid": np.ones(5),
    }
    with pytest.raises(ConfigError, match=r"record 3 .* holds 5 objects, more than config.dataset.max_boxes=4"):
        _reader(max_boxes=4).read([record], np.array([[64, 64]]), np.array([3]))
    out = _reader(max_boxes=5).read([record], np.array([[64, 64]]), np.array([3]))
    assert out["box_valid"].sum() == 5 and (out["target"] == 0).all()


def test_bad_objects_in_a_run_stop_it_with_the_record(data_dir):
    """The shapes classes 1..3 without the offset: class 3 is not below num_classes=3."""
    config = _objects_config(data_dir, box_class_offset=0)
    splits = pipeline.Splits(config, batch_size=8, num_classes=3)
    with pytest.raises(ConfigError, match=r"record \d+ of split 'test' of shapes has object \d of class 3"):
        list(pipeline.eval_batches(splits, "test", global_batch_size=8))


def test_object_keys_are_checked_before_reading(data_dir):
    with pytest.raises(ConfigError, match="box_format='yxyx' is not valid"):
        pipeline.Splits(_objects_config(data_dir, box_format="yxyx"), batch_size=8)
    with pytest.raises(ConfigError, match="dataset.boxes_key='bbox' is not a feature of shapes"):
        pipeline.Splits(_objects_config(data_dir, boxes_key="bbox"), batch_size=8)
    with pytest.raises(ConfigError, match="extra_keys holds 'boxes'"):
        pipeline.Splits(_objects_config(data_dir, extra_keys=("boxes", "box_valid")), batch_size=8)


# --- voc and coco through tfds -----------------------------------------------------------


def _tfds_records(n, seed, crowd=False, num_classes=5):
    """Records as tfds' voc and coco hold them: images of several sizes, normalised (ymin, xmin, ymax, xmax)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        h, w = int(rng.integers(40, 80)), int(rng.integers(40, 80))
        k = int(rng.integers(0, 4))  # Some images hold no object.
        lo = rng.uniform(0, 0.5, (k, 2))
        hi = lo + rng.uniform(0.1, 0.5, (k, 2))
        bbox = np.concatenate([lo, np.minimum(hi, 1.0)], axis=1).astype(np.float32)
        objects_ = {"bbox": bbox, "label": rng.integers(0, num_classes, k)}
        if crowd:
            objects_["is_crowd"] = np.arange(k) == 1
            objects_["area"] = rng.integers(1, 200, k)  # COCO's segment areas, in the image's pixels.
        records.append({"image": rng.integers(0, 255, (h, w, 3)).astype(np.uint8), "objects": objects_, "index": i})
    return records


@pytest.mark.parametrize("name", ["voc/2007", "coco/2017"])
def test_tfds_detection_datasets_read_through_the_same_path(name):
    records = _tfds_records(12, seed=len(name), crowd=name.startswith("coco"))
    cfg = helpers.config("coco_yolov8n")
    dataset = cfg.dataset
    dataset.name = name
    coco = name.startswith("coco")
    dataset.box_crowd_key = "objects/is_crowd" if coco else ""
    dataset.box_area_key = "objects/area" if coco else ""
    dataset.max_boxes = 5
    dataset.train_transforms = dataset.eval_transforms = "letterbox(size=64)"
    with tfds.testing.mock_data(num_examples=12, as_data_source_fn=lambda self, split, **kw: records):
        splits = pipeline.Splits(dataset, batch_size=4, num_classes=5)
        batches = list(pipeline.eval_batches(splits, "validation", global_batch_size=4))
    assert len(batches) == 3
    for start, batch in zip(range(0, 12, 4), batches, strict=True):
        assert batch["input"].shape == (4, 64, 64, 3)
        for b in range(4):
            record = records[start + b]
            h, w = record["image"].shape[:2]
            keep = np.ones(len(record["objects"]["label"]), bool)  # Crowds are kept, flagged.
            ymin, xmin, ymax, xmax = record["objects"]["bbox"][keep].T
            s = min(64 / h, 64 / w)
            inner = np.round(np.array([h, w]) * s)
            top, left = (64 - inner) // 2
            sy, sx = inner / [h, w]
            expected = np.stack(
                [xmin * w * sx + left, ymin * h * sy + top, xmax * w * sx + left, ymax * h * sy + top], 1
            )
            n = int(keep.sum())
            assert batch["box_valid"][b].sum() == n
            np.testing.assert_allclose(batch["boxes"][b, :n], expected, atol=1e-3)
            np.testing.assert_array_equal(batch["target"][b, :n], record["objects"]["label"][keep])
            if coco:  # Crowd flags ride in their slots; areas scale with the letterbox, like w*h.
                np.testing.assert_array_equal(batch["box_crowd"][b, :n], record["objects"]["is_crowd"])
                np.testing.assert_allclose(batch["box_area"][b, :n], record["objects"]["area"] * sx * sy, rtol=1e-5)
                assert not batch["box_crowd"][b, n:].any() and not batch["box_area"][b, n:].any()
            else:
                assert "box_crowd" not in batch and "box_area" not in batch


def test_an_area_per_box_that_does_not_fit_the_boxes_is_one_line():
    records = _tfds_records(4, seed=3, crowd=True)
    records[2]["objects"]["area"] = np.ones(len(records[2]["objects"]["label"]) + 1)
    dataset = helpers.config("coco_yolov8n").dataset
    dataset.max_boxes = 5
    dataset.train_transforms = dataset.eval_transforms = "letterbox(size=64)"
    with tfds.testing.mock_data(num_examples=4, as_data_source_fn=lambda self, split, **kw: records):
        splits = pipeline.Splits(dataset, batch_size=4, num_classes=5)
        with pytest.raises(
            ConfigError, match=r"box_area_key: record 2 of split 'validation' .* values of objects/area"
        ):
            list(pipeline.eval_batches(splits, "validation", global_batch_size=4))
