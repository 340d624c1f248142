"""New images for a trained model -> uint8 [N, 1, 28, 28], with their labels where they have one.

`read_inputs` takes files or folders: pictures (through pictures.py's rule, the one training on a
picture folder uses), Kaggle-style CSVs (784 pixel columns, an optional `label`), and IDX image
files (labels from the matching `*labels-idx1-ubyte*` file beside them). A picture is labelled
when its folder is named after one of the model's classes ("Ankle boot", "ankle_boot", or "9" for
the Fashion-MNIST classes). A picture that cannot be read is reported in `failed` and the others
are still read; a bad CSV or IDX file stops the whole read.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fmnist_exp.data import pictures
from fmnist_exp.data.dataset import CLASS_NAMES, OFFICIAL_ID, class_key, read_idx
from fmnist_exp.errors import DataError

SIZE = pictures.SIZE


@dataclass
class Inputs:
    names: list[str]  # one per image: file name, or file:row
    images: np.ndarray  # uint8 [N, 1, 28, 28]
    labels: np.ndarray | None  # int64 [N], -1 where unknown; None when no image has a label
    failed: list[str] = field(default_factory=list)  # one message per picture that was skipped


def label_lookup(class_names: tuple[str, ...]) -> dict[str, int]:
    """Folder name key -> label id for these classes (the official ids and 0-9 for Fashion-MNIST)."""
    if tuple(class_names) == CLASS_NAMES:
        return OFFICIAL_ID
    return {class_key(n): i for i, n in enumerate(class_names)}


def has_header(path: Path) -> bool:
    """Whether the CSV's first line names its columns (a cell that is not a number, or the column
    numbers 0, 1, 2, ... that pandas writes for unnamed columns) rather than holding the first
    image: files written without a header keep every row."""
    with open(path, encoding="utf-8", errors="replace") as f:
        cells = [c.strip().strip('"') for c in f.readline().strip().split(",")]
    numbered = cells in (
        [str(i) for i in range(len(cells))],
        [str(i + 1) for i in range(len(cells))],
    )
    return numbered or not all(_is_number(c) for c in cells)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _shown(value) -> str:
    """A CSV cell for a message: text quoted, numbers as written (256, not np.int64(256))."""
    return repr(value) if isinstance(value, str) else str(value)


def read_csv_inputs(path: Path, n_classes: int) -> Inputs:
    """784 pixel columns (and a `label` column) with a header; without one, 784 columns are
    pixels and 785 are the Kaggle layout, the label first."""
    try:
        header = has_header(path)
        table = pd.read_csv(path, header=0 if header else None)
    except pd.errors.EmptyDataError as exc:
        raise DataError(
            f"{path}: an empty file; a CSV of images has a header and a row per image."
        ) from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc}).") from exc
    if not header:  # columns named as a Kaggle file names them
        width = table.shape[1]
        kaggle = width == SIZE * SIZE + 1  # 785: the label first
        table.columns = ["label"] * kaggle + [f"pixel{i}" for i in range(1, width + 1 - kaggle)]
    labels = table.pop("label") if "label" in table.columns else None
    if table.shape[1] != SIZE * SIZE:
        raise DataError(
            f"{path}: {table.shape[1]} pixel columns; a Fashion-MNIST CSV has 784 (pixel1..pixel784, "
            f"row-major 28x28, 0..255) and optionally a `label` column."
        )
    if table.empty:
        raise DataError(f"{path}: a header and no rows; add a row per image.")
    values = table.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values < 0) | (values > 255)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise DataError(
            f"{path}: row {row + 1 + header}, column {table.columns[col]!r} holds "
            f"{_shown(table.iat[row, col])}; pixels must be numbers in 0..255."
        )
    if labels is not None:
        numbers = pd.to_numeric(labels, errors="coerce").to_numpy(dtype=np.float64)
        wrong = ~np.isin(numbers, np.arange(n_classes))
        if wrong.any():
            row = int(np.argmax(wrong))
            raise DataError(
                f"{path}: row {row + 1 + header} has label {str(labels.iat[row])!r}; the model's labels are the "
                f"whole numbers 0..{n_classes - 1}. Fix the label, or drop the label column to "
                f"predict without scoring."
            )
        labels = numbers.astype(np.int64)
    images = np.round(values).astype(np.uint8).reshape(-1, 1, SIZE, SIZE)
    names = [f"{path.name}:{i + 1 + header}" for i in range(len(images))]  # the CSV's line numbers
    return Inputs(names, images, labels)


def read_idx_inputs(path: Path) -> Inputs:
    images = read_idx(path, 3)
    labels = None
    partner = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
    if partner != path and partner.is_file():
        labels = read_idx(partner, 1).astype(np.int64)
        if len(labels) != len(images):
            raise DataError(f"{partner}: {len(labels)} labels for {len(images)} images in {path}.")
    names = [f"{path.name}:{i}" for i in range(len(images))]
    return Inputs(names, images[:, None], labels)


def _kind(path: Path) -> str | None:
    if path.suffix.lower() in pictures.SUFFIXES:
        return "picture"
    if path.suffix.lower() == ".csv":
        return "csv"
    if "idx3-ubyte" in path.name:
        return "idx"
    return None


def _expand(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():  # hidden files and folders (.thumbnails/, @eaDir/) are not the user's
            for top, folders, names in os.walk(path):
                folders[:] = sorted(d for d in folders if not pictures.hidden(d))
                found = (Path(top) / n for n in sorted(names) if not pictures.hidden(n))
                files += [f for f in found if _kind(f) and f.is_file()]
        elif path.is_file():
            if _kind(path) is None:
                raise DataError(
                    f"inputs: {path} is neither a picture ({', '.join(sorted(pictures.SUFFIXES))}), "
                    f"a .csv, nor an IDX image file (*idx3-ubyte[.gz])."
                )
            files.append(path)
        else:
            raise DataError(f"inputs: {path} does not exist.")
    return files


def read_inputs(paths: list[Path], class_names: tuple[str, ...] = CLASS_NAMES) -> Inputs:
    """Files and folders -> one batch of model inputs, in a stable order."""
    parts: list[Inputs] = []
    failed: list[str] = []
    lookup = label_lookup(class_names)
    for path in _expand(paths):
        kind = _kind(path)
        if kind == "picture":
            try:
                image = pictures.decode(path.read_bytes(), str(path))
            except (DataError, OSError) as exc:
                failed.append(str(exc) if isinstance(exc, DataError) else f"{path}: {exc}")
                continue
            label = lookup.get(class_key(path.parent.name), -1)
            parts.append(Inputs([path.name], image[None, None], np.array([label])))
        elif kind == "csv":
            parts.append(read_csv_inputs(path, len(class_names)))
        else:
            parts.append(found := read_idx_inputs(path))
            if found.labels is not None and found.labels.max(initial=0) >= len(class_names):
                raise DataError(
                    f"{path}: labels up to {found.labels.max()} beside it, but the model knows "
                    f"{len(class_names)} classes (0..{len(class_names) - 1}); use a model trained "
                    f"on these classes."
                )
    if not parts:
        why = f" ({len(failed)} unreadable: {failed[0]})" if failed else ""
        raise DataError(
            f"inputs: no readable pictures, CSVs or IDX files in {', '.join(map(str, paths))}{why}."
        )
    labels = [p.labels if p.labels is not None else np.full(len(p.names), -1) for p in parts]
    all_labels = np.concatenate(labels)
    return Inputs(
        [n for p in parts for n in p.names],
        np.concatenate([p.images for p in parts]),
        all_labels if (all_labels >= 0).any() else None,
        failed,
    )
