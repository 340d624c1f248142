"""Any picture -> the model's input: uint8 [28, 28], a light garment on a dark background.

One rule for every picture, whether it comes from an image-folder dataset, `predict` or the web app:
  1. EXIF rotation applied; transparency flattened onto white; converted to 8-bit grayscale, with
     16- and 32-bit channels scaled to 0..255 (not clipped).
  2. Inverted when the image's border (its outermost ring of pixels) averages brighter than mid-grey
     (> 127): a product photo on a light background becomes light-on-dark like the dataset.
  3. Scaled so its longer side is 28 pixels (aspect ratio kept) and centred on a black 28x28 canvas.
Images already 28x28 skip step 3, so PNGs written from the dataset come back exactly.

A picture's size is read from its header and checked against MAX_PIXELS before any pixel is
decoded: a huge canvas in a small file costs neither time nor memory.
"""

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fmnist_exp.errors import DataError

SIZE = 28
SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
INVERT_ABOVE = 127  # border mean above this: a light background, so invert
MAX_PIXELS = 50_000_000  # width x height; a 50-megapixel photo decodes to ~150 MB of RGB
WIDE_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535}


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


def decode(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Bytes of a PNG/JPEG/... -> uint8 [28, 28]; anything else is a DataError naming `name`."""
    hint = f"Send a PNG or JPEG file (any colour mode, up to {max_pixels:,} pixels)."
    try:
        with Image.open(io.BytesIO(data)) as picture:
            width, height = picture.size  # from the header: nothing decoded yet
            if width * height > max_pixels:
                raise PictureTooLarge(
                    f"{name}: {width} x {height} pixels, over the limit of {max_pixels:,} pixels. "
                    f"Scale it down first (the model sees 28 x 28)."
                )
            picture.load()
            return to_model_input(picture)
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
