"""New images -> what the model was trained on: uint8 [N, 1, 28, 28], light garment on a dark background.

Pictures (PNG, JPEG, any size and mode) go through one rule, `to_model_input`:
  1. EXIF rotation applied; transparency flattened onto white; converted to 8-bit grayscale.
  2. Inverted when the image's border (its outermost ring of pixels) averages brighter than mid-grey
     (> 127): a product photo on a light background becomes light-on-dark like the dataset.
  3. Scaled so its longer side is 28 pixels (aspect ratio kept) and centred on a black 28x28 canvas.
Images already 28x28 skip step 3, so PNGs written from the dataset come back exactly.

`read_inputs` takes files or folders: pictures, Kaggle-style CSVs (784 pixel columns, an optional
`label`), and IDX image files (labels from the matching `*labels-idx1-ubyte*` file beside them).
Pictures are labelled when their folder is named after a class ("Ankle boot", "ankle_boot" or "9").
"""

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from fmnist_exp.dataset import CLASS_NAMES, read_idx
from fmnist_exp.errors import DataError

SIZE = 28
PICTURE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
INVERT_ABOVE = 127  # border mean above this: a light background, so invert


@dataclass
class Inputs:
    names: list[str]  # one per image: file name, or file:row
    images: np.ndarray  # uint8 [N, 1, 28, 28]
    labels: np.ndarray | None  # int64 [N], -1 where unknown; None when no image has a label


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


CLASS_BY_KEY = {_key(n): i for i, n in enumerate(CLASS_NAMES)} | {str(i): i for i in range(10)}


def to_model_input(picture: Image.Image) -> np.ndarray:
    """Any PIL image -> uint8 [28, 28], by the rule in the module docstring."""
    picture = ImageOps.exif_transpose(picture)
    if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
        rgba = picture.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        picture = Image.alpha_composite(white, rgba)
    gray = picture.convert("L")
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


def decode_picture(data: bytes, name: str) -> np.ndarray:
    """Bytes of a PNG/JPEG/... -> uint8 [28, 28]; anything else is a DataError naming `name`."""
    try:
        with Image.open(io.BytesIO(data)) as picture:
            picture.load()
            return to_model_input(picture)
    except UnidentifiedImageError as exc:
        raise DataError(
            f"{name}: not an image format Pillow recognises ({len(data):,} bytes). Send a PNG or "
            f"JPEG file; any size and colour mode works."
        ) from exc
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(
            f"{name}: a corrupt or truncated image ({type(exc).__name__}: {exc}). Send a PNG or "
            f"JPEG file; any size and colour mode works."
        ) from exc


def picture_label(path: Path) -> int:
    return CLASS_BY_KEY.get(_key(path.parent.name), -1)


def read_csv_inputs(path: Path) -> Inputs:
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc}).") from exc
    labels = table.pop("label").to_numpy() if "label" in table.columns else None
    if table.shape[1] != SIZE * SIZE:
        raise DataError(
            f"{path}: {table.shape[1]} pixel columns; a Fashion-MNIST CSV has 784 (pixel1..pixel784, "
            f"row-major 28x28, 0..255) and optionally a `label` column."
        )
    values = table.to_numpy()
    bad = ~np.isfinite(values.astype(float)) | (values < 0) | (values > 255)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise DataError(
            f"{path}: row {row + 2}, column {table.columns[col]!r} holds {values[row, col]!r}; "
            f"pixels must be 0..255."
        )
    images = values.astype(np.uint8).reshape(-1, 1, SIZE, SIZE)
    names = [f"{path.name}:{i + 2}" for i in range(len(images))]  # the CSV's line numbers
    return Inputs(names, images, None if labels is None else labels.astype(np.int64))


def read_idx_inputs(path: Path) -> Inputs:
    images = read_idx(path, 3)
    if images.shape[1:] != (SIZE, SIZE):
        raise DataError(f"{path}: images are {images.shape[1:]}, not 28x28.")
    labels = None
    partner = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
    if partner != path and partner.is_file():
        labels = read_idx(partner, 1).astype(np.int64)
        if len(labels) != len(images):
            raise DataError(f"{partner}: {len(labels)} labels for {len(images)} images in {path}.")
    names = [f"{path.name}:{i}" for i in range(len(images))]
    return Inputs(names, images[:, None], labels)


def _expand(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and _kind(p))
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"inputs: {path} does not exist.")
    return files


def _kind(path: Path) -> str | None:
    if path.suffix.lower() in PICTURE_SUFFIXES:
        return "picture"
    if path.suffix.lower() == ".csv":
        return "csv"
    if "idx3-ubyte" in path.name:
        return "idx"
    return None


def read_inputs(paths: list[Path]) -> Inputs:
    """Files and folders -> one batch of model inputs, in a stable order."""
    parts: list[Inputs] = []
    files = _expand(paths)
    for path in files:
        kind = _kind(path)
        if kind == "picture":
            image = decode_picture(path.read_bytes(), str(path))
            parts.append(Inputs([path.name], image[None, None], np.array([picture_label(path)])))
        elif kind == "csv":
            parts.append(read_csv_inputs(path))
        elif kind == "idx":
            parts.append(read_idx_inputs(path))
        else:
            raise DataError(
                f"inputs: {path} is neither a picture ({', '.join(sorted(PICTURE_SUFFIXES))}), "
                f"a .csv, nor an IDX image file (*idx3-ubyte[.gz])."
            )
    if not parts:
        raise DataError(f"inputs: no pictures, CSVs or IDX files in {', '.join(map(str, paths))}.")
    labels = [p.labels if p.labels is not None else np.full(len(p.names), -1) for p in parts]
    all_labels = np.concatenate(labels)
    return Inputs(
        [n for p in parts for n in p.names],
        np.concatenate([p.images for p in parts]),
        all_labels if (all_labels >= 0).any() else None,
    )
