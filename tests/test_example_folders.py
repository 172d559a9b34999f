"""jaxdl.data.example_folders and experiments/export_example_folders.py: digits and shapes written as folders."""

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest

from jaxdl.data import example_folders, folders, shapes
from jaxdl.data.images import decode

ROOT = Path(__file__).resolve().parent.parent
TINY = example_folders.SIZES["tiny"]


def test_digits_folder_holds_the_builders_splits(tmp_path):
    from jaxdl.data.datasets import load_source

    folder = example_folders.write_digits_image_folder(tmp_path, None)
    layout = folders.scan("image_folder", folder)
    assert layout.class_names == tuple(str(d) for d in range(10)) and layout.problems == ()
    for split, entries in layout.splits.items():
        source = load_source("digits", split)  # The tfds builder's records (ArrayRecord, shuffled by key).
        builder = sorted((int(r["label"]), np.asarray(r["image"]).tobytes()) for r in source)
        exported = sorted((e.label, decode(e.image, channels=1).tobytes()) for e in entries)
        assert exported == builder, split  # Same records, pixel for pixel (stored values 0..16), same labels.
    assert [len(layout.splits[s]) for s in folders.SPLITS] == [1258, 270, 269]


def test_small_digits_keep_every_class_and_the_builders_keys(tmp_path):
    from sklearn.datasets import load_digits

    from jaxdl.data.datasets import split_rows

    folder = example_folders.write_digits_image_folder(tmp_path, TINY)
    layout = folders.scan("image_folder", folder)
    assert {e.label for e in layout.splits["train"]} == set(range(10))
    assert [len(layout.splits[s]) for s in folders.SPLITS] == list(TINY)
    data = load_digits()
    rows = split_rows(len(data.target))
    for split, entries in layout.splits.items():
        for entry in entries:  # The file name is the builder's key i: row split_rows(n)[split][i].
            row = rows[split][int(entry.image.stem)]
            assert entry.label == data.target[row]
            np.testing.assert_array_equal(decode(entry.image, channels=1)[..., 0], data.images[row])


def test_shapes_layouts_hold_the_generated_records(tmp_path):
    from ultralytics.data.utils import verify_image_label

    written = {name: writer(tmp_path, TINY) for name, (_, writer) in list(example_folders.LAYOUTS.items())[1:]}
    records = {split: shapes.generate(n, seed) for seed, (split, n) in enumerate(zip(shapes.SPLITS, TINY, strict=True))}
    yolo = folders.scan("yolo", written["shapes_yolo"])
    masks = folders.scan("mask_folder", written["shapes_masks"])
    classes = folders.scan("image_folder", written["shapes_classes"])
    assert yolo.class_names == classes.class_names == ("circle", "square", "triangle")
    for split, record in records.items():
        for i, entry in enumerate(yolo.splits[split]):
            np.testing.assert_array_equal(decode(entry.image), record["image"][i])
            ids, boxes = folders.read_yolo_labels(entry.labels, 3)
            valid = record["box_valid"][i] > 0
            np.testing.assert_array_equal(ids + 1, record["box_classes"][i][valid])
            xyxy = np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1) * 64
            np.testing.assert_allclose(xyxy, record["boxes"][i][valid], atol=1e-3)
            # Ultralytics' own label check reads the file as one valid image with these boxes.
            _, labels, shape, *_, missing, found, empty, corrupt, _ = verify_image_label(
                (str(entry.image), str(entry.labels), "", False, 3, 0, 0, False)
            )
            assert (missing, found, empty, corrupt, tuple(shape)) == (0, 1, 0, 0, (64, 64))
            np.testing.assert_allclose(labels[:, 1:], boxes, atol=1e-6)
        for i, entry in enumerate(masks.splits[split]):
            np.testing.assert_array_equal(decode(entry.image), record["image"][i])
            np.testing.assert_array_equal(folders.read_mask(entry.mask), record["segmentation_mask"][i])
        for entry in classes.splits[split]:
            i = int(entry.image.stem)
            np.testing.assert_array_equal(decode(entry.image), record["image"][i])
            pixels = np.bincount(record["segmentation_mask"][i].ravel(), minlength=4)[1:]
            assert pixels[entry.label] == pixels.max()  # The class covering most of the picture.
        assert sorted(int(e.image.stem) for e in classes.splits[split]) == list(range(len(record["image"])))


def _script():
    spec = importlib.util.spec_from_file_location(
        "export_example_folders", ROOT / "experiments" / "export_example_folders.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_script(tmp_path, capsys):
    script = _script()
    example_folders.write_digits_image_folder(tmp_path / "warm", TINY)  # scikit-learn imported outside the timing.
    start = time.perf_counter()
    assert script.main([f"--out={tmp_path}", "--size=tiny"]) == 0
    assert time.perf_counter() - start < 5
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in out[:4]] == [
        ["digits", "image_folder"],
        ["shapes_classes", "image_folder"],
        ["shapes_yolo", "yolo"],
        ["shapes_masks", "mask_folder"],
    ]
    assert "train 12, val 6, test 6" in out[0] and "train 12, val 6, test 6" in out[3]
    assert f"  jaxdl-data check {tmp_path / 'shapes_yolo' / 'data.yaml'} --format=yolo" in out
    # An existing folder is kept; --overwrite replaces it; nothing half-written is left either way.
    assert script.main([f"--out={tmp_path}", "--size=tiny", "--only=shapes_masks"]) == 1
    assert "shapes_masks: already exists; remove it or pass overwrite" in capsys.readouterr().err
    assert script.main([f"--out={tmp_path}", "--size=tiny", "--only=shapes_masks", "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "digits",
        "shapes_classes",
        "shapes_masks",
        "shapes_yolo",
        "warm",
    ]


def test_interrupted_export_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing(path, pixels):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return original(path, pixels)

    original = example_folders._save_png
    monkeypatch.setattr(example_folders, "_save_png", failing)
    with pytest.raises(KeyboardInterrupt):
        example_folders.write_shapes_mask_folder(tmp_path, TINY)
    assert list(tmp_path.iterdir()) == []
