"""Image-classification files on disk -> uint8 tensors, whichever layout a folder holds:

  idx          the four official IDX files (train-images-idx3-ubyte[.gz], ...), as Zalando publishes them
  torchvision  the same files where torchvision downloads them: <root>/FashionMNIST/raw/ (root or raw/ given)
  csv          the Kaggle pair fashion-mnist_train.csv / fashion-mnist_test.csv (label,pixel1..pixel784)
  folder       pictures in a folder per class: <dir>/train/<class>/*.png and <dir>/test/<class>/*.png

Splits of any size are read. Class folders named after the Fashion-MNIST classes (ignoring case,
spaces and punctuation: `T-shirt_top`, `ankle boot`) or 0-9 keep the official label ids; any other
names become the classes in sorted order (torchvision's ImageFolder rule). Pictures go through the
same rule as `predict` (pictures.py). Everything a user can get wrong (a missing or truncated file,
a CSV with a bad row, an empty class folder, an unreadable picture) raises a DataError that names
the file or folder, and for CSVs the row.
"""

import gzip
import hashlib
import json
import os
import struct
import tempfile
import unicodedata
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fmnist_exp.data import pictures
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
TORCHVISION_DIRS = ("FashionMNIST/raw", "raw")  # under data.data_dir: torchvision's download layout
DECODE_WORKERS_FROM = 2000  # pictures in a folder dataset from which decoding uses every core
GET_DATA_HINT = (
    "Get the data with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or run with "
    "data.download=true, or point data.data_dir (or $FMNIST_DATA_DIR) at a folder holding the four "
    "IDX files (train-images-idx3-ubyte.gz, ...), torchvision's FashionMNIST/raw/ folder, the Kaggle "
    "pair fashion-mnist_train.csv / fashion-mnist_test.csv, or pictures in train/<class>/ and "
    "test/<class>/."
)


def class_key(name: str) -> str:
    """How folder names are matched to classes: case, spaces and punctuation ignored, letters and
    digits of every script kept, one Unicode form ('T-shirt_top' and 'T-shirt/top' -> 'tshirttop',
    'Кофта' -> 'кофта', 'Café' written either way -> 'café'). A name with no letter or digit (an
    emoji) is its own key."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    return "".join(c for c in folded if c.isalnum()) or name


# content_digest of the official training and test splits (60,000 and 10,000 images)
OFFICIAL_DIGESTS = ("aeb6a5dd11cf714d", "6ed1c952eab08543")
OFFICIAL_ID = {class_key(n): i for i, n in enumerate(CLASS_NAMES)} | {str(i): i for i in range(10)}


@dataclass
class Splits:
    """The training and test splits as read from one directory."""

    train_images: torch.Tensor  # uint8 [N_train, 1, 28, 28]
    train_labels: torch.Tensor  # int64 [N_train], in 0..len(class_names)-1
    test_images: torch.Tensor  # uint8 [N_test, 1, 28, 28]
    test_labels: torch.Tensor  # int64 [N_test]
    source: Path  # the directory read
    format: str  # "idx" | "torchvision" | "csv" | "folder"
    class_names: tuple[str, ...] = CLASS_NAMES  # label id -> name


def _idx_path(directory: Path, name: str) -> Path | None:
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def _has_idx(directory: Path) -> bool:
    return all(_idx_path(directory, n) for pair in IDX_FILES.values() for n in pair)


def find(directory: Path) -> tuple[str, Path] | None:
    """(format, the folder that holds the files) for the first layout `directory` holds, else None."""
    if _has_idx(directory):
        return "idx", directory
    for sub in TORCHVISION_DIRS:
        if _has_idx(directory / sub):
            return "torchvision", directory / sub
    if all((directory / n).is_file() for n in CSV_FILES.values()):
        return "csv", directory
    if (directory / "train").is_dir() and (directory / "test").is_dir():
        return "folder", directory
    return None


def detect_format(directory: Path) -> str | None:
    """The layout `directory` holds (see the module docstring), or None."""
    found = find(directory)
    return found[0] if found else None


def locate(directories: list[Path], download_note: str = "") -> tuple[str, Path]:
    """(format, folder) of the first directory that holds a complete copy; say where we looked if
    none does."""
    for directory in directories:
        if directory.is_file():
            raise DataError(
                f"data.data_dir={directory} is a file; it must be the folder that holds the data. "
                f"{GET_DATA_HINT}"
            )
        if found := find(directory):
            return found
    searched = "; ".join(describe_dir(d) for d in directories)
    raise DataError(f"No dataset found. Searched: {searched}. {download_note}{GET_DATA_HINT}")


def load(directories: list[Path], download_note: str = "") -> Splits:
    """Read the first directory that holds a complete copy (locate)."""
    fmt, folder = locate(directories, download_note)
    reader = {"idx": _load_idx, "torchvision": _load_idx, "csv": _load_csv}
    data = reader.get(fmt, _load_folder)(folder)
    data.format = fmt
    return data


def data_files(folder: Path, fmt: str) -> list[Path]:
    """The files a layout's reader reads, in a fixed order."""
    if fmt in ("idx", "torchvision"):
        return [_idx_path(folder, name) for pair in IDX_FILES.values() for name in pair]
    if fmt == "csv":
        return [folder / name for name in CSV_FILES.values()]
    return [Path(f) for split in ("train", "test")
            for files in class_folders(folder / split).values() for f in files]  # fmt: skip


def fingerprint(directories: list[Path], download_note: str = "") -> str:
    """A SHA-256 digest (16 hex digits) of the data `load` would read from these directories: its
    layout and every file it reads, by name (class folders included) and content. Two runs with the
    same config on different files differ here; the same files anywhere on disk do not."""
    fmt, folder = locate(directories, download_note)
    digest = hashlib.sha256(("idx" if fmt == "torchvision" else fmt).encode())  # the same files
    for path in data_files(folder, fmt):
        with open(path, "rb") as f:
            content = hashlib.file_digest(f, "sha256").digest()
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + content)
    return digest.hexdigest()[:16]


def content_digest(images: torch.Tensor, labels: torch.Tensor, class_names: tuple[str, ...]) -> str:
    """A SHA-256 digest (16 hex digits) of a split's pixels, labels and class names, in order:
    the same images in any file format or folder give the same digest."""
    digest = hashlib.sha256(json.dumps([list(images.shape), list(class_names)]).encode())
    digest.update(images.cpu().contiguous().numpy().tobytes())
    digest.update(labels.cpu().to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def name_of(data: Splits) -> str:
    """What runs call this data: fashion-mnist for the official files (by content, whatever their
    format or folder), else the name of the folder read."""
    official = (
        content_digest(data.train_images, data.train_labels, data.class_names),
        content_digest(data.test_images, data.test_labels, data.class_names),
    )
    if official == OFFICIAL_DIGESTS:
        return "fashion-mnist"
    folder = data.source
    while folder.name in ("raw", "FashionMNIST") and folder.parent != folder:  # torchvision's
        folder = folder.parent
    return folder.name or str(folder)


def describe_dir(directory: Path) -> str:
    """Why a folder holds no dataset, for error messages."""
    if not directory.is_dir():
        return f"{directory} (no such directory)"
    classes = [
        p.name
        for p in sorted(directory.iterdir())
        if p.is_dir() and p.name not in ("train", "test")
    ]
    if classes and not (directory / "train").is_dir():
        return (
            f"{directory} (it holds folders such as {', '.join(classes[:3])} but no train/ and test/: "
            f"a picture dataset keeps its class folders in train/<class>/ and test/<class>/)"
        )
    return (
        f"{directory} (no complete set of IDX files, neither here nor in FashionMNIST/raw/; no CSV "
        f"pair; no train/ and test/ picture folders)"
    )


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


def _load_idx(directory: Path) -> Splits:
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
            raise DataError(
                f"{labels_path} has labels above 9 (largest {labels.max()}); Fashion-MNIST's are "
                f"0..9. Fetch the file again, or bring other classes as picture folders."
            )
        _not_empty(len(labels), images_path)
        arrays[split] = _to_tensors(images, labels)
    return Splits(*arrays["train"], *arrays["test"], source=directory, format="idx")


def _not_empty(count: int, where: Path) -> None:
    if count == 0:
        raise DataError(f"{where} holds no images; every split needs at least one.")


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A Kaggle CSV (header label,pixel1..pixel784) -> (uint8 [N,28,28], uint8 [N]), row checked."""
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError as e:
        raise DataError(
            f"{path} is empty; a Fashion-MNIST CSV has the header label,pixel1,...,pixel784 and a "
            f"row per image."
        ) from e
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path} could not be parsed as CSV ({e}). Fetch the file again.") from e
    if list(frame.columns) != CSV_COLUMNS:
        got = ",".join(map(str, frame.columns[:4])) + ("..." if len(frame.columns) > 4 else "")
        raise DataError(
            f"{path} has columns {got} ({len(frame.columns)} in all); a Fashion-MNIST CSV needs the "
            f"header label,pixel1,...,pixel784 (785 columns), as in the Kaggle files."
        )
    _not_empty(len(frame), path)
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


def _load_csv(directory: Path) -> Splits:
    train = _to_tensors(*read_csv(directory / CSV_FILES["train"]))
    test = _to_tensors(*read_csv(directory / CSV_FILES["test"]))
    return Splits(*train, *test, source=directory, format="csv")


def class_folders(split_dir: Path) -> dict[str, list[str]]:
    """{class folder name: its pictures' paths, sorted} for one split of a picture-folder dataset.
    Paths stay strings: for 60,000 files, pathlib objects cost more than the listing."""
    folders = sorted(p for p in split_dir.iterdir() if p.is_dir() and not pictures.hidden(p.name))
    if not folders:
        raise DataError(
            f"{split_dir} has no class folders; a picture dataset holds {split_dir}/<class>/*.png "
            f"(PNG, JPEG, ...: {', '.join(sorted(pictures.SUFFIXES))}), one folder per class."
        )
    found = {}
    for folder in folders:
        files = []
        for top, subfolders, names in os.walk(folder):  # names from the listing, no stat() per file
            subfolders[:] = [d for d in subfolders if not pictures.hidden(d)]
            files += [os.path.join(top, n) for n in names if pictures.is_picture_name(n)]
        files.sort()
        if not files:
            raise DataError(
                f"{folder} holds no pictures ({', '.join(sorted(pictures.SUFFIXES))}): every class "
                f"folder needs at least one. Add some, or remove the folder."
            )
        found[folder.name] = files
    return found


def class_ids(names: list[str], where: Path) -> tuple[dict[str, int], tuple[str, ...]]:
    """({folder name: label id}, class names): the official ids when every folder is named after a
    Fashion-MNIST class or 0-9, else the sorted folder names (torchvision's ImageFolder rule)."""
    official = all(class_key(n) in OFFICIAL_ID for n in names)
    keys = {n: OFFICIAL_ID[class_key(n)] if official else class_key(n) for n in names}
    if len(set(keys.values())) < len(keys):
        same = [n for n in names if list(keys.values()).count(keys[n]) > 1]
        meaning = repr(CLASS_NAMES[keys[same[0]]]) if official else "one name"
        raise DataError(
            f"{where}: the class folders {', '.join(same)} all mean class {meaning} (case, spaces "
            f"and punctuation are ignored in class names); merge them into one folder."
        )
    if official:
        return keys, CLASS_NAMES
    ordered = tuple(sorted(names))
    return {n: i for i, n in enumerate(ordered)}, ordered


def _decode_file(path: str) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"{path} could not be read ({e.strerror or e}).") from e
    return pictures.decode(data, path)


def decode_files(paths: list[str]) -> np.ndarray:
    """Pictures -> uint8 [N, 28, 28]; on every core when there are many (DECODE_WORKERS_FROM)."""
    workers = min(os.cpu_count() or 1, 8)
    if len(paths) < DECODE_WORKERS_FROM or workers == 1:
        return np.stack([_decode_file(p) for p in paths])
    with ProcessPoolExecutor(workers) as pool:
        return np.stack(list(pool.map(_decode_file, paths, chunksize=256)))


def _load_folder(directory: Path) -> Splits:
    train, test = class_folders(directory / "train"), class_folders(directory / "test")
    if unknown := sorted(set(test) - set(train)):
        raise DataError(
            f"{directory / 'test'} has class folders that {directory / 'train'} lacks: "
            f"{', '.join(unknown)}. The model learns the training split's classes; rename or "
            f"remove those folders, or add them to train/ too."
        )
    ids, names = class_ids(list(train), directory / "train")
    arrays = []
    for split in (train, test):
        files = [f for folder in split.values() for f in folder]
        labels = np.array([ids[name] for name, folder in split.items() for _ in folder])
        arrays += _to_tensors(decode_files(files), labels)
    return Splits(*arrays, source=directory, format="folder", class_names=names)


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
