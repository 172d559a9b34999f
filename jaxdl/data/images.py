"""The one way jaxdl turns an image file into pixels: EXIF orientation applied, then the model's channels.

Every reader of image files (the folder datasets, `jaxdl-data check`,
`jaxdl-predict`) calls `decode`, so a photo looks the same to training,
checking and prediction:

1. Pillow opens the file and decodes it completely (a truncated JPEG fails here,
   not later with grey pixels: Pillow's LOAD_TRUNCATED_IMAGES is never set);
2. the EXIF orientation tag is applied (`ImageOps.exif_transpose`): a phone photo
   stored sideways with orientation 6 comes out upright, as every viewer and
   torchvision-with-exif-transpose show it, and the boxes a labeller drew on the
   upright picture stay on their objects;
3. it is converted to `channels`: 3 gives RGB (grayscale, palette and CMYK files
   are converted; RGBA and LA drop alpha as if composited on black, which is
   Pillow's `convert`), 1 gives luminance (ITU-R 601-2, Pillow's "L").

The result is uint8 [H, W, channels]. 16-bit grayscale PNGs are scaled to 8 bits.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from jaxdl.errors import UserError

# Suffixes of the files the folder datasets read as images (lower case), as torchvision's IMG_EXTENSIONS.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


# What Pillow raises for a file it cannot read (UnidentifiedImageError is an OSError); ImportError
# from a replaced Image.open that imports a plugin for such a file (see `open_image`).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, ImportError)


def open_image(source):
    """Pillow's own `Image.open(source)`, also in a process where a library replaced it.

    Importing Ultralytics replaces `PIL.Image.open` with a function that, on a
    file Pillow cannot identify, runs its requirements check for pi-heif, which
    prints to stderr and may try to pip-install it. jaxdl only reads: it calls
    the function Ultralytics kept aside.
    """
    import sys

    from PIL import Image

    opener = Image.open
    if getattr(opener, "__module__", "") != Image.__name__:
        opener = getattr(sys.modules.get("ultralytics.utils.patches"), "_image_open", opener)
    return opener(source)


def failure(error: BaseException) -> str:
    """What went wrong in a decode, in a few words (the first line of Pillow's message)."""
    text = str(error).strip()
    # Pillow names the file (or a BytesIO's address) after this; the caller names the file.
    if isinstance(error, ImportError) or text.startswith("cannot identify image file"):
        return "cannot identify image file"
    return text.splitlines()[0] if text else type(error).__name__


class ImageDecodeError(UserError, ValueError):
    """An image file that does not decode completely; names the file."""


def is_image_file(path: str | Path) -> bool:
    """Whether `path` has an image suffix (case-insensitive) and is not hidden."""
    path = Path(path)
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def decode(source: str | Path | bytes, channels: int = 3, *, name: str | None = None) -> np.ndarray:
    """uint8 [H, W, channels] pixels of an image file (path or bytes), upright, in the given channels.

    Raises:
      ImageDecodeError: the file does not exist, is not an image Pillow knows, or is
        truncated or corrupt; the message names the file (`name`, else the path).
      ValueError: `channels` is not 1 or 3.
    """
    from PIL import Image, ImageOps

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        with open_image(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.load()  # Decodes every byte now: a truncated file raises here.
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: scale to 8 bits.
                wide = np.asarray(image, np.float64)
                top = 65535.0 if image.mode.startswith("I;16") or wide.max() > 255 else 255.0
                image = Image.fromarray(np.clip(np.round(wide * (255.0 / top)), 0, 255).astype(np.uint8))
            pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    except FileNotFoundError:
        raise ImageDecodeError(f"{label}: no such file") from None
    except DECODE_ERRORS as error:
        raise ImageDecodeError(f"{label}: not a readable image ({failure(error)})") from None
    return np.ascontiguousarray(pixels.reshape(*pixels.shape[:2], channels))


def image_size(source: str | Path) -> tuple[int, int]:
    """(width, height) of the upright image (EXIF orientation applied), read from the header only."""

    try:
        with open_image(source) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except DECODE_ERRORS as error:
        raise ImageDecodeError(f"{source}: not a readable image ({type(error).__name__})") from None
    # Orientations 5-8 swap the axes (a quarter turn, possibly mirrored).
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)
