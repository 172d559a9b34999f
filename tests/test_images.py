"""jaxdl.data.images.decode on real photographs (scikit-learn's two) saved the ways users' files come."""

import io

import numpy as np
import pytest
from PIL import Image

from jaxdl.data import images


@pytest.fixture(scope="module")
def china():
    from sklearn.datasets import load_sample_images

    return load_sample_images().images[0]  # 427 x 640 RGB, uint8.


def _save(pixels, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _sideways(pixels, orientation: int) -> bytes:
    """A JPEG stored as a camera held sideways stores it, with the EXIF tag that turns it upright."""
    # Orientation 6: the viewer turns the stored picture 90 degrees clockwise; 8: counter-clockwise;
    # 3: 180 degrees. Stored = the upright picture turned the other way.
    turn = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = Image.fromarray(pixels).transpose(turn[orientation])
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpeg_comes_out_upright(china, orientation, tmp_path):
    data = _sideways(china, orientation)
    upright = images.decode(data)
    assert upright.shape == china.shape
    # JPEG at quality 95 changes pixels by a few levels; a wrong turn changes them by ~50.
    assert np.abs(upright.astype(int) - china).mean() < 4
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    assert images.image_size(path) == (640, 427)  # (width, height) upright, from the header alone.
    with Image.open(path) as stored:
        assert stored.size == ((427, 640) if orientation in (6, 8) else (640, 427))


def test_grayscale_and_rgba_files_come_in_the_asked_channels(china):
    gray = np.asarray(Image.fromarray(china).convert("L"))
    from_gray = images.decode(_save(gray, "PNG"))
    assert from_gray.shape == (427, 640, 3) and all((from_gray[..., c] == gray).all() for c in range(3))
    rgba = np.concatenate([china, np.full((*china.shape[:2], 1), 255, np.uint8)], axis=-1)
    assert (images.decode(_save(rgba, "PNG")) == china).all()
    assert (images.decode(_save(china, "PNG"), channels=1)[..., 0] == gray).all()


def test_sixteen_bit_grayscale_is_scaled_to_eight_bits():
    wide = np.array([[0, 257 * 128, 65535]], np.uint16)
    assert images.decode(_save(wide, "PNG"), channels=1)[0, :, 0].tolist() == [0, 128, 255]


def test_truncated_and_non_image_files_are_one_line_errors_naming_the_file(china, tmp_path):
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(_save(china, "JPEG")[:20000])
    with pytest.raises(images.ImageDecodeError, match=r"cut\.jpg: not a readable image \(image file is truncated"):
        images.decode(truncated)
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    with pytest.raises(images.ImageDecodeError, match=r"notes\.png: not a readable image"):
        images.decode(text)
    with pytest.raises(images.ImageDecodeError, match=r"missing\.png: no such file"):
        images.decode(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="channels must be 1"):
        images.decode(_save(china, "PNG"), channels=4)


def test_image_suffixes_and_hidden_files():
    assert images.is_image_file("a/b/Photo.JPG") and images.is_image_file("x.webp")
    assert not images.is_image_file("a/.hidden.png") and not images.is_image_file("labels.txt")
