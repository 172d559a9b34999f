"""jaxdl.data.folders: image_folder, yolo and mask_folder layouts scanned from trees the tests write."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxdl.data import folders
from jaxdl.data.folders import LayoutError


def _png(path: Path, value: int = 0, size=(4, 3), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(np.full(shape, value, np.uint8), mode).save(path)
    return path


def _image_tree(root: Path) -> None:
    """Class names that sort differently by case, digits and punctuation; nested folders whose order is subtle."""
    for split in ("train", "val"):
        for cls in ("Zebra", "apple", "Banana", "_under", "10", "9"):
            for name in ("b.png", "a.PNG", "a b/y.png", "a/x.jpg", "a.b/z.png"):
                if split == "val" and cls == "9":
                    continue  # A class absent from val keeps its train index.
                _png(root / split / cls / name)
        (root / split / "apple" / "notes.txt").write_text("not an image")


def test_image_folder_matches_torchvision_imagefolder(tmp_path):
    from torchvision.datasets import ImageFolder

    _image_tree(tmp_path)
    layout = folders.scan("image_folder", tmp_path)
    reference = ImageFolder(str(tmp_path / "train"))
    assert layout.class_names == tuple(reference.classes)
    assert layout.class_names[:2] == ("10", "9") and layout.class_names.index("Zebra") < layout.class_names.index(
        "_under"
    )
    assert [(str(e.image), e.label) for e in layout.splits["train"]] == [(p, c) for p, c in reference.samples]
    # val lacks class "9": the other classes keep train's indices, as ImageFolder with train's class_to_idx.
    val = ImageFolder(str(tmp_path / "val"))
    to_train = {val.class_to_idx[name]: reference.class_to_idx[name] for name in val.classes}
    assert [(str(e.image), e.label) for e in layout.splits["validation"]] == [(p, to_train[c]) for p, c in val.samples]
    assert set(layout.splits) == {"train", "validation"} and layout.problems == ()
    assert {p.name for p in layout.ignored} == {"notes.txt"}


def test_image_folder_hidden_entries_are_skipped_and_listed(tmp_path):
    _image_tree(tmp_path)
    before = folders.scan("image_folder", tmp_path)
    hidden = [
        _png(tmp_path / "train" / ".ipynb_checkpoints" / "c.png"),  # torchvision would make this a class.
        _png(tmp_path / "train" / "apple" / "._a.png"),  # macOS AppleDouble file with an image suffix.
        _png(tmp_path / "train" / "apple" / ".cache" / "d.png"),
    ]
    layout = folders.scan("image_folder", tmp_path)
    assert layout.class_names == before.class_names and layout.splits == before.splits
    assert set(layout.hidden) == {hidden[0].parent, hidden[1], hidden[2].parent}
    assert layout.problems == ()


def test_image_folder_problems(tmp_path):
    _png(tmp_path / "train" / "cat" / "1.png")
    (tmp_path / "train" / "dog").mkdir()
    _png(tmp_path / "train" / "dog" / ".hidden.png")  # Only hidden files: still an empty class folder.
    _png(tmp_path / "train" / "loose.png")
    _png(tmp_path / "test" / "cow" / "1.png")
    layout = folders.scan("image_folder", tmp_path)
    assert layout.class_names == ("cat", "dog")
    errors = {(p.split, Path(p.path).name): p.message for p in layout.errors}
    assert "has no images" in errors[("train", "dog")]
    assert "not one of train's classes (cat, dog)" in errors[("test", "cow")]
    warnings = [p for p in layout.problems if p.severity == "warning"]
    assert len(warnings) == 1 and "loose.png" in warnings[0].message
    assert [e.image.name for e in layout.splits["train"]] == ["1.png"] and layout.splits["test"] == ()


def test_image_folder_bad_paths(tmp_path):
    with pytest.raises(LayoutError, match="no such file or folder"):
        folders.scan("image_folder", tmp_path / "missing")
    _png(tmp_path / "cat" / "1.png")  # Class folders without a split folder above them.
    with pytest.raises(LayoutError, match=r"has no train/, val/ or test/ folder \(expected .*\); it holds cat/$"):
        folders.scan("image_folder", tmp_path)
    with pytest.raises(LayoutError, match="is a file; give the dataset's folder"):
        folders.scan("image_folder", tmp_path / "cat" / "1.png")
    (tmp_path / "cat" / "1.png").unlink()
    (tmp_path / "cat").rmdir()
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(LayoutError, match="no images found in any split"):
        folders.scan("image_folder", tmp_path)
    (tmp_path / "val").mkdir()
    (tmp_path / "validation").mkdir()
    with pytest.raises(LayoutError, match="has both val/ and validation/; keep one"):
        folders.scan("image_folder", tmp_path)
    with pytest.raises(LayoutError, match="unknown dataset format 'coco'"):
        folders.scan("coco", tmp_path)
    assert issubclass(LayoutError, folders.ConfigError)


def test_label_path_is_ultralytics_rule(tmp_path):
    from ultralytics.data.utils import img2label_paths

    images = [
        tmp_path / "images" / "train" / "a.jpg",
        tmp_path / "data" / "images" / "x" / "images" / "b.v2.png",  # Only the last /images/ changes.
        tmp_path / "flat" / "c.jpeg",  # No /images/: the label sits beside the image.
    ]
    assert [str(folders.label_path(p)) for p in images] == img2label_paths([str(p) for p in images])


def _yolo_tree(root: Path) -> None:
    for split, count in (("train", 3), ("val", 2)):
        for i in range(count):
            _png(root / "images" / split / f"{i}.png", size=(8, 6))
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "0.txt").write_text("1 0.5 0.5 0.2 0.4\n\n0 0.1 0.2 0.1 0.1\n")
    (root / "labels" / "train" / "1.txt").write_text("")  # Empty: a background image; 2.txt is missing.


def test_yolo_data_yaml_with_folders_and_list_files(tmp_path):
    _yolo_tree(tmp_path)
    (tmp_path / "val.txt").write_text("./images/val/1.png\nimages/val/0.png\n\n")
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images/train\nval: val.txt\nnames:\n  0: cat\n  1: dog\n")
    for given in (tmp_path, tmp_path / "data.yaml"):
        layout = folders.scan("yolo", given)
        assert layout.class_names == ("cat", "dog") and layout.yaml_file == tmp_path / "data.yaml"
        assert [e.image.name for e in layout.splits["train"]] == ["0.png", "1.png", "2.png"]
        assert [e.image.name for e in layout.splits["validation"]] == ["0.png", "1.png"]
        assert layout.splits["train"][0].labels == tmp_path / "labels" / "train" / "0.txt"
        assert "test" not in layout.splits and layout.problems == ()
    ids, boxes = folders.read_yolo_labels(tmp_path / "labels" / "train" / "0.txt", 2)
    assert ids.tolist() == [1, 0] and ids.dtype == np.int32
    np.testing.assert_allclose(boxes, [[0.5, 0.5, 0.2, 0.4], [0.1, 0.2, 0.1, 0.1]])
    for background in ("1.txt", "2.txt"):  # Empty and missing: both no boxes; the checker tells them apart.
        ids, boxes = folders.read_yolo_labels(tmp_path / "labels" / "train" / background, 2)
        assert ids.shape == (0,) and boxes.shape == (0, 4)
    # names as a list; a list of sources for one split; a `path` elsewhere, relative to the yaml.
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "set.yaml").write_text("path: ..\ntrain: [images/train, images/val]\nnames: [cat, dog]\n")
    layout = folders.scan("yolo", tmp_path / "cfg")
    assert layout.root == tmp_path.resolve() and len(layout.splits["train"]) == 5 and set(layout.splits) == {"train"}


def test_yolo_label_errors(tmp_path):
    labels = tmp_path / "l.txt"
    labels.write_text("0 0.5 0.5 0.1 0.1\n\n3 0.5 0.5 0.1 0.1\n")
    with pytest.raises(LayoutError, match=r"l\.txt:3: class id 3 is past the 2 names"):
        folders.read_yolo_labels(labels, 2)
    assert folders.yolo_label_rows(labels)[0].tolist() == [0, 3]  # Unchecked rows, for the checker.
    for text, match in (
        ("0 0.5 0.5 0.1\n", r"l\.txt:1: 4 fields"),
        ("0 a 0.5 0.1 0.1\n", r"l\.txt:1: not numbers"),
        ("-1 0.5 0.5 0.1 0.1\n", "is not a class index"),
        ("0.5 0.5 0.5 0.1 0.1\n", "is not a class index"),
    ):
        labels.write_text(text)
        with pytest.raises(LayoutError, match=match):
            folders.read_yolo_labels(labels, 2)
    labels.write_text("1 0.1 0.2 0.5 0.2 0.3 0.6\n")  # A polygon line gives its bounding box.
    np.testing.assert_allclose(folders.read_yolo_labels(labels, 2)[1], [[0.3, 0.4, 0.4, 0.4]], atol=1e-6)


def test_yolo_yaml_errors(tmp_path):
    _yolo_tree(tmp_path)
    cases = (
        ("train: images/train\n", "has no `names`"),
        ("train: images/train\nnames: {0: a, 2: b}\n", r"`names` ids must be 0\.\.1 without gaps"),
        ("train: images/train\nnames: [a]\nnc: 2\n", "nc=2 but `names` lists 1 classes"),
        ("val: images/val\nnames: [a]\n", "has no `train`"),
        ("train: images/nothere\nnames: [a]\n", "train: 'images/nothere' is neither a folder nor a .txt list"),
        ("train: [unclosed\n", "not valid YAML"),
    )
    for text, match in cases:
        (tmp_path / "data.yaml").write_text(text)
        with pytest.raises(LayoutError, match=match):
            folders.scan("yolo", tmp_path)
    (tmp_path / "data.yaml").unlink()
    with pytest.raises(LayoutError, match="has no data.yaml"):
        folders.scan("yolo", tmp_path)


def test_mask_folder_matches_by_stem(tmp_path):
    for split in ("train", "validation"):
        for stem in ("a", "b", "sub/c"):
            _png(tmp_path / split / "images" / f"{stem}.jpg", 100)
            _png(tmp_path / split / "masks" / f"{stem}.png", 1, mode="L")
    _png(tmp_path / "train" / "images" / "lonely.png")
    _png(tmp_path / "train" / "masks" / "orphan.png", mode="L")
    _png(tmp_path / "validation" / "masks" / "b.jpg", mode="L")  # A second mask of stem b, and a JPEG one.
    _png(tmp_path / "train" / "images" / ".DS_Store.png")
    layout = folders.scan("mask_folder", tmp_path)
    assert [(e.image.name, e.mask.name) for e in layout.splits["train"]] == [
        ("a.jpg", "a.png"),
        ("b.jpg", "b.png"),
        ("c.jpg", "c.png"),
    ]
    assert all(
        e.image.stem == e.mask.stem and e.mask.parent.name == e.image.parent.name for e in layout.splits["train"][2:]
    )
    found = {(p.severity, p.split, Path(p.path).name): p.message for p in layout.problems}
    assert "no mask 'lonely.png'" in found[("error", "train", "lonely.png")]
    assert "mask without an image" in found[("warning", "train", "orphan.png")]
    assert "two files of stem 'b'" in found[("error", "validation", "b.png")]
    assert [p.name for p in layout.hidden] == [".DS_Store.png"]


def test_read_mask_values_palette_and_jpeg(tmp_path):
    values = np.array([[0, 255], [255, 7]], np.uint8)
    Image.fromarray(values).save(tmp_path / "m.png")
    np.testing.assert_array_equal(folders.read_mask(tmp_path / "m.png"), values)
    np.testing.assert_array_equal(folders.read_mask(tmp_path / "m.png", mask_values={255: 1}), [[0, 1], [1, 7]])
    rgb = np.array([[[0, 0, 0], [255, 0, 0]], [[0, 255, 0], [255, 0, 0]]], np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    palette = {(0, 0, 0): 0, (255, 0, 0): 1, (0, 255, 0): 2}
    np.testing.assert_array_equal(folders.read_mask(tmp_path / "rgb.png", palette=palette), [[0, 1], [2, 1]])
    with pytest.raises(LayoutError, match=r"colour \(0, 255, 0\) \(1 pixels\) is not in dataset.palette"):
        folders.read_mask(tmp_path / "rgb.png", palette={(0, 0, 0): 0, (255, 0, 0): 1})
    with pytest.raises(LayoutError, match="an RGB mask with colours; give dataset.palette"):
        folders.read_mask(tmp_path / "rgb.png")
    indexed = Image.fromarray(np.array([[0, 2], [1, 1]], np.uint8), "P")  # Pascal VOC style: indices are classes.
    indexed.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
    indexed.save(tmp_path / "voc.png")
    np.testing.assert_array_equal(folders.read_mask(tmp_path / "voc.png"), [[0, 2], [1, 1]])
    Image.fromarray(values).save(tmp_path / "m.jpg")
    with pytest.raises(LayoutError, match="JPEG mask refused: JPEG's lossy compression changes class ids"):
        folders.read_mask(tmp_path / "m.jpg")
    os.replace(tmp_path / "m.jpg", tmp_path / "disguised.png")
    with pytest.raises(LayoutError, match=r"is a JPEG file \(named \.png\)"):
        folders.read_mask(tmp_path / "disguised.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(folders.ImageDecodeError, match="broken.png: not a readable mask"):
        folders.read_mask(tmp_path / "broken.png")
