"""Any picture -> the model's input: uint8 [28, 28], a light garment on a dark background.

One rule for every picture, whether it comes from an image-folder dataset, `predict` or the web app:
  1. EXIF rotation applied; transparency flattened onto white; converted to 8-bit grayscale, with
     16- and 32-bit channels scaled to 0..255 (not clipped).
  2. Inverted when the image's border (its outermost ring of pixels) averages brighter than mid-grey
     (> 127): a product photo on a light background becomes light-on-dark like the dataset.
  3. Scaled so its longer side is 28 pixels (aspect ratio kept) and centred on a black 28x28 canvas.
Images already 28x28 skip step 3, so PNGs written from the dataset come back exactly.

A picture's cost is bounded before any pixel is decoded: its size is read from the header; a JPEG
is decoded at a reduced scale (1/2 to 1/8, still over 8 x 28 pixels a side), and what would be
decoded must stay within MAX_PIXELS (16 megapixels, far more than a 28x28 model needs), so a huge
canvas in a small file costs neither time nor memory. Large pictures are box-reduced before the rule's
grayscale conversion and final resize, which then work on at most a few hundred pixels a side.
"""

import ctypes
import ctypes.util
import io
import os
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fmnist_exp.errors import DataError

SIZE = 28
SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
INVERT_ABOVE = 127  # border mean above this: a light background, so invert
MAX_PIXELS = 16_000_000  # width x height decoded; 16 megapixels of RGBA is 64 MB
WORKING_SIDE = 8 * SIZE  # pictures are box-reduced to about this before the rule's resize
WIDE_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535}


# Folders that file managers, archivers and NAS boxes add beside pictures (thumbnails, resource
# forks): skipped like hidden files, wherever they are in a picture folder.
SYSTEM_FOLDERS = {"@eaDir", "__MACOSX", "$RECYCLE.BIN", "System Volume Information"}


def hidden(name: str) -> bool:
    """A file or folder name that is not the user's picture: '.thumbnails', '@eaDir', ..."""
    return name.startswith(".") or name in SYSTEM_FOLDERS


def is_picture_name(name: str) -> bool:
    return not hidden(name) and os.path.splitext(name)[1].lower() in SUFFIXES


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


MALLOC_TRIM = _malloc_trim()


def release_memory() -> None:
    """Give freed heap memory back to the system. glibc keeps what a burst of large decodes freed
    (its mmap threshold grows with them), so a server's memory would stay at the burst's peak."""
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)


class PictureTooLarge(DataError):
    """A picture whose header announces more than MAX_PIXELS pixels (HTTP 413 in the web app)."""


def _to_gray(picture: Image.Image) -> Image.Image:
    """8-bit grayscale. Pillow's convert('L') clips 16-bit values at 255 (a 16-bit PNG turns into
    black and white), so wide integer and float channels are scaled to 0..255 here instead."""
    if picture.mode in WIDE_MODES:
        values = np.asarray(picture, dtype=np.float64)
        full = WIDE_MODES[picture.mode] if values.max(initial=0) > 255 else 255
        return Image.fromarray(np.round(values.clip(0, full) * (255 / full)).astype(np.uint8))
    if picture.mode == "F":  # float TIFFs: 0..1 when they fit, else taken as 0..255
        values = np.asarray(picture, dtype=np.float64)
        scale = 255 if values.max(initial=0) <= 1 else 1
        return Image.fromarray(np.round((values * scale).clip(0, 255)).astype(np.uint8))
    if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
        rgba = picture.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        picture = Image.alpha_composite(white, rgba)
    return picture.convert("L")


def to_model_input(picture: Image.Image) -> np.ndarray:
    """Any PIL image -> uint8 [28, 28], by the rule in the module docstring."""
    if picture.mode == "L" and picture.size == (SIZE, SIZE) and "exif" not in picture.info:
        pixels = np.array(picture, dtype=np.uint8)  # the dataset's own kind: steps 2 only
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        return 255 - pixels if border.mean() > INVERT_ABOVE else pixels
    gray = _to_gray(ImageOps.exif_transpose(picture))
    pixels = np.asarray(gray)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if border.mean() > INVERT_ABOVE:
        gray = ImageOps.invert(gray)
    if gray.size != (SIZE, SIZE):
        scale = SIZE / max(gray.size)
        w, h = (max(1, round(d * scale)) for d in gray.size)
        canvas = Image.new("L", (SIZE, SIZE), 0)
        canvas.paste(
            gray.resize((w, h), Image.Resampling.LANCZOS), ((SIZE - w) // 2, (SIZE - h) // 2)
        )
        gray = canvas
    return np.array(gray, dtype=np.uint8)  # a writable copy (torch.from_numpy needs one)


def reduced(picture: Image.Image) -> Image.Image:
    """A large decoded picture box-reduced by a whole factor so its longer side stays at least
    WORKING_SIDE: the rule's border test and resize see the same picture at a fraction of the cost.
    Modes Image.reduce cannot take (palette, 1-bit, CMYK) are converted first."""
    factor = max(picture.size) // WORKING_SIDE
    if factor < 2:
        return picture
    if picture.mode in WIDE_MODES:
        picture = picture.convert("I")  # 32-bit integers: 16-bit values kept for _to_gray's scaling
    elif picture.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
        picture = picture.convert("RGBA" if "transparency" in picture.info else "RGB")
    return picture.reduce(factor)


def decode(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Bytes of a PNG/JPEG/... -> uint8 [28, 28]; anything else is a DataError naming `name`."""
    hint = f"Send a PNG or JPEG file (any colour mode, up to {max_pixels:,} pixels)."
    try:
        with Image.open(io.BytesIO(data)) as picture:
            width, height = picture.size  # from the header: nothing decoded yet
            if picture.format == "JPEG":  # decoded at 1/2..1/8 scale: the model needs 28 x 28
                picture.draft(picture.mode, (WORKING_SIDE, WORKING_SIDE))
            decoded = picture.size[0] * picture.size[1]
            if decoded > max_pixels:
                raise PictureTooLarge(
                    f"{name}: {width} x {height} pixels, over the limit of {max_pixels:,} pixels "
                    f"decoded. Scale it down first (the model sees 28 x 28)."
                )
            picture.load()
            exif = picture.getexif()  # reduce() drops the orientation tag: apply it first
            if exif.get(0x0112, 1) != 1:
                picture = ImageOps.exif_transpose(picture)
            return to_model_input(reduced(picture))
    except Image.DecompressionBombError as exc:  # Pillow's own cap, for formats it sizes late
        raise PictureTooLarge(
            f"{name}: {exc} Scale it down first (the model sees 28 x 28)."
        ) from exc
    except UnidentifiedImageError as exc:
        raise DataError(
            f"{name}: not an image format Pillow recognises ({len(data):,} bytes). {hint}"
        ) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(
            f"{name}: a corrupt or truncated image ({type(exc).__name__}: {exc}). {hint}"
        ) from exc
