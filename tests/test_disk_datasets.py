"""Image datasets read from disk (jaxdl.data.disk): records, builder equality, EXIF boxes, cache, bad input, runs."""

import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxdl.data import datasets, disk, example_folders, images, pipeline
from jaxdl.errors import ConfigError
from tests import helpers


def _dataset(name: str, path, tmp_path, **overrides):
    """A digits_cnn config reading `path` as dataset `name`, caching under tmp_path/data."""
    return helpers.config(
        "digits_cnn",
        dataset__name=name,
        dataset__path=str(path),
        dataset__data_dir=str(tmp_path / "data"),
        **overrides,
    )


def _image_tree(root: Path, per_class: int = 4, classes=("cat", "dog"), size=(12, 10)) -> Path:
    """root/train/<class>/<i>.png: small RGB PNGs whose red value is the image's number."""
    for c, name in enumerate(classes):
        for i in range(per_class):
            folder = root / "train" / name
            folder.mkdir(parents=True, exist_ok=True)
            pixels = np.full((*size, 3), [10 * i + c, 100, 50 * c], np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    return root


@pytest.fixture
def count_decodes(monkeypatch):
    """Counts images.decode calls (every image read goes through it)."""
    calls = []
    real = images.decode

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(images, "decode", counting)
    return calls


def _entries(cache: Path) -> list[str]:
    """Cache entries (folders), temporary ones included; lock files are not entries."""
    return sorted(p.name for p in cache.iterdir() if p.is_dir()) if cache.exists() else []


# ------------------------------------------------------------------------------------------ records


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    return example_folders.write_digits_image_folder(tmp_path_factory.mktemp("folders"))


def _rows(batches) -> list[tuple]:
    """(input bytes, target) of every real example of eval batches, sorted."""
    rows = []
    for batch in batches:
        for x, y, real in zip(batch["input"], batch["target"], batch["mask"], strict=True):
            if real:
                rows.append((np.asarray(x, np.float32).tobytes(), int(y)))
    return sorted(rows)


def test_digits_image_folder_holds_the_builders_records_and_gives_its_batches(digits_folder, tmp_path):
    """Each file <split>/<digit>/<key>.png is the builder's example <key> (pixels 0..16 and label); every split's
    eval batches hold exactly the builder's examples after the same transforms (as a set of rows: tfds orders
    records by a hash of their key, ImageFolder by class and file name)."""
    from sklearn.datasets import load_digits

    x, y = load_digits().images.astype(np.uint8), load_digits().target
    rows = datasets.split_rows(len(x))
    folder_cfg = _dataset("image_folder", digits_folder, tmp_path, dataset__channels=1)
    raw_cfg = _dataset("image_folder", digits_folder, tmp_path, dataset__channels=1, dataset__cache_in_memory=False)
    folder = pipeline.Splits(folder_cfg.dataset, batch_size=64, num_classes=10)
    builder = pipeline.Splits(helpers.config("digits_cnn").dataset, batch_size=64, num_classes=10)
    for split in ("train", "validation", "test"):
        source = folder.source(split)
        raw = disk.open_split(raw_cfg.dataset, split)  # Not in memory: it names each record's file.
        assert len(source) == len(builder.source(split)) == len(rows[split])
        for i in range(len(raw)):
            key = int(Path(raw.file(i)).stem)
            record = raw[i]
            assert record["image"].dtype == np.uint8 and record["image"].shape == (8, 8, 1)
            np.testing.assert_array_equal(record["image"][..., 0], x[rows[split][key]])
            assert record["label"] == y[rows[split][key]] == int(Path(raw.file(i)).parent.name)
        a = pipeline.eval_batches(folder, split, global_batch_size=64)
        b = pipeline.eval_batches(builder, split, global_batch_size=64)
        assert _rows(a) == _rows(b)
    assert disk.class_names(folder_cfg.dataset) == tuple(str(d) for d in range(10))


def test_mask_folder_records_and_mask_values(tmp_path, caplog):
    """Images and masks become {"image", "mask"}; 0/255 masks read as 0/1 with mask_values '255:1'."""
    out = example_folders.write_shapes_mask_folder(tmp_path / "ex", (4, 2, 2))
    cfg = _dataset("mask_folder", out, tmp_path)
    record = disk.open_split(cfg.dataset, "train")[0]
    assert record["image"].shape == (64, 64, 3) and record["mask"].shape == (64, 64)
    assert set(np.unique(record["mask"])) <= {0, 1, 2, 3}

    binary = tmp_path / "binary"
    for split in ("train", "val", "test"):
        (binary / split / "images").mkdir(parents=True)
        (binary / split / "masks").mkdir(parents=True)
        mask = np.zeros((16, 20), np.uint8)
        mask[4:10, 5:15] = 255
        Image.fromarray(np.full((16, 20, 3), 90, np.uint8)).save(binary / split / "images" / "a.jpg")
        Image.fromarray(mask).save(binary / split / "masks" / "a.png")
    cfg = _dataset("mask_folder", binary, tmp_path, dataset__mask_values="255:1", task__num_classes=0)
    masks = disk.open_split(cfg.dataset, "test")[0]["mask"]
    np.testing.assert_array_equal(masks, (mask == 255).astype(np.uint8))
    disk.resolve_num_classes(cfg)
    assert cfg.task.num_classes == 2  # The largest id + 1.
    seven = _dataset("mask_folder", binary, tmp_path, dataset__mask_values="255:7", task__num_classes=2)
    with pytest.raises(ConfigError, match=r"test/images/a.jpg: its mask holds id 7, not a class of task.num_classes=2"):
        disk.resolve_num_classes(seven)  # Named before anything compiles.
    raw = _dataset("mask_folder", binary, tmp_path, task__num_classes=2)
    with caplog.at_level(logging.WARNING, logger="jaxdl.data.disk"):
        disk.resolve_num_classes(raw)
    assert "hold only 0 and 255 (dataset.ignore_index)" in caplog.text and "mask_values=255:1" in caplog.text


def test_cache_in_memory_holds_images_of_different_sizes(tmp_path):
    """cache_in_memory=True with images of two sizes keeps the records (no ConfigError), equal to the disk reads."""
    root = _image_tree(tmp_path / "tree")
    Image.fromarray(np.zeros((7, 9, 3), np.uint8)).save(root / "train" / "cat" / "99.png")
    on_disk = disk.open_split(_dataset("image_folder", root, tmp_path, dataset__cache_in_memory=False).dataset, "train")
    in_memory = disk.open_split(_dataset("image_folder", root, tmp_path).dataset, "train")
    assert isinstance(in_memory, disk.RecordsInMemory) and len(in_memory) == len(on_disk)
    for i in range(len(on_disk)):
        for key in ("image", "label"):
            np.testing.assert_array_equal(in_memory[i][key], on_disk[i][key])
    assert {on_disk[i]["image"].shape for i in range(len(on_disk))} == {(12, 10, 3), (7, 9, 3)}


def test_channels_1_reads_grayscale(tmp_path):
    root = _image_tree(tmp_path / "tree")
    record = disk.open_split(_dataset("image_folder", root, tmp_path, dataset__channels=1).dataset, "train")[0]
    assert record["image"].shape == (12, 10, 1)


# ------------------------------------------------------------------------------------------ validation cut


def test_validation_is_a_seeded_fraction_of_each_class_of_train(tmp_path):
    """Without val/: round(f * n) of each class become validation, disjoint from train, the same on every open."""
    root = _image_tree(tmp_path / "tree", per_class=8)
    cfg = _dataset("image_folder", root, tmp_path, dataset__val_fraction=0.25, dataset__cache_in_memory=False)
    train, val = disk.open_split(cfg.dataset, "train"), disk.open_split(cfg.dataset, "validation")
    files = lambda source: [source.file(i) for i in range(len(source))]  # noqa: E731
    assert len(train) == 12 and len(val) == 4
    assert sorted(files(train) + files(val)) == sorted(
        f"train/{c}/{i:02d}.png" for c in ("cat", "dog") for i in range(8)
    )
    assert sorted(int(val[i]["label"]) for i in range(4)) == [0, 0, 1, 1]
    assert files(disk.open_split(cfg.dataset, "val")) == files(val)  # "val" names the same split.
    np.testing.assert_array_equal(
        disk.validation_cut([0] * 8 + [1] * 8, 0.25), disk.validation_cut([0] * 8 + [1] * 8, 0.25)
    )
    cfg = _dataset("image_folder", root, tmp_path, dataset__val_fraction=0.0)
    assert len(disk.open_split(cfg.dataset, "train")) == 16
    with pytest.raises(
        ConfigError, match=r"has no validation split; add a val folder, set config.dataset.val_fraction"
    ):
        disk.open_split(cfg.dataset, "validation")
    with pytest.raises(ConfigError, match=r"^split 'other' is not in .*\(splits: train\)"):
        disk.open_split(cfg.dataset, "other")


def test_without_a_test_split_the_test_metrics_are_on_validation(tmp_path, caplog):
    root = _image_tree(tmp_path / "tree", per_class=8)
    cfg = _dataset("image_folder", root, tmp_path, dataset__val_fraction=0.25, dataset__cache_in_memory=False)
    with caplog.at_level(logging.WARNING, logger="jaxdl.data.disk"):
        test = disk.open_split(cfg.dataset, "test")
    val = disk.open_split(cfg.dataset, "validation")
    assert len(val) == 4 and [test.file(i) for i in range(4)] == [val.file(i) for i in range(4)]
    assert "has no test split: the test metrics are computed on the validation split" in caplog.text


# ------------------------------------------------------------------------------------------ EXIF


def test_yolo_boxes_stay_on_their_objects_in_an_exif_rotated_photo(tmp_path):
    """china.jpg stored sideways with EXIF orientation 6 (as a phone saves it): the label, normalised to the upright
    photo, lands on the same pixels as in the upright original; without the orientation it would not."""
    from sklearn.datasets import load_sample_images

    upright = load_sample_images().images[0]  # china.jpg, 427 x 640.
    root = tmp_path / "exif"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    # Stored turned a quarter counter-clockwise; orientation 6 says "rotate 90 clockwise to show".
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(root / "images" / "train" / "photo.jpg", quality=95, exif=exif)
    x0, y0, x1, y1 = 380, 60, 560, 220  # A region of the upright photo.
    h, w = upright.shape[:2]
    cx, cy, bw, bh = (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h
    (root / "labels" / "train" / "photo.txt").write_text(f"0 {cx} {cy} {bw} {bh}\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/train\nnames: [thing]\n")

    record = disk.open_split(_dataset("yolo", root / "data.yaml", tmp_path).dataset, "train")[0]
    assert record["image"].shape == (h, w, 3)
    np.testing.assert_allclose(record["boxes"], [[x0, y0, x1, y1]], atol=1e-3)
    np.testing.assert_array_equal(record["classes"], [0])
    a, b, c, d = (int(round(v)) for v in record["boxes"][0])
    inside = record["image"][b:d, a:c].astype(np.float64)
    truth = upright[y0:y1, x0:x1].astype(np.float64)
    assert np.abs(inside - truth).mean() < 3  # JPEG quality 95.
    raw = np.asarray(stored)  # What a reader ignoring EXIF sees: the box on other pixels.
    rh, rw = raw.shape[:2]
    naive = raw[int(cy * rh - bh * rh / 2) :, int(cx * rw - bw * rw / 2) :][: d - b, : c - a].astype(np.float64)
    assert naive.shape[:2] != truth.shape[:2] or np.abs(naive - truth).mean() > 20


# ------------------------------------------------------------------------------------------ the cache


def test_second_read_decodes_nothing_and_a_changed_folder_is_read_afresh(tmp_path, count_decodes):
    root = _image_tree(tmp_path / "tree")
    cfg = _dataset("image_folder", root, tmp_path)
    first = disk.prepare(cfg.dataset)
    assert len(count_decodes) == 8
    assert first.directory.parent == tmp_path / "data" / "folders"
    assert (first.directory / "train.array_record").is_file()
    again = disk.prepare(cfg.dataset)
    assert len(count_decodes) == 8 and again.directory == first.directory  # Read from the cache.
    source = disk.open_split(cfg.dataset, "train")
    assert len(count_decodes) == 8 and source[0]["image"].shape == (12, 10, 3)
    lazy = disk.open_split(_dataset("image_folder", root, tmp_path, dataset__cache_in_memory=False).dataset, "train")
    copy = pickle.loads(pickle.dumps(lazy))  # As grain's worker processes receive it.
    assert repr(copy) == repr(lazy) and "0x" not in repr(lazy)
    np.testing.assert_array_equal(copy[3]["image"], lazy[3]["image"])

    touched = root / "train" / "cat" / "00.png"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    changed = disk.prepare(cfg.dataset)
    assert len(count_decodes) == 16 and changed.directory != first.directory
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(root / "train" / "dog" / "new.png")
    added = disk.prepare(cfg.dataset)
    assert len(count_decodes) == 25 and len(added.info["splits"]["train"]["files"]) == 9
    gray = disk.prepare(_dataset("image_folder", root, tmp_path, dataset__channels=1).dataset)
    assert len(count_decodes) == 34 and gray.directory != added.directory  # Decode settings are in the key.


def test_an_interrupted_write_leaves_no_cache_entry(tmp_path, monkeypatch):
    root = _image_tree(tmp_path / "tree")
    cfg = _dataset("image_folder", root, tmp_path)
    real, written = disk.encode, []

    def failing(record):
        if len(written) == 3:
            raise KeyboardInterrupt  # As a Ctrl-C in the middle of decoding.
        written.append(1)
        return real(record)

    monkeypatch.setattr(disk, "encode", failing)
    with pytest.raises(KeyboardInterrupt):
        disk.prepare(cfg.dataset)
    assert _entries(tmp_path / "data" / "folders") == []
    monkeypatch.setattr(disk, "encode", real)
    prepared = disk.prepare(cfg.dataset)
    assert _entries(tmp_path / "data" / "folders") == [prepared.directory.name]
    assert len(disk.open_split(cfg.dataset, "train")) == 8


# ------------------------------------------------------------------------------------------ bad files


def _truncated_jpeg(path: Path) -> None:
    from sklearn.datasets import load_sample_images

    Image.fromarray(load_sample_images().images[1][:64, :64]).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_file_that_does_not_decode_stops_the_run_or_is_skipped(tmp_path, caplog):
    root = _image_tree(tmp_path / "tree")
    bad = root / "train" / "dog" / "broken.jpg"
    _truncated_jpeg(bad)
    cfg = _dataset("image_folder", root, tmp_path)
    with pytest.raises(ConfigError) as error:
        pipeline.Splits(cfg.dataset, batch_size=2, num_classes=2)
    message = str(error.value)
    assert "\n" not in message and str(bad) in message and "not a readable image" in message
    assert "skip_bad_files=True" in message and f"`jaxdl-data check {root} --format=image_folder`" in message
    assert _entries(tmp_path / "data" / "folders") == []  # Nothing half-written.

    skipping = _dataset("image_folder", root, tmp_path, dataset__skip_bad_files=True, dataset__val_fraction=0.0)
    with caplog.at_level(logging.WARNING, logger="jaxdl.data.disk"):
        source = disk.open_split(skipping.dataset, "train")
    assert len(source) == 8
    assert "skipped 1 files" in caplog.text and "train/dog/broken.jpg" in caplog.text
    with pytest.raises(ConfigError, match=r"broken.jpg: not a readable image \(1 such files\); set config.dataset"):
        disk.prepare(cfg.dataset)  # The cache holds what decoded; without skipping its bad file is still an error.


# ------------------------------------------------------------------------------------------ bad input


def _one_line_error(cfg, match: str):
    with pytest.raises(ConfigError, match=match) as error:
        pipeline.Splits(cfg.dataset, batch_size=2, num_classes=3)
    assert "\n" not in str(error.value)


def test_bad_keys_and_paths_are_one_line_errors_that_write_nothing(tmp_path):
    root = _image_tree(tmp_path / "tree")
    _one_line_error(_dataset("image_folder", "", tmp_path), r"^config.dataset.path is empty; give the dataset's folder")
    _one_line_error(_dataset("image_folder", root, tmp_path, dataset__channels=2), r"^config.dataset.channels='2'")
    _one_line_error(_dataset("image_folder", root, tmp_path, dataset__val_fraction=1.0), r"dataset.val_fraction=1.0")
    _one_line_error(_dataset("mask_folder", root, tmp_path, dataset__mask_values="255=1"), r"dataset.mask_values='255")
    _one_line_error(_dataset("mask_folder", root, tmp_path, dataset__palette="red:1"), r"^config.dataset.palette='red")
    _one_line_error(_dataset("image_folder", tmp_path / "nowhere", tmp_path), r"nowhere: no such file or folder")
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    _one_line_error(_dataset("image_folder", tmp_path / "empty", tmp_path), r"empty: no images found in any split")
    assert _entries(tmp_path / "data" / "folders") == []


def _yolo_tree(root: Path, yaml: str, label: str) -> Path:
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "images" / "train" / "a.png")
    (root / "labels" / "train" / "a.txt").write_text(label)
    (root / "data.yaml").write_text(yaml)
    return root / "data.yaml"


def test_bad_yolo_and_mask_folders_are_one_line_errors_naming_the_file(tmp_path):
    kw = dict(dataset__target_key="classes", dataset__val_fraction=0.0)
    no_names = _yolo_tree(tmp_path / "a", "path: .\ntrain: images/train\n", "0 0.5 0.5 0.2 0.2\n")
    _one_line_error(_dataset("yolo", no_names, tmp_path, **kw), r"data.yaml: has no `names`")
    past = _yolo_tree(tmp_path / "b", "path: .\ntrain: images/train\nnames: [a, b]\n", "0 .5 .5 .2 .2\n2 .5 .5 .1 .1\n")
    _one_line_error(_dataset("yolo", past, tmp_path, **kw), r"labels/train/a.txt:2: class id 2 is past the 2 names")
    zero = _yolo_tree(tmp_path / "c", "path: .\ntrain: images/train\nnames: [a]\n", "0 1.2 0.5 0.2 0.2\n")
    _one_line_error(_dataset("yolo", zero, tmp_path, **kw), r"a.txt: line 1 is a box of zero size inside the 30x20")

    masks = tmp_path / "m"
    (masks / "train" / "images").mkdir(parents=True)
    (masks / "train" / "masks").mkdir(parents=True)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(masks / "train" / "images" / "a.png")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(masks / "train" / "masks" / "a.png")
    cfg = _dataset("mask_folder", masks, tmp_path, dataset__val_fraction=0.0)
    _one_line_error(cfg, r"masks/a.png: mask of 20x20 pixels for image .*images/a.png of 30x20")
    assert _entries(tmp_path / "data" / "folders") == []


# ------------------------------------------------------------------------------------------ training runs


# As the shapes tests' runs (tests/test_detection_runs.py, test_segmentation_runs.py): the same compiled steps.
RUN = dict(schedule__warmup_steps=0, **helpers.SHORT_RUN)


def _vary_sizes(folder: Path, pattern: str, size: tuple[int, int]) -> None:
    """Every other file of `pattern` below `folder` resized to `size` (w, h); masks by nearest neighbour."""
    for path in sorted(folder.glob(pattern)):
        if int(path.stem) % 2 == 0:  # An image and its mask alike.
            with Image.open(path) as image:
                resample = Image.Resampling.NEAREST if "masks" in path.parts else Image.Resampling.BILINEAR
                image.resize(size, resample).save(path)


def _values(tree, key: str) -> list:
    """Every value of `key` in nested dicts and lists."""
    if isinstance(tree, dict):
        return [v for k, v in tree.items() if k == key] + [x for v in tree.values() for x in _values(v, key)]
    if isinstance(tree, list):
        return [x for v in tree for x in _values(v, key)]
    return []


@pytest.fixture(scope="module")
def shapes_folders(tmp_path_factory):
    """The shapes examples as yolo and mask_folder trees, every other image at another size."""
    out = tmp_path_factory.mktemp("shapes")
    yolo = example_folders.write_shapes_yolo(out, (8, 4, 4))
    masks = example_folders.write_shapes_mask_folder(out, (8, 4, 4))
    _vary_sizes(yolo / "images", "*/*.png", (96, 80))  # Normalised labels fit any size.
    _vary_sizes(masks, "*/*/*.png", (48, 48))
    return yolo, masks


@pytest.mark.slow
def test_image_folder_run_names_its_classes_in_the_workdir_and_resumes_exactly(digits_folder, tmp_path):
    """task.num_classes=0 takes the folder's classes; TrainedRun reads the names from the workdir, not the folder;
    a run crashed after its step-5 checkpoint resumes to the same metrics and params."""
    from jaxdl import train
    from jaxdl.trained import TrainedRun

    cfg = helpers.tiny_cnn(
        dataset__name="image_folder", dataset__path=str(digits_folder), dataset__channels=1, task__num_classes=0
    )
    full = train.train_and_evaluate(cfg, tmp_path / "full")
    digits = [str(d) for d in range(10)]
    assert json.loads((tmp_path / "full" / "class_names.json").read_text()) == digits
    assert json.loads((tmp_path / "full" / "config.json").read_text())["task"]["num_classes"] == 10
    run = TrainedRun.open(tmp_path / "full")
    run.config.dataset.path = str(tmp_path / "gone")  # The names come from the workdir.
    assert run.class_names == tuple(digits)
    cfg.task.num_classes = 0  # The run set it; a resumed run counts again.
    helpers.assert_resume_equals(cfg, tmp_path / "full", full, tmp_path / "resumed", step=7)


@pytest.mark.slow
def test_training_the_yolo_template_on_a_yolo_tree(shapes_folders, tmp_path, capsys):
    from jaxdl import predict, train
    from jaxdl.trained import TrainedRun

    detector = helpers.config(
        "my_yolo",
        **RUN,
        model__name="yolov8_tiny",
        dataset__path=str(shapes_folders[0] / "data.yaml"),
        dataset__max_boxes=8,
        dataset__train_transforms=f"letterbox(size=64)|rescale(scale={1 / 255})|mosaic(p=0.5)|random_flip()",
        dataset__eval_transforms=f"letterbox(size=64)|rescale(scale={1 / 255})",
    )
    results = train.train_and_evaluate(detector, tmp_path / "yolo")
    assert 0 <= results["test"]["map50"] <= 1
    assert TrainedRun.open(tmp_path / "yolo").class_names == ("circle", "square", "triangle")
    photo = shapes_folders[0] / "images" / "test" / "00000.png"  # 96 x 80: letterboxed as in training.
    args = [f"--workdir={tmp_path / 'yolo'}", f"--out={tmp_path / 'out'}", "--score_threshold=0", str(photo)]
    assert predict.predict_cli(args) == 0
    names = _values(json.loads(capsys.readouterr().out.splitlines()[-1]), "name")
    assert names and set(names) <= {"circle", "square", "triangle"}  # jaxdl-predict names the data.yaml's classes.


@pytest.mark.slow
def test_training_the_masks_template_on_a_mask_folder(shapes_folders, tmp_path):
    from jaxdl import train

    unet = helpers.config(
        "my_masks",
        **RUN,
        dataset__path=str(shapes_folders[1]),
        model__name="unet",
        model__kwargs="{'width': 4, 'depth': 2, 'padding': 'same', 'batch_norm': True, 'image_size': 64}",
        dataset__train_transforms=f"resize(size=64)|rescale(scale={1 / 255})|random_flip()",
        dataset__eval_transforms=f"resize(size=64)|rescale(scale={1 / 255})",
    )
    results = train.train_and_evaluate(unet, tmp_path / "unet")
    assert 0 <= results["test"]["miou"] <= 1
    assert json.loads((tmp_path / "unet" / "config.json").read_text())["task"]["num_classes"] == 4
    assert not (tmp_path / "unet" / "class_names.json").exists()  # Mask folders name no classes.
