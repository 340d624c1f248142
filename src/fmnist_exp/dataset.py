"""Fashion-MNIST files on disk -> uint8 tensors.

Reads the official IDX files (gzipped or not) or the Kaggle CSV pair, whichever a directory holds,
and downloads the IDX files when asked. Everything a user can get wrong (missing files, a truncated
gz, a CSV with a bad row) raises a DataError that names the file and, for CSVs, the row.
"""

import gzip
import hashlib
import os
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fmnist_exp.errors import DataError

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
IDX_FILES = {  # split -> (images, labels), without the optional .gz
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CSV_FILES = {"train": "fashion-mnist_train.csv", "test": "fashion-mnist_test.csv"}
CSV_COLUMNS = ["label"] + [f"pixel{i}" for i in range(1, 785)]
IDX_MAGIC = {3: 0x0803, 1: 0x0801}  # ndim -> magic number of an unsigned-byte IDX file
GET_DATA_HINT = (
    "Get the data with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or run with "
    "data.download=true, or point data.data_dir (or $FMNIST_DATA_DIR) at a folder holding the four "
    "IDX files (train-images-idx3-ubyte.gz, ...) or the Kaggle pair fashion-mnist_train.csv / "
    "fashion-mnist_test.csv."
)


@dataclass
class FashionMNIST:
    """The official splits as read from one directory."""

    train_images: torch.Tensor  # uint8 [60000, 1, 28, 28]
    train_labels: torch.Tensor  # int64 [60000]
    test_images: torch.Tensor  # uint8 [10000, 1, 28, 28]
    test_labels: torch.Tensor  # int64 [10000]
    source: Path  # the directory read
    format: str  # "idx" | "csv"


def _idx_path(directory: Path, name: str) -> Path | None:
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def detect_format(directory: Path) -> str | None:
    """'idx' when all four IDX files are there, else 'csv' when both CSVs are, else None."""
    if all(_idx_path(directory, n) for pair in IDX_FILES.values() for n in pair):
        return "idx"
    if all((directory / n).is_file() for n in CSV_FILES.values()):
        return "csv"
    return None


def load(directories: list[Path], download_note: str = "") -> FashionMNIST:
    """Read the first directory that holds a complete copy; say where we looked if none does."""
    for directory in directories:
        fmt = detect_format(directory)
        if fmt == "idx":
            return _load_idx(directory)
        if fmt == "csv":
            return _load_csv(directory)
    searched = "; ".join(describe_dir(d) for d in directories)
    raise DataError(
        f"Fashion-MNIST not found. Searched: {searched}. {download_note}{GET_DATA_HINT}"
    )


def describe_dir(directory: Path) -> str:
    """Why a folder holds no dataset, for error messages."""
    if not directory.is_dir():
        return f"{directory} (no such directory)"
    return f"{directory} (no complete set of IDX files nor the CSV pair)"


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """One IDX file (gz or raw) -> uint8 array, checked against its header."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            blob = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{path} could not be read ({e}): the file is truncated or corrupt. Delete it and fetch "
            f"it again (data.download=true or apt-get install --reinstall dataset-fashion-mnist)."
        ) from e
    header = 4 + 4 * ndim
    if len(blob) < header or struct.unpack(">I", blob[:4])[0] != IDX_MAGIC[ndim]:
        found = blob[:4].hex() if len(blob) >= 4 else "nothing"
        raise DataError(
            f"{path} is not an unsigned-byte IDX file with {ndim} dimension(s): magic number "
            f"0x{IDX_MAGIC[ndim]:08x} expected, found 0x{found}. Check that the file names match "
            f"their contents, or fetch the file again."
        )
    shape = struct.unpack(f">{ndim}I", blob[4:header])
    expected_shape = (shape[0], 28, 28)[:ndim]
    if shape != expected_shape or len(blob) - header != int(np.prod(shape)):
        raise DataError(
            f"{path} has header shape {shape} and {len(blob) - header} data bytes; Fashion-MNIST "
            f"needs shape (N, 28, 28) for images or (N,) for labels with N*28*28 or N bytes. "
            f"The file is truncated or not Fashion-MNIST: fetch it again."
        )
    return np.frombuffer(blob, dtype=np.uint8, offset=header).reshape(shape)


def _load_idx(directory: Path) -> FashionMNIST:
    arrays = {}
    for split, (images_name, labels_name) in IDX_FILES.items():
        images_path, labels_path = (
            _idx_path(directory, images_name),
            _idx_path(directory, labels_name),
        )
        images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
        if len(images) != len(labels):
            raise DataError(
                f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
                f"labels; the two files must come from the same split. Fetch them again."
            )
        if labels.max(initial=0) > 9:
            raise DataError(f"{labels_path} has labels above 9; it is not Fashion-MNIST.")
        arrays[split] = _to_tensors(images, labels)
    return FashionMNIST(*arrays["train"], *arrays["test"], source=directory, format="idx")


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A Kaggle CSV (header label,pixel1..pixel784) -> (uint8 [N,28,28], uint8 [N]), row checked."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise DataError(f"{path} could not be parsed as CSV ({e}). Fetch the file again.") from e
    if list(frame.columns) != CSV_COLUMNS:
        got = ",".join(map(str, frame.columns[:4])) + ("..." if len(frame.columns) > 4 else "")
        raise DataError(
            f"{path} has columns {got} ({len(frame.columns)} in all); a Fashion-MNIST CSV needs the "
            f"header label,pixel1,...,pixel784 (785 columns), as in the Kaggle files."
        )
    values = frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values != np.round(values)) | (values < 0) | (values > 255)
    bad[:, 0] |= values[:, 0] > 9
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            f"{path} row {row + 1} (line {row + 2}), column {CSV_COLUMNS[col]}: value "
            f"{frame.iat[row, col]!r} is not an integer in {'0..9' if col == 0 else '0..255'}. "
            f"Fix or drop that row, or fetch the file again."
        )
    pixels = values.astype(np.uint8)
    return pixels[:, 1:].reshape(-1, 28, 28), pixels[:, 0]


def _load_csv(directory: Path) -> FashionMNIST:
    train = _to_tensors(*read_csv(directory / CSV_FILES["train"]))
    test = _to_tensors(*read_csv(directory / CSV_FILES["test"]))
    return FashionMNIST(*train, *test, source=directory, format="csv")


def _to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def download(directory: Path, base_url: str, md5: dict[str, str], timeout_s: float = 60.0) -> None:
    """Fetch the missing IDX .gz files into `directory`, each checked against its MD5.

    Each file is written to a temporary name and renamed only once complete and verified, so a
    failure never leaves a half-written file that a later run would trust.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for name in (f"{n}.gz" for pair in IDX_FILES.values() for n in pair):
        target = directory / name
        if target.exists():
            continue
        url = f"{base_url.rstrip('/')}/{name}"
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            digest = hashlib.md5()
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as resp:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
            expected = md5.get(name)
            if expected and digest.hexdigest() != expected:
                raise DataError(
                    f"{url} downloaded with MD5 {digest.hexdigest()}, expected {expected} "
                    f"(data.md5.{name}): the file is corrupt or changed on the server; nothing was "
                    f"kept. Try again, use another mirror (data.url), or install the Debian package."
                )
            os.replace(tmp, target)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise DataError(
                f"Downloading {url} into {directory} failed ({e}); nothing half-written was kept. "
                f"Check data.url and the network. {GET_DATA_HINT}"
            ) from e
        finally:
            tmp.unlink(missing_ok=True)
