"""Tests for jaxdl.data: the local tfds builders, transforms and grain pipelines."""

import re
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn import datasets as sk_datasets
from sklearn.preprocessing import StandardScaler

from jaxdl.data import datasets, pipeline, transforms
from tests import helpers

SPLITS = ("train", "validation", "test")
FRACTIONS = {"train": 0.7, "validation": 0.15, "test": 0.15}


def _sklearn_table(name):
    """Inputs and targets straight from scikit-learn, cast as the builders document."""
    if name == "digits":
        data = sk_datasets.load_digits()
        return data.images.astype(np.uint8)[..., None], data.target
    if name == "breast_cancer":
        data = sk_datasets.load_breast_cancer()
        return data.data.astype(np.float32), data.target
    data = sk_datasets.load_diabetes(scaled=False)
    return data.data.astype(np.float32), data.target.astype(np.float32)


INPUT_KEY = {"digits": "image", "breast_cancer": "features", "diabetes": "features"}
TARGET_KEY = {"digits": "label", "breast_cancer": "label", "diabetes": "target"}
TABLE_SIZE = {"digits": 1797, "breast_cancer": 569, "diabetes": 442}


def _split_arrays(name, split, data_dir=""):
    """All inputs and targets of one split, stacked."""
    source = datasets.load_source(name, split, data_dir)
    records = [source[i] for i in range(len(source))]
    x = np.stack([np.asarray(r[INPUT_KEY[name]]) for r in records])
    y = np.stack([np.asarray(r[TARGET_KEY[name]]) for r in records])
    return x, y


def _sorted_rows(x, y):
    """Rows (input..., target) in lexicographic order: a canonical multiset."""
    rows = np.concatenate([x.reshape(len(x), -1).astype(np.float64), np.asarray(y, np.float64)[:, None]], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for batch_a, batch_b in zip(a, b, strict=True):
        assert batch_a.keys() == batch_b.keys()
        for key in batch_a:
            np.testing.assert_array_equal(batch_a[key], batch_b[key])


def _batches_equal(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


# --------------------------------------------------------------------------
# Local builders and tfds sources
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["digits", "breast_cancer", "diabetes"])
def test_local_splits_partition_the_sklearn_table(name):
    """train+validation+test hold every sklearn record exactly once, split ~70/15/15."""
    parts = {split: _split_arrays(name, split) for split in SPLITS}
    total = TABLE_SIZE[name]
    assert sum(len(x) for x, _ in parts.values()) == total
    for split, (x, _) in parts.items():
        assert abs(len(x) - FRACTIONS[split] * total) <= 1
    # Equal multisets of (features, target) rows: complete, and disjoint because
    # the counts match (sklearn's rows are unique for digits, checked below).
    x_all = np.concatenate([x for x, _ in parts.values()])
    y_all = np.concatenate([y for _, y in parts.values()])
    sk_x, sk_y = _sklearn_table(name)
    assert x_all.dtype == sk_x.dtype and x_all.shape[1:] == sk_x.shape[1:]
    np.testing.assert_array_equal(_sorted_rows(x_all, y_all), _sorted_rows(sk_x, sk_y))


def test_digits_records_are_unique_and_match_sklearn_by_image():
    """Each digits record is the sklearn image of the same label (images are unique)."""
    sk_x, sk_y = _sklearn_table("digits")
    by_bytes = {img.tobytes(): int(label) for img, label in zip(sk_x, sk_y, strict=True)}
    assert len(by_bytes) == len(sk_x)  # Makes the byte lookup below unambiguous.
    seen = set()
    for split in SPLITS:
        x, y = _split_arrays("digits", split)
        assert x.shape[1:] == (8, 8, 1) and x.dtype == np.uint8
        for img, label in zip(x, y, strict=True):
            assert by_bytes[img.tobytes()] == int(label)
            assert img.tobytes() not in seen  # No record in two splits.
            seen.add(img.tobytes())
    assert len(seen) == len(sk_x)


def test_local_splits_are_reproducible_across_builds(tmp_path):
    """A fresh build in another data dir gives the same split contents."""
    for split in SPLITS:
        x_fresh, y_fresh = _split_arrays("diabetes", split, data_dir=str(tmp_path))
        x_cached, y_cached = _split_arrays("diabetes", split)
        np.testing.assert_array_equal(_sorted_rows(x_fresh, y_fresh), _sorted_rows(x_cached, y_cached))


def test_is_known():
    """jaxdl and tfds names are known; a made-up one is not."""
    assert datasets.is_known("digits")
    assert datasets.is_known("breast_cancer")
    assert datasets.is_known("mnist")
    assert not datasets.is_known("no_such_dataset")


def test_unprepared_tfds_dataset_raises_with_instructions(tmp_path):
    """An unprepared tfds dataset fails with the build command, without downloading."""
    with pytest.raises(datasets.DatasetNotPreparedError) as info:
        datasets.load_source("mnist", "train", data_dir=str(tmp_path))
    message = str(info.value)
    assert "tfds build mnist" in message
    assert str(tmp_path) in message
    # Nothing was fetched into the data dir.
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


@pytest.mark.parametrize("num_examples", [3, 11])
def test_tfds_source_under_mock_data(num_examples):
    """A standard tfds dataset is read through tfds.data_source."""
    with tfds.testing.mock_data(num_examples=num_examples):
        source = datasets.load_source("mnist", "train")
        assert len(source) == num_examples
        for i in range(num_examples):
            record = source[i]
            assert np.asarray(record["image"]).shape == (28, 28, 1)
            assert 0 <= int(record["label"]) < 10


# --------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------


def test_parse_valid_spec():
    """A spec string becomes named specs with literal kwargs; empty parts are skipped."""
    specs = transforms.parse("rescale(scale=0.0625)| random_crop(padding=1) ||random_flip()")
    assert specs == [
        transforms.Spec("rescale", {"scale": 0.0625}),
        transforms.Spec("random_crop", {"padding": 1}),
        transforms.Spec("random_flip", {}),
    ]
    assert transforms.parse("") == []


@pytest.mark.parametrize(
    "text, match",
    [
        (
            "blur(sigma=1)",
            "unknown transform 'blur'; choose one of: center_crop, letterbox, map_mask, mosaic, normalize, "
            "rand_augment, random_crop, random_erasing, random_flip, random_resized_crop, rescale, resize, "
            "standardize",
        ),
        ("rescale(0.5)", "cannot parse"),  # Positional arguments are rejected.
        ("rescale(scale=0.5", "cannot parse"),
        ("rescale", "cannot parse"),
        ("rescale(scale=x)", "must be literals"),
        ("standardize(mean=0)", "takes no arguments"),
    ],
)
def test_parse_errors(text, match):
    """Bad specs raise ValueError saying what is wrong."""
    with pytest.raises(ValueError, match=re.escape(match)):
        transforms.parse(text)


def test_build_rejects_bad_arguments():
    """Unknown or invalid arguments surface as ValueError at build time."""
    with pytest.raises(ValueError, match="random_crop"):
        transforms.build(transforms.parse("random_crop(pad=1)"))
    with pytest.raises(ValueError, match="padding must be >= 0"):
        transforms.build(transforms.parse("random_crop(padding=-1)"))
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        transforms.build(transforms.parse("random_flip(p=1.5)"))


@pytest.mark.parametrize("padding", [1, 2, 4])
@pytest.mark.parametrize("shape", [(5, 7), (6, 9, 3)])
def test_random_crop_equals_pad_then_crop(padding, shape):
    """Each image of a batch equals np.pad then a crop at its own offsets from the same generator."""
    # Values start at 1 so zeros in the output can only come from the padding.
    batch_size = 50
    images = (np.arange(batch_size * np.prod(shape)).reshape(batch_size, *shape) % 250 + 1).astype(np.uint8)
    op = transforms.RandomCrop(padding=padding)
    pad_width = [(padding, padding), (padding, padding)] + [(0, 0)] * (len(shape) - 2)
    offsets = set()
    for seed in range(10):
        out = op.random_map({"input": images, "target": np.arange(batch_size)}, np.random.default_rng(seed))
        tops, lefts = np.random.default_rng(seed).integers(0, 2 * padding + 1, size=(2, batch_size))
        for image, cropped, oy, ox in zip(images, out["input"], tops, lefts, strict=True):
            padded = np.pad(image, pad_width)
            np.testing.assert_array_equal(cropped, padded[oy : oy + shape[0], ox : ox + shape[1]])
            offsets.add((int(oy), int(ox)))
        assert out["input"].dtype == images.dtype
        np.testing.assert_array_equal(out["target"], np.arange(batch_size))
    # The draws exercised both extreme offsets on each axis.
    ys, xs = zip(*offsets, strict=True)
    assert min(ys) == min(xs) == 0 and max(ys) == max(xs) == 2 * padding


def test_random_crop_without_padding_is_identity():
    """padding=0 leaves the images unchanged."""
    images = np.arange(40, dtype=np.float32).reshape(2, 4, 5)
    out = transforms.RandomCrop(padding=0).random_map({"input": images}, np.random.default_rng(0))
    np.testing.assert_array_equal(out["input"], images)


def test_random_flip_probabilities():
    """p=0 never flips, p=1 always flips, p=0.5 flips about half of 1000 images; others untouched."""
    images = np.arange(1000 * 24, dtype=np.float32).reshape(1000, 2, 4, 3)  # Not left-right symmetric.
    mirrored = images[:, :, ::-1]

    def flipped(p, seed):
        out = transforms.RandomFlip(p=p).random_map({"input": images}, np.random.default_rng(seed))["input"]
        is_flipped = np.all(out == mirrored, axis=(1, 2, 3))
        np.testing.assert_array_equal(out[~is_flipped], images[~is_flipped])  # Otherwise exactly unchanged.
        return is_flipped

    assert not flipped(0.0, 0).any()
    assert flipped(1.0, 0).all()
    half = flipped(0.5, 0)
    # Binomial(1000, 0.5) has sd ~15.8: 430..570 is a 4.4 sd band.
    assert 430 <= half.sum() <= 570
    # The draw is per image and follows the generator: rng.random(n) < p.
    np.testing.assert_array_equal(half, np.random.default_rng(0).random(1000) < 0.5)


def test_rescale_and_normalize_arithmetic():
    """Rescale casts and multiplies; Normalize subtracts and divides per channel."""
    image = np.array([[[0, 16], [8, 255]]], dtype=np.uint8)  # (1, 2, 2): two channels.
    out = transforms.Rescale(scale=0.0625).map({"input": image, "target": 1})
    assert out["input"].dtype == np.float32 and out["target"] == 1
    np.testing.assert_allclose(out["input"], [[[0.0, 1.0], [0.5, 15.9375]]])
    out = transforms.Normalize(mean=[1.0, 2.0], std=[2.0, 4.0]).map({"input": image})
    assert out["input"].dtype == np.float32
    np.testing.assert_allclose(out["input"], [[[-0.5, 3.5], [3.5, 63.25]]])
    with pytest.raises(ValueError, match="std must be > 0"):
        transforms.Normalize(mean=0.0, std=[1.0, 0.0])


def test_standardize_matches_sklearn_standard_scaler():
    """standardize() uses the train split's statistics exactly like StandardScaler."""
    config = helpers.config("breast_cancer_logreg")
    splits = pipeline.Splits(config.dataset)
    x_train, _ = _split_arrays("breast_cancer", config.dataset.train_split)
    scaler = StandardScaler().fit(x_train.astype(np.float64))
    stats = splits.statistics()
    np.testing.assert_allclose(stats["mean"], scaler.mean_, rtol=1e-12)
    np.testing.assert_allclose(stats["std"], scaler.scale_, rtol=1e-12)
    for split in ("train", "test"):
        x, _ = _split_arrays("breast_cancer", split)
        batches = list(pipeline.eval_batches(splits, split, global_batch_size=64))
        inputs = np.concatenate([b["input"][b["mask"] == 1] for b in batches])
        # eval batches keep the source order, so rows line up with x.
        np.testing.assert_allclose(inputs, scaler.transform(x.astype(np.float64)), rtol=1e-4, atol=1e-5)


def test_standardize_keeps_constant_features_finite():
    """A zero-std feature is divided by 1, not 0."""
    op = transforms.Standardize({"mean": np.array([1.0, 2.0]), "std": np.array([0.0, 2.0])})
    out = op.map({"input": np.array([3.0, 6.0], np.float32)})
    np.testing.assert_array_equal(out["input"], [2.0, 2.0])


# --------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------


def _digits_splits(**overrides):
    return pipeline.Splits(helpers.config("digits_cnn", **overrides).dataset)


@pytest.fixture(scope="module")
def digits_splits():
    """Digits with the shipped transforms: rescale + random_crop(padding=1) for training."""
    return _digits_splits()


@pytest.fixture(scope="module")
def plain_splits():
    """Digits without any transform: batches hold the raw pixel values, uint8 as stored."""
    return _digits_splits(dataset__train_transforms="", dataset__eval_transforms="")


def test_train_loader_is_seeded(digits_splits):
    """Same seed, same batches; another seed, other batches."""

    def first(seed):
        return _take(iter(pipeline.train_loader(digits_splits, global_batch_size=32, seed=seed)), 3)

    reference = first(0)
    _assert_batches_equal(first(0), reference)
    assert not _batches_equal(first(1), reference)
    assert reference[0]["input"].shape == (32, 8, 8, 1) and reference[0]["input"].dtype == np.float32
    assert reference[0]["target"].shape == (32,)


def test_train_loader_epochs_are_permutations(plain_splits):
    """Each epoch-worth of records is the training split, each record once, in a new order."""
    source = plain_splits.source("train")
    n = len(source)  # 1258 = 34 * 37: batches of 37 end exactly at the epoch boundary.
    assert n % 37 == 0
    expected = sorted(np.asarray(source[i]["image"]).tobytes() + bytes([int(source[i]["label"])]) for i in range(n))
    assert len(set(expected)) == n  # Digits records are unique, so bytes identify them.
    iterator = iter(pipeline.train_loader(plain_splits, global_batch_size=37, seed=0))
    orders = []
    for _ in range(2):
        batches = _take(iterator, n // 37)
        keys = [x.tobytes() + bytes([int(y)]) for b in batches for x, y in zip(b["input"], b["target"], strict=True)]
        assert sorted(keys) == expected
        orders.append(keys)
    assert orders[0] != orders[1]  # Each epoch is shuffled afresh.


def test_dtypes_are_kept_until_a_transform_needs_floats(plain_splits, digits_splits):
    """uint8 images stay uint8 without a float transform; rescale makes them float32; labels stay integers."""
    raw = next(iter(pipeline.train_loader(plain_splits, global_batch_size=8, seed=0)))
    assert raw["input"].dtype == np.uint8 and np.issubdtype(raw["target"].dtype, np.integer)
    scaled = next(iter(pipeline.train_loader(digits_splits, global_batch_size=8, seed=0)))
    assert scaled["input"].dtype == np.float32 and np.issubdtype(scaled["target"].dtype, np.integer)
    padded = next(iter(pipeline.eval_batches(plain_splits, "validation", global_batch_size=500)))
    assert padded["input"].dtype == np.uint8 and padded["mask"].dtype == np.float32


def test_train_loader_too_large_batch(plain_splits):
    """A batch larger than the training split is a clear error."""
    with pytest.raises(ValueError, match="larger than the 1258 training examples"):
        pipeline.train_loader(plain_splits, global_batch_size=2000, seed=0)


def test_train_loader_state_resumes_on_next_batch(digits_splits):
    """A restored grain state continues with exactly the batches that followed it."""
    original = iter(pipeline.train_loader(digits_splits, global_batch_size=32, seed=5))
    _take(original, 3)
    state = original.get_state()
    following = _take(original, 3)
    resumed = iter(pipeline.train_loader(digits_splits, global_batch_size=32, seed=5))
    resumed.set_state(state)
    _assert_batches_equal(_take(resumed, 3), following)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_device_iterator_state_ignores_read_ahead(digits_splits, prefetch):
    """After 3 batches the state resumes on batch 4, however far the thread read ahead."""

    def loader():
        return pipeline.train_loader(digits_splits, global_batch_size=32, seed=7)

    reference = _take(iter(loader()), 5)  # Plain grain, no DeviceIterator involved.
    original = pipeline.DeviceIterator(loader(), lambda b: b, prefetch=prefetch)
    try:
        _assert_batches_equal(_take(original, 3), reference[:3])
        if prefetch:
            # Wait until the thread has really read ahead, so the test exercises it.
            deadline = time.monotonic() + 20
            while not original._queue.full() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert original._queue.full()
        state = original.get_state()
        _assert_batches_equal(_take(original, 2), reference[3:5])
    finally:
        original.close()
    restored = pipeline.DeviceIterator(loader(), lambda b: b, prefetch=prefetch)
    try:
        _take(restored, 1)  # Move it away from the start so set_state must rewind.
        restored.set_state(state)
        restored.start_prefetch()
        assert restored.get_state() == state
        _assert_batches_equal(_take(restored, 2), reference[3:5])
    finally:
        restored.close()


def test_device_iterator_applies_place(digits_splits):
    """Batches pass through the place function."""
    loader = pipeline.train_loader(digits_splits, global_batch_size=32, seed=0)
    iterator = pipeline.DeviceIterator(loader, lambda b: {**b, "placed": True}, prefetch=2)
    try:
        assert next(iterator)["placed"] is True
    finally:
        iterator.close()


def _source_arrays(splits, split):
    source = splits.source(split)
    x = np.stack([np.asarray(source[i]["image"], np.float32) for i in range(len(source))])
    y = np.array([int(source[i]["label"]) for i in range(len(source))])
    return x, y


@pytest.mark.parametrize("batch_size", [64, 27, 500])
def test_eval_batches_pad_covers_each_example_once(plain_splits, batch_size):
    """With "pad", masked rows are the split in order, once each, in equal-size batches."""
    x, y = _source_arrays(plain_splits, "validation")
    batches = list(pipeline.eval_batches(plain_splits, "validation", global_batch_size=batch_size, remainder="pad"))
    assert len(batches) == -(-len(x) // batch_size)
    for batch in batches:
        assert len(batch["input"]) == len(batch["target"]) == len(batch["mask"]) == batch_size
        # Padding rows are zeros so the model sees finite values.
        assert not batch["input"][batch["mask"] == 0].any()
    mask = np.concatenate([b["mask"] for b in batches])
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert mask.sum() == len(x)
    real_x = np.concatenate([b["input"][b["mask"] == 1] for b in batches])
    real_y = np.concatenate([b["target"][b["mask"] == 1] for b in batches])
    np.testing.assert_array_equal(real_x, x)
    np.testing.assert_array_equal(real_y, y)


def test_eval_batches_drop_yields_only_full_batches(plain_splits):
    """With "drop", the incomplete last batch is skipped and every row is real."""
    x, y = _source_arrays(plain_splits, "validation")
    batches = list(pipeline.eval_batches(plain_splits, "validation", global_batch_size=64, remainder="drop"))
    assert len(batches) == len(x) // 64
    for i, batch in enumerate(batches):
        assert batch["mask"].shape == (64,) and batch["mask"].all()
        np.testing.assert_array_equal(batch["input"], x[i * 64 : (i + 1) * 64])
        np.testing.assert_array_equal(batch["target"], y[i * 64 : (i + 1) * 64])


def test_random_crop_augments_and_replays(digits_splits):
    """random_crop changes training inputs, each by a 1-pixel shift, identically per seed."""
    unaugmented = _digits_splits(dataset__train_transforms="rescale(scale=0.0625)")
    # The sampler order depends only on the seed, so both loaders read the same records.
    augmented = _take(iter(pipeline.train_loader(digits_splits, global_batch_size=32, seed=3)), 2)
    plain = _take(iter(pipeline.train_loader(unaugmented, global_batch_size=32, seed=3)), 2)
    replay = _take(iter(pipeline.train_loader(digits_splits, global_batch_size=32, seed=3)), 2)
    _assert_batches_equal(replay, augmented)
    changed = 0
    for aug, ref in zip(augmented, plain, strict=True):
        np.testing.assert_array_equal(aug["target"], ref["target"])
        for a, r in zip(aug["input"], ref["input"], strict=True):
            padded = np.pad(r, [(1, 1), (1, 1), (0, 0)])
            windows = [padded[oy : oy + 8, ox : ox + 8] for oy in range(3) for ox in range(3)]
            assert any(np.array_equal(a, w) for w in windows)
            changed += not np.array_equal(a, r)
    # 8 of 9 offsets move the image; most of the 64 examples must have changed.
    assert changed > 32


@pytest.mark.parametrize("op", [transforms.RandomCrop(padding=2), transforms.RandomFlip(p=0.5)])
def test_random_transforms_do_not_depend_on_the_process_split(op):
    """A process's half of a global batch is augmented as in the one-process run."""
    images = np.arange(16 * 6 * 6, dtype=np.float32).reshape(16, 6, 6, 1) + 1
    whole = op.random_map({"input": images}, np.random.default_rng(7))["input"]
    op.global_batch, op.offset = 16, 8
    second_half = op.random_map({"input": images[8:]}, np.random.default_rng(7))["input"]
    np.testing.assert_array_equal(second_half, whole[8:])
