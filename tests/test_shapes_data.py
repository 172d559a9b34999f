"""The `shapes` dataset, mask and box batches through the grain pipeline, and oxford_iiit_pet's path."""

import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxdl import parallel
from jaxdl.data import datasets, pipeline, shapes
from jaxdl.errors import ConfigError
from tests import helpers

SIZES = (48, 16, 12)
EXTRA = ("boxes", "box_classes", "box_valid")


def _dataset_config(data_dir, **values):
    """digits_cnn's dataset section pointed at `shapes` with masks and boxes, plus `values`."""
    dataset = helpers.config("digits_cnn").dataset
    settings = {
        "name": "shapes",
        "data_dir": str(data_dir),
        "input_key": "image",
        "target_key": "segmentation_mask",
        "target_kind": "mask",
        "extra_keys": EXTRA,
        "ignore_index": 255,
        "split_sizes": SIZES,
        "train_transforms": "",
        "eval_transforms": "",
        **values,
    }
    with dataset.unlocked():  # Works before and after configs/base.py holds the new keys.
        for key, value in settings.items():
            dataset[key] = value
    return dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


def _records(source) -> dict:
    records = [source[i] for i in range(len(source))]
    return {key: np.stack([np.asarray(r[key]) for r in records]) for key in records[0]}


# --- the generator and the builder ----------------------------------------------------


def test_generation_is_deterministic_per_seed_and_fast():
    start = time.perf_counter()
    shapes.generate(2400, 0)
    elapsed = time.perf_counter() - start
    assert elapsed < 10, elapsed  # ~1-2 s on an idle core; a busy shared CPU may take a few times that.
    first, again, other = shapes.generate(200, 0), shapes.generate(200, 0), shapes.generate(200, 1)
    for key in first:
        assert first[key].tobytes() == again[key].tobytes(), key
    assert first["image"].tobytes() != other["image"].tobytes()


def test_records_are_consistent():
    """Classes in range; every visible mask pixel lies in a valid box of its class; boxes hold their pixels."""
    data = shapes.generate(300, 3)
    assert data["image"].shape == (300, 64, 64, 3) and data["image"].dtype == np.uint8
    assert data["segmentation_mask"].shape == (300, 64, 64) and data["segmentation_mask"].dtype == np.uint8
    assert data["boxes"].shape == (300, 4, 4) and data["boxes"].dtype == np.float32
    assert set(np.unique(data["segmentation_mask"])) == {0, 1, 2, 3}
    valid = data["box_valid"].astype(bool)
    np.testing.assert_array_equal(data["num_objects"], valid.sum(axis=1))
    assert (data["num_objects"] >= 1).all() and (data["num_objects"] <= 4).all()
    assert np.all(np.diff(valid.astype(int), axis=1) <= 0)  # Valid boxes first.
    assert set(np.unique(data["box_classes"][valid])) == {1, 2, 3} and not data["box_classes"][~valid].any()
    assert not data["boxes"][~valid].any()
    for b in range(300):
        mask = data["segmentation_mask"][b]
        covered = np.zeros_like(mask, bool)
        for (x0, y0, x1, y1), cls in zip(data["boxes"][b][valid[b]], data["box_classes"][b][valid[b]], strict=True):
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            inside = np.zeros_like(covered)
            inside[int(y0) : int(y1), int(x0) : int(x1)] = True
            assert (mask[inside] == cls).any()  # Each valid box shows part of its object.
            covered |= inside & (mask == cls)
        # Every object pixel lies inside a box of its class.
        np.testing.assert_array_equal(covered, mask > 0)
        # Objects are drawn flat: background and object colours meet only at the mask's edges.
        assert (data["image"][b][mask == 0] != 0).any()


def test_builder_honours_split_sizes_and_rebuilds_identically(data_dir, tmp_path):
    for split, size in zip(shapes.SPLITS, SIZES, strict=True):
        source = datasets.load_source("shapes", split, str(data_dir), SIZES)
        assert len(source) == size
    assert (data_dir / "shapes" / "48_16_12").is_dir()
    other = datasets.load_source("shapes", "test", str(data_dir), (8, 4, 2))
    assert len(other) == 2 and (data_dir / "shapes" / "8_4_2").is_dir()
    built = _records(datasets.load_source("shapes", "validation", str(data_dir), SIZES))
    fresh = _records(datasets.load_source("shapes", "validation", str(tmp_path), SIZES))
    generated = shapes.generate(SIZES[1], 1)
    for key in generated:
        assert built[key].dtype == generated[key].dtype, key
        assert built[key].tobytes() == fresh[key].tobytes() == generated[key].tobytes(), key


# --- batches of masks and boxes ---------------------------------------------------------


def _assert_aligned(batch, ignore=255, tolerance=1.0):
    """Every labelled mask pixel's centre lies within `tolerance` of a valid box of its class."""
    masks, boxes, classes, valid = batch["target"], batch["boxes"], batch["box_classes"], batch["box_valid"]
    for b in range(len(masks)):
        ys, xs = np.nonzero((masks[b] > 0) & (masks[b] != ignore))
        labels = masks[b][ys, xs]
        ok = np.zeros(len(ys), bool)
        for (x0, y0, x1, y1), cls, v in zip(boxes[b], classes[b], valid[b], strict=True):
            if v:
                ok |= (
                    (labels == cls)
                    & (xs + 0.5 >= x0 - tolerance)
                    & (xs + 0.5 <= x1 + tolerance)
                    & (ys + 0.5 >= y0 - tolerance)
                    & (ys + 0.5 <= y1 + tolerance)
                )
        assert ok.all(), (b, np.count_nonzero(~ok))


def test_train_loader_keeps_masks_and_boxes_aligned_through_crops_and_flips(data_dir):
    config = _dataset_config(data_dir, train_transforms="random_resized_crop(size=48, scale=(0.3, 1.0))|random_flip()")
    splits = pipeline.Splits(config, batch_size=16, num_classes=4)
    loader = iter(pipeline.train_loader(splits, global_batch_size=16, seed=0))
    batches = [next(loader) for _ in range(4)]
    batch = batches[0]
    assert set(batch) == {"input", "target", *EXTRA}
    assert batch["input"].shape == (16, 48, 48, 3) and batch["input"].dtype == np.float32
    assert batch["target"].shape == (16, 48, 48) and batch["target"].dtype == np.uint8
    assert batch["boxes"].shape == (16, 4, 4) and batch["boxes"].dtype == np.float32
    assert batch["box_classes"].dtype == np.int32 and batch["box_valid"].shape == (16, 4)
    for b in batches:
        _assert_aligned(b)
    # The crops moved things: objects lie wholly inside the 64 px images, but some boxes were cut at the crop's edge.
    edges = [np.isin(b["boxes"][b["box_valid"] == 1], (0.0, 48.0)).any(axis=-1) for b in batches]
    assert np.concatenate(edges).sum() > 5
    # Placement on the mesh, through the prefetching iterator, takes every key as it is.
    cfg = helpers.config("digits_cnn")
    strategy = parallel.make_strategy("jit", parallel.build_mesh(cfg.parallel, 16))
    loader = pipeline.train_loader(splits, global_batch_size=16, seed=0)
    iterator = pipeline.DeviceIterator(loader, strategy.place_batch, prefetch=2)
    try:
        placed = next(iterator)
    finally:
        iterator.close()
    for key in batch:
        np.testing.assert_array_equal(np.asarray(placed[key]), batch[key])


def test_eval_batches_pad_masks_and_boxes(data_dir):
    config = _dataset_config(data_dir, eval_transforms="letterbox(size=40)")
    splits = pipeline.Splits(config, batch_size=16, num_classes=4)
    batches = list(pipeline.eval_batches(splits, "test", global_batch_size=8, remainder="pad"))
    assert len(batches) == 2  # 12 examples: 8, then 4 real and 4 padding rows.
    last = batches[-1]
    assert last["target"].shape == (8, 40, 40) and last["boxes"].shape == (8, 4, 4)
    np.testing.assert_array_equal(last["mask"], [1, 1, 1, 1, 0, 0, 0, 0])
    assert not last["boxes"][4:].any() and not last["box_valid"][4:].any() and not last["target"][4:].any()
    raw = _records(splits.source("test"))
    boxes = np.concatenate([b["boxes"][b["mask"] == 1] for b in batches])
    np.testing.assert_allclose(boxes, raw["boxes"] * 40 / 64, rtol=1e-6)
    for b in batches:
        _assert_aligned(b)


def test_mask_ids_beyond_num_classes_name_the_record(data_dir):
    config = _dataset_config(data_dir)
    splits = pipeline.Splits(config, batch_size=16, num_classes=3)  # Triangles are id 3.
    with pytest.raises(ConfigError, match=r"record \d+ of split 'test' of shapes holds mask id 3") as info:
        list(pipeline.eval_batches(splits, "test", global_batch_size=8))
    assert "task.num_classes=3" in str(info.value) and "\n" not in str(info.value)
    # map_mask can fold them into classes the task has (triangles become ignored).
    config = _dataset_config(data_dir, eval_transforms="map_mask(ids={3: 255})")
    splits = pipeline.Splits(config, batch_size=16, num_classes=3)
    batch = next(pipeline.eval_batches(splits, "test", global_batch_size=8))
    assert set(np.unique(batch["target"])) <= {0, 1, 2, 255}


@pytest.mark.parametrize(
    "values, match",
    [
        ({"target_kind": "pixels"}, "config.dataset.target_kind='pixels' is not valid"),
        ({"extra_keys": ("boxes",)}, "must hold 'boxes' and 'box_valid' together"),
        ({"extra_keys": ("mask",)}, "'mask', a name the batch already uses"),
        ({"ignore_index": -1}, "config.dataset.ignore_index=-1 is not valid"),
        ({"split_sizes": (10, 0, 5)}, "config.dataset.split_sizes=(10, 0, 5) is not valid"),
    ],
)
def test_bad_dataset_keys_are_one_line_config_errors(data_dir, values, match):
    with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace(")", r"\)")):
        pipeline.Splits(_dataset_config(data_dir, **values), batch_size=16)


def test_missing_extra_key_names_the_features(data_dir):
    with pytest.raises(ConfigError, match="extra_keys holds 'keypoints', not a feature of shapes"):
        pipeline.Splits(_dataset_config(data_dir, extra_keys=("keypoints",)), batch_size=16)


# --- oxford_iiit_pet: variable sizes, a trimap stored [H, W, 1] ------------------------


def _pet_records(num: int) -> list[dict]:
    rng = np.random.default_rng(0)
    records = []
    for i in range(num):
        h, w = (int(v) for v in rng.integers(20, 60, 2))
        trimap = np.full((h, w, 1), 2, np.uint8)  # Background.
        trimap[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 3  # Border around the pet.
        trimap[h // 4 + 2 : 3 * h // 4 - 2, w // 4 + 2 : 3 * w // 4 - 2] = 1  # The pet.
        image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        records.append({"image": image, "segmentation_mask": trimap, "label": i % 37, "species": i % 2})
    return records


def _pet_config(**values):
    dataset = helpers.config("digits_cnn").dataset
    settings = {
        "name": "oxford_iiit_pet",
        "data_dir": "",
        "input_key": "image",
        "target_key": "segmentation_mask",
        "target_kind": "mask",
        "extra_keys": (),
        "ignore_index": 255,
        "cache_in_memory": False,  # Images of many sizes.
        "val_split": "",
        "train_transforms": "resize(size=32)|map_mask(ids={1: 1, 2: 0, 3: 255})|random_flip()",
        "eval_transforms": "resize(size=32)|map_mask(ids={1: 1, 2: 0, 3: 255})",
        **values,
    }
    with dataset.unlocked():
        for key, value in settings.items():
            dataset[key] = value
    return dataset


def test_oxford_iiit_pet_batches_through_resize_under_mock_data():
    records = _pet_records(8)

    def as_data_source(self, split, **kwargs):
        del self, split, kwargs
        return records

    with tfds.testing.mock_data(num_examples=8, as_data_source_fn=as_data_source):
        splits = pipeline.Splits(_pet_config(), batch_size=4, num_classes=2)
        batch = next(iter(pipeline.train_loader(splits, global_batch_size=4, seed=0)))
        assert batch["input"].shape == (4, 32, 32, 3) and batch["input"].dtype == np.float32
        assert batch["target"].shape == (4, 32, 32) and batch["target"].dtype == np.uint8
        assert set(np.unique(batch["target"])) == {0, 1, 255}
        evaluated = list(pipeline.eval_batches(splits, "test", global_batch_size=3))
        assert len(evaluated) == 3 and evaluated[-1]["target"].shape == (3, 32, 32)
        np.testing.assert_array_equal(evaluated[-1]["mask"], [1, 1, 0])


def test_oxford_iiit_pet_mask_of_another_size_names_the_record():
    """tfds' default mock draws masks and images of unrelated sizes: a one-line error at gathering."""
    with tfds.testing.mock_data(num_examples=4):
        splits = pipeline.Splits(_pet_config(), batch_size=4, num_classes=2)
        with pytest.raises(ConfigError, match=r"record 0 of split 'test' of oxford_iiit_pet has a uint8 mask"):
            next(pipeline.eval_batches(splits, "test", global_batch_size=4))


def test_images_of_many_sizes_cannot_be_cached_in_memory():
    def as_data_source(self, split, **kwargs):
        del self, split, kwargs
        return _pet_records(4)

    with tfds.testing.mock_data(num_examples=4, as_data_source_fn=as_data_source):
        with pytest.raises(ConfigError, match="cache_in_memory=True cannot hold oxford_iiit_pet 'train': feature"):
            pipeline.Splits(_pet_config(cache_in_memory=True), batch_size=4)
