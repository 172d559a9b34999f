"""`jaxdl-data check` on trees made of scikit-learn's two real photographs, each with the faults users bring."""

import functools
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxdl.data import check
from jaxdl.data.images import decode

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def _photos() -> dict[str, np.ndarray]:
    """china.jpg and flower.jpg (427x640) shrunk to 96x64 for speed, uint8 RGB."""
    from sklearn.datasets import load_sample_images

    data = load_sample_images()
    return {
        Path(name).stem: np.asarray(Image.fromarray(image).resize((96, 64), Image.BILINEAR))
        for name, image in zip(data.filenames, data.images, strict=True)
    }


def _save(path: Path, pixels: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **kwargs)
    return path


def _rotated_jpeg(path: Path, upright: np.ndarray) -> Path:
    """A JPEG stored sideways (rotated a quarter turn counter-clockwise) with EXIF orientation 6 to turn it back."""
    exif = Image.Exif()
    exif[0x0112] = 6  # "Rotate 90 CW to display", as a phone held upright writes it.
    return _save(path, np.ascontiguousarray(np.rot90(upright, 1)), exif=exif.tobytes(), quality=95)


def _truncated_jpeg(path: Path, pixels: np.ndarray) -> Path:
    _save(path, pixels, quality=90)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = check.data_cli(["check", *map(str, argv), "--no_progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_real_pictures_in_an_image_folder(tmp_path, capsys):
    china, flower = _photos()["china"], _photos()["flower"]
    train = tmp_path / "train"
    rotated = _rotated_jpeg(train / "china" / "rotated.jpg", china)
    _save(train / "china" / "plain.jpg", china)
    _save(train / "china" / "gray.png", np.asarray(Image.fromarray(china).convert("L")))
    _save(train / "china" / "rgba.png", np.dstack([china, np.full(china.shape[:2], 128, np.uint8)]))
    _save(train / "flower" / "flower.png", flower)
    _truncated_jpeg(train / "flower" / "truncated.jpg", flower)
    _save(train / ".ipynb_checkpoints" / "flower-checkpoint.png", flower)  # torchvision makes this a class.
    (train / "empty_class").mkdir()
    (train / "flower" / "notes.txt").write_text("taken in the garden")
    shutil.copy(train / "flower" / "flower.png", _save(tmp_path / "val" / "flower" / "copy.png", flower))
    _save(tmp_path / "val" / "china" / "other.png", china[::-1])

    code, out, err = _run(capsys, tmp_path, "--format=image_folder")
    assert code == 1 and err == ""
    assert "3 classes: china, empty_class, flower" in out
    assert "train: 6 images" in out and "validation: 2 images" in out
    assert "EXIF orientation 6 applied: train/china/rotated.jpg stored 64x96, read upright as 96x64" in out
    assert "1 L (grayscale)" in out and "1 RGBA (alpha dropped)" in out
    assert "error: train/flower/truncated.jpg: does not decode" in out
    assert "error: train/empty_class: class folder 'empty_class' has no images" in out
    assert "hidden entries skipped" in out and "train/.ipynb_checkpoints/" in out
    assert "files that are not images ignored: train/flower/notes.txt" in out
    assert "the same file in train and validation (validation or test would leak): " in out
    assert "train/flower/flower.png = val/flower/copy.png" in out
    assert "2 error(s), 3 warning(s)" in out
    # The histogram lists every class, the empty one with no bar.
    assert [line.split()[:2] for line in out.splitlines()[4:7]] == [
        ["china", "4"],
        ["empty_class", "0"],
        ["flower", "2"],
    ]
    # The rotated photo reads upright: the sideways-stored pixels come back as the original picture.
    assert np.abs(decode(rotated).astype(int) - china).mean() < 6

    # Fixed: the check passes (exit 0) with only the warnings left.
    for path in (train / "flower" / "truncated.jpg", tmp_path / "val" / "flower" / "copy.png"):
        path.unlink()
    (train / "empty_class").rmdir()
    (tmp_path / "val" / "flower").rmdir()
    code, out, _ = _run(capsys, tmp_path, "--format=image_folder")
    assert code == 0 and "0 error(s), 2 warning(s): no errors" in out
    code, out, _ = _run(capsys, tmp_path, "--format=image_folder", "--channels=1")
    assert code == 0 and "converted to grayscale (dataset.channels=1): " in out and "RGBA (alpha dropped)" in out


def test_yolo_labels_and_boxes(tmp_path, capsys):
    china, flower = _photos()["china"], _photos()["flower"]
    images, labels = tmp_path / "images" / "train", tmp_path / "labels" / "train"
    labels.mkdir(parents=True)
    for name, pixels in (("a", china), ("b", flower), ("c", china), ("d", flower), ("e", china[:, ::-1])):
        _save(images / f"{name}.jpg", pixels)
    _rotated_jpeg(images / "phone.jpg", flower)
    (labels / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n\n5 0.5 0.5 0.1 0.1\n")  # Id 5 past the 2 names, line 3.
    (labels / "b.txt").write_text("")  # Empty on purpose: a background image. c.txt is missing.
    (labels / "d.txt").write_text("1 0.95 0.5 0.2 0.2\n0 0.5 0.5 0 0.1\n1 1.5 0.5 0.1 0.1\n")
    (labels / "e.txt").write_text("0 0.5 0.5\n")
    (labels / "phone.txt").write_text("1 0.5 0.5 0.4 0.6\n")
    _save(tmp_path / "images" / "val" / "v.jpg", flower)
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [china, flower]\n")

    code, out, _ = _run(capsys, tmp_path / "data.yaml", "--format=yolo")
    assert code == 1
    assert "train/a.txt:3: class id 5 is past the 2 names of the data.yaml (ids 0..1)" in out
    assert "train/e.txt:1: 3 fields; expected `class cx cy w h`" in out
    assert "background images (no boxes): 2 (1 with an empty label file, 1 with none)" in out
    assert "warning: images/train/c.jpg: no label file labels/train/c.txt: read as a background image" in out
    assert "d.txt:1: box 0.95 0.5 0.2 0.2 reaches outside the image (96x64 px upright)" in out
    assert "d.txt:2: box 0.5 0.5 0 0.1 has zero size" in out
    assert "d.txt:3: box 1.5 0.5 0.1 0.1 is not normalised" in out
    assert "EXIF orientation 6 applied: images/train/phone.jpg stored 64x96, read upright as 96x64 (its boxes" in out
    assert "5 (past names)" in out  # The histogram shows the stray id too.
    # The validation images have no label files at all: a warning there (an error in train, below).
    assert "no image of validation has a label file (the first is looked for at" in out
    shutil.rmtree(tmp_path / "labels")
    code, out, _ = _run(capsys, tmp_path, "--format=yolo")
    assert code == 1 and "error: images/train/a.jpg: no image of train has a label file" in out


def test_masks(tmp_path, capsys):
    china, flower = _photos()["china"], _photos()["flower"]
    split = tmp_path / "train"
    objects = (flower[..., 0] > 128).astype(np.uint8)  # A real picture's shape as the foreground.
    for name in "abcd":
        _save(split / "images" / f"{name}.jpg", china if name in "ac" else flower)
    _save(split / "masks" / "a.png", objects * 255)  # 0/255, as many tools write binary masks.
    _save(split / "masks" / "b.jpg", objects * 255, quality=75)  # JPEG: edges get values between.
    _save(split / "masks" / "c.png", objects * 2)
    _save(split / "masks" / "d.png", objects[:32])  # Half the height of its image.

    code, out, _ = _run(capsys, tmp_path, "--format=mask_folder")
    assert code == 1
    assert "error: train/masks/b.jpg: JPEG mask refused: JPEG's lossy compression changes class ids" in out
    assert "JPEG mask train/masks/b.jpg holds" in out
    assert "error: train/masks/a.png: 1 mask(s) hold only 0 and 255 (train/masks/a.png)" in out
    assert "--config.dataset.mask_values=255:1" in out
    assert "error: train/masks/d.png: mask is 96x32 but its image train/images/d.jpg is 96x64" in out
    assert "value 255" in out and "value 2" in out
    code, out, _ = _run(capsys, tmp_path, "--format=mask_folder", "--mask_values=255:1")
    assert "hold only 0 and 255" not in out and "value 255" not in out and "(after dataset.mask_values" in out
    # A colour mask needs a palette; the error lists its colours in the config's syntax.
    _save(split / "masks" / "c.png", np.where(objects[..., None] > 0, [255, 0, 0], [0, 0, 0]).astype(np.uint8))
    code, out, _ = _run(capsys, tmp_path, "--format=mask_folder")
    assert "train/masks/c.png: an RGB mask with colours" in out and "'#000000:0,#ff0000:1'" in out
    code, out, _ = _run(capsys, tmp_path, "--format=mask_folder", "--palette=#000000:0,#ff0000:1")
    assert "an RGB mask with colours" not in out


def test_config_form_and_bad_invocations(tmp_path, capsys):
    split = tmp_path / "train"
    for name in "ab":
        _save(split / "images" / f"{name}.png", _photos()["china"])
        _save(split / "masks" / f"{name}.png", (_photos()["china"][..., 0] > 100).astype(np.uint8) * 255)
    config = ROOT / "configs" / "my_masks.py"
    code, out, _ = _run(capsys, f"--config={config}", f"--config.dataset.path={tmp_path}")
    assert code == 1 and "hold only 0 and 255" in out
    code, out, _ = _run(
        capsys, f"--config={config}", f"--config.dataset.path={tmp_path}", "--config.dataset.mask_values=255:1"
    )
    assert code == 0 and "value 1" in out
    code, out, _ = _run(
        capsys,
        f"--config={config}",
        f"--config.dataset.path={tmp_path}",
        "--config.dataset.mask_values=255:3",
        "--config.task.num_classes=2",
    )
    assert code == 1 and "mask ids [3] are past config.task.num_classes=2" in out
    cases = (
        ([f"--config={ROOT / 'configs' / 'digits_cnn.py'}"], "config.dataset.name='digits' is not read from a folder"),
        ([f"--config={config}", "--config.dataset.nope=1"], "unknown config key 'dataset.nope'"),
        ([f"--config={config}"], "config.dataset.path is empty"),
        ([tmp_path / "missing", "--format=image_folder"], "no such file or folder"),
        ([tmp_path], "give the layout of"),
        ([tmp_path, "--format=mask_folder", "--mask_values=x"], "config.dataset.mask_values='x' is not valid"),
        ([tmp_path, f"--config={config}"], "give PATH or --config, not both"),
    )
    for argv, message in cases:
        code, out, err = _run(capsys, *argv)
        assert code == 2 and out == "" and err.count("\n") == 1, (argv, err)
        assert err.startswith("jaxdl-data check: error: ") and message in err, err


@pytest.mark.parametrize("name", ["digits", "shapes_classes", "shapes_yolo", "shapes_masks"])
def test_example_folders_pass(tmp_path, capsys, name):
    from jaxdl.data import example_folders

    format, writer = example_folders.LAYOUTS[name]
    folder = writer(tmp_path, example_folders.SIZES["tiny"])
    code, out, _ = _run(capsys, folder, f"--format={format}")
    assert code == 0 and "0 error(s), 0 warning(s): no errors" in out, out


def test_unidentifiable_file_after_ultralytics_is_imported(tmp_path, capsys):
    import ultralytics.utils.patches  # noqa: F401 -- patches PIL's Image.open to import pi_heif on unknown files.

    _save(tmp_path / "train" / "cat" / "ok.png", _photos()["china"])
    (tmp_path / "train" / "cat" / "note.jpg").write_text("not a picture")
    code, out, _ = _run(capsys, tmp_path, "--format=image_folder")
    assert code == 1
    assert "error: train/cat/note.jpg: does not decode: not a readable image (cannot identify image file)" in out


def test_long_lists_are_cut_unless_all(tmp_path, capsys):
    _save(tmp_path / "train" / "cat" / "ok.png", _photos()["china"])
    for i in range(check._SHOWN + 2):
        (tmp_path / "train" / "cat" / f"bad{i:02d}.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    code, out, _ = _run(capsys, tmp_path, "--format=image_folder")
    assert code == 1 and out.count("does not decode") == check._SHOWN
    assert "... and 2 more like the above (--all lists them)" in out and f"{check._SHOWN + 2} error(s)" in out
    code, out, _ = _run(capsys, tmp_path, "--format=image_folder", "--all")
    assert out.count("does not decode") == check._SHOWN + 2 and "more like the above" not in out
