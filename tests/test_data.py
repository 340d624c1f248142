"""Reading the real files, the CSV pair, splits, batching, augmentation, and every bad data file."""

import collections
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from fmnist_exp import checks
from fmnist_exp.data import dataset
from fmnist_exp.data.augment import augment_batch, random_crop, random_erase, random_hflip
from fmnist_exp.data.datamodule import FashionMNISTDataModule, TensorBatches
from fmnist_exp.errors import ConfigError, DataError


def write_csv(path: Path, images: torch.Tensor, labels: torch.Tensor) -> None:
    frame = pd.DataFrame(images.reshape(len(images), 784).numpy(), columns=dataset.CSV_COLUMNS[1:])
    frame.insert(0, "label", labels.numpy())
    frame.to_csv(path, index=False)


@pytest.fixture(scope="module")
def csv_dir(tmp_path_factory, real_data) -> Path:
    """The Kaggle CSV pair, written from the first 600 / 200 real images."""
    directory = tmp_path_factory.mktemp("csv")
    write_csv(
        directory / dataset.CSV_FILES["train"],
        real_data.train_images[:600],
        real_data.train_labels[:600],
    )
    write_csv(
        directory / dataset.CSV_FILES["test"],
        real_data.test_images[:200],
        real_data.test_labels[:200],
    )
    return directory


def test_idx_files_hold_the_official_splits(real_data):
    assert real_data.format == "idx"
    assert (
        real_data.train_images.shape == (60000, 1, 28, 28)
        and real_data.train_images.dtype == torch.uint8
    )
    assert real_data.test_images.shape == (10000, 1, 28, 28)
    assert real_data.train_labels.dtype == torch.int64
    assert torch.bincount(real_data.train_labels).tolist() == [6000] * 10  # balanced classes
    assert torch.bincount(real_data.test_labels).tolist() == [1000] * 10


def test_csv_and_idx_readers_agree(csv_dir, real_data):
    from_csv = dataset.load([csv_dir])
    assert from_csv.format == "csv" and from_csv.source == csv_dir
    assert torch.equal(from_csv.train_images, real_data.train_images[:600])
    assert torch.equal(from_csv.train_labels, real_data.train_labels[:600])
    assert torch.equal(from_csv.test_images, real_data.test_images[:200])
    assert torch.equal(from_csv.test_labels, real_data.test_labels[:200])


def test_uncompressed_idx_files_are_read_too(tmp_path, real_data_dir, real_data):
    for name in (n for pair in dataset.IDX_FILES.values() for n in pair):
        with gzip.open(real_data_dir / f"{name}.gz") as src, open(tmp_path / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    assert torch.equal(dataset.load([tmp_path]).test_images, real_data.test_images)


def test_official_split_is_seeded_and_disjoint(real_data_dir):
    a = FashionMNISTDataModule(data_dir=str(real_data_dir), val_size=5000, split_seed=0)
    b = FashionMNISTDataModule(data_dir=str(real_data_dir), split_seed=0)  # the default: 1/12
    a.setup(), b.setup()
    assert a.summary() == {
        "data/source": str(real_data_dir), "data/format": "idx",
        "data/n_train": 55000, "data/n_val": 5000, "data/n_test": 10000,
        "data/classes": json.dumps(list(dataset.CLASS_NAMES)), "data/name": "fashion-mnist",
    }  # fmt: skip
    assert torch.equal(a.val[0], b.val[0])
    train_rows = {bytes(x.numpy()) for x in a.train[0][:3000]}
    assert not any(
        bytes(x.numpy()) in train_rows for x in a.val[0][:500]
    )  # (nearly) no shared images
    assert 60 < a.mean < 80 and 80 < a.std < 100  # raw 0..255 statistics of the training split


def test_80_10_10_split_uses_all_70k(real_data_dir):
    dm = FashionMNISTDataModule(data_dir=str(real_data_dir), split="random_80_10_10")
    dm.setup()
    assert (
        dm.summary()["data/n_train"],
        dm.summary()["data/n_val"],
        dm.summary()["data/n_test"],
    ) == (56000, 7000, 7000)


def test_batches_cover_every_image_once_and_reshuffle_each_epoch():
    images = torch.arange(1000, dtype=torch.int64).reshape(1000, 1, 1, 1)
    batches = TensorBatches(images, torch.arange(1000), batch_size=128, shuffle=True, seed=3)
    epoch1 = [y for _, y in batches]
    epoch2 = [y for _, y in batches]
    assert len(batches) == len(epoch1) == 8 and len(epoch1[-1]) == 1000 - 7 * 128
    assert sorted(torch.cat(epoch1).tolist()) == list(range(1000))
    assert not torch.equal(torch.cat(epoch1), torch.cat(epoch2))
    again = TensorBatches(images, torch.arange(1000), batch_size=128, shuffle=True, seed=3)
    assert torch.equal(torch.cat([y for _, y in again]), torch.cat(epoch1))  # same seed, same order
    for x, y in TensorBatches(images, torch.arange(1000), batch_size=100, shuffle=True, seed=1):
        assert torch.equal(x.flatten(), y)  # images stay with their labels


def test_augmentations_keep_shape_dtype_and_labels():
    labels = torch.arange(10).repeat(20)
    images = (labels * 25).to(torch.uint8).reshape(-1, 1, 1, 1).expand(-1, 1, 28, 28).contiguous()
    g = torch.Generator().manual_seed(0)
    for out in (
        random_crop(images, 4, g),
        random_hflip(images, g),
        augment_batch(images, g, hflip=True, crop_padding=2),
    ):
        assert out.shape == images.shape and out.dtype == torch.uint8
        assert torch.equal(
            out[:, 0, 14, 14], images[:, 0, 14, 14]
        )  # centre pixel: the label's value
    ramp = torch.arange(28, dtype=torch.uint8).expand(64, 1, 28, 28)
    flipped = random_hflip(ramp, torch.Generator().manual_seed(1))
    n_flipped = int((flipped[:, 0, 0, 0] == 27).sum())
    assert 10 < n_flipped < 54 and torch.equal(
        flipped[flipped[:, 0, 0, 0] == 27][0, 0, 0], ramp[0, 0, 0].flip(0)
    )
    shifted = random_crop(ramp, 3, torch.Generator().manual_seed(2))
    assert len({tuple(row.tolist()) for row in shifted[:, 0, 5]}) > 1  # offsets differ per image


def test_augmented_batches_keep_labels_aligned_and_repeat_with_the_seed():
    labels = torch.arange(10).repeat(30)
    images = (labels * 25).to(torch.uint8).reshape(-1, 1, 1, 1).expand(-1, 1, 28, 28).contiguous()
    augment = {"hflip": True, "crop_padding": 2}
    batches = list(TensorBatches(images, labels, 64, shuffle=True, seed=3, augment=augment))
    for x, y in batches:  # the centre pixel still says which label the image had
        assert torch.equal(x[:, 0, 14, 14], (y * 25).to(torch.uint8))
    again = list(TensorBatches(images, labels, 64, shuffle=True, seed=3, augment=augment))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    assert any((x[:, 0, 0] == 0).any() for x, _ in batches)  # crops did shift the zero padding in


def test_random_erase_zeroes_one_rectangle_per_chosen_image():
    images = torch.full((400, 1, 28, 28), 200, dtype=torch.uint8)
    out = random_erase(images, 0.5, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    erased = out[:, 0] == 0
    touched = erased.flatten(1).any(1)
    assert 150 < int(touched.sum()) < 250  # about half the images
    area = erased[touched].flatten(1).float().mean(1)
    assert (
        area.min() >= 0.01 and area.max() <= 0.40
    )  # 2%..33% of the image, sides rounded to pixels
    for mask in erased[touched][:50]:  # one axis-aligned rectangle: its rows x its columns
        rows, cols = mask.any(1), mask.any(0)
        assert torch.equal(mask, rows[:, None] & cols[None, :])
    assert torch.equal(out[~touched], images[~touched])  # the others untouched
    assert torch.equal(random_erase(images, 0.0, torch.Generator()), images)
    again = random_erase(images, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(again, out)  # a seed fixes the batches


# --- bad input: each error names the file (and row) --------------------------------------------


@pytest.fixture
def idx_copy(tmp_path, real_data_dir) -> Path:
    for path in real_data_dir.glob("*.gz"):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path


def test_missing_data_names_every_place_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("FMNIST_DATA_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setattr(dataset, "DEBIAN_DIR", tmp_path / "debian")
    dm = FashionMNISTDataModule()
    with pytest.raises(DataError) as err:
        dm.setup()
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message and str(tmp_path / "debian") in message
    assert "data.download=true" in message and "apt-get install dataset-fashion-mnist" in message


def test_explicit_data_dir_is_used_as_given(tmp_path):
    with pytest.raises(DataError) as err:
        FashionMNISTDataModule(data_dir=str(tmp_path)).setup()
    assert str(tmp_path) in str(err.value) and str(dataset.DEBIAN_DIR) not in str(err.value)


def test_truncated_gz_names_the_file(idx_copy):
    path = idx_copy / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz.*truncated or corrupt"):
        dataset.load([idx_copy])


def test_wrong_magic_number_names_the_file(idx_copy):
    labels, images = idx_copy / "t10k-labels-idx1-ubyte.gz", idx_copy / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(labels.read_bytes())  # a labels file where the images should be
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz.*magic number"):
        dataset.load([idx_copy])


def test_wrong_shape_names_the_file(idx_copy):
    path = idx_copy / "train-labels-idx1-ubyte.gz"
    blob = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(blob[:-10]))  # header says 60000, 59990 bytes follow
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz.*header shape"):
        dataset.load([idx_copy])


def test_csv_with_wrong_columns_names_the_file(csv_dir, tmp_path):
    for name in dataset.CSV_FILES.values():
        shutil.copy(csv_dir / name, tmp_path / name)
    path = tmp_path / dataset.CSV_FILES["test"]
    frame = pd.read_csv(path).rename(columns={"pixel5": "px5"})
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"fashion-mnist_test\.csv has columns"):
        dataset.load([tmp_path])


@pytest.mark.parametrize(
    "column,value", [("pixel300", 256), ("pixel1", -1), ("label", 10), ("pixel7", "x")]
)
def test_csv_bad_value_names_file_and_row(csv_dir, tmp_path, column, value):
    for name in dataset.CSV_FILES.values():
        shutil.copy(csv_dir / name, tmp_path / name)
    path = tmp_path / dataset.CSV_FILES["train"]
    frame = pd.read_csv(path).astype(object)
    frame.loc[41, column] = value
    frame.to_csv(path, index=False)
    with pytest.raises(
        DataError, match=rf"fashion-mnist_train\.csv row 42 \(line 43\), column {column}"
    ):
        dataset.load([tmp_path])


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"split": "70_30"}, "data.split"),
        ({"batch_size": 0}, "data.batch_size"),
        ({"batch_size": True}, "data.batch_size"),
        ({"eval_batch_size": 12.5}, "data.eval_batch_size"),
        ({"val_size": 0}, "data.val_size"),
        ({"val_size": True}, "data.val_size"),
        ({"val_size": 1.0}, "data.val_size"),
        ({"val_size": -0.5}, "data.val_size"),
        ({"val_size": "half"}, "data.val_size"),
        ({"folds": 1}, "data.folds"),
        ({"folds": 2.5}, "data.folds"),
        ({"folds": 3, "fold": 3}, "data.fold"),
        ({"fold": -1}, "data.fold"),
        ({"folds": 5, "val_size": 5000}, "data.val_size=5000 has no effect under data.folds=5"),
        ({"augment": {"rotate": 10}}, "data.augment.rotate"),
        ({"augment": {"erase_prob": 1.5}}, "data.augment.erase_prob"),
        ({"augment": {"crop_padding": -2}}, "data.augment.crop_padding"),
        ({"augment": {"hflip": "maybe"}}, "data.augment.hflip"),
    ],
)
def test_bad_data_config_names_the_key(make_config, kwargs, key):
    data = OmegaConf.to_container(make_config().data, resolve=True)
    checks.check_data(data)  # the defaults pass
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        checks.check_data(data | kwargs)


def test_readers_never_modify_the_files(idx_copy):
    before = {p.name: p.read_bytes() for p in idx_copy.iterdir()}
    (idx_copy / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(DataError):
        dataset.load([idx_copy])
    after = {p.name: p.read_bytes() for p in idx_copy.iterdir()}
    assert after.keys() == before.keys() and all(
        after[k] == before[k] for k in before if "t10k-labels" not in k
    )
    assert np.frombuffer(after["t10k-labels-idx1-ubyte.gz"], np.uint8).tobytes() == b"garbage"


def test_fetch_data_says_where_the_data_is(real_data_dir, tmp_path, capsys):
    """`make setup`'s data step (scripts/get_data.sh): found, or one paragraph and exit 2."""
    from fmnist_exp import fetch_data

    assert fetch_data.main([f"data.data_dir={real_data_dir}"]) == 0
    assert f"Fashion-MNIST (idx) in {real_data_dir}" in capsys.readouterr().out
    assert fetch_data.main([f"data.data_dir={tmp_path / 'empty'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "empty") in err and "Traceback" not in err


def rows(images: torch.Tensor, labels: torch.Tensor) -> collections.Counter:
    """Each image with its label as one hashable row, counted (a multiset)."""
    return collections.Counter(
        bytes(x.numpy()) + bytes([int(y)]) for x, y in zip(images, labels, strict=True)
    )


@pytest.mark.parametrize("split", ["official", "random_80_10_10"])
def test_k_fold_validates_every_training_image_exactly_once(csv_dir, split):
    """data.folds=3: the three validation folds are disjoint and together are every image that is
    not test, each fold trains on the other two, each holds every class's third (to within one
    image), and the test split is the one without k-fold."""
    plain = FashionMNISTDataModule(data_dir=str(csv_dir), split=split)
    plain.setup()
    pool = rows(*plain.train) + rows(*plain.val)
    validated = collections.Counter()
    per_class = []
    for fold in range(3):
        dm = FashionMNISTDataModule(data_dir=str(csv_dir), split=split, folds=3, fold=fold)
        dm.setup()
        assert torch.equal(dm.test[0], plain.test[0]) and torch.equal(dm.test[1], plain.test[1])
        assert rows(*dm.train) + rows(*dm.val) == pool  # the other folds train
        assert not set(rows(*dm.train)) & set(rows(*dm.val))
        validated += rows(*dm.val)
        per_class.append(torch.bincount(dm.val[1], minlength=10))
    assert validated == pool  # every image validated, once
    per_class = torch.stack(per_class)
    assert int((per_class.max(0).values - per_class.min(0).values).max()) <= 1  # stratified
    sizes = per_class.sum(1)
    assert int(sizes.max() - sizes.min()) <= 1


def test_k_fold_needs_an_image_per_fold(tmp_path, real_data):
    write_csv(tmp_path / dataset.CSV_FILES["train"], real_data.train_images[:4],
              real_data.train_labels[:4])  # fmt: skip
    write_csv(tmp_path / dataset.CSV_FILES["test"], real_data.test_images[:4],
              real_data.test_labels[:4])  # fmt: skip
    with pytest.raises(ConfigError, match=r"data\.folds=5 needs at least 5 training images"):
        FashionMNISTDataModule(data_dir=str(tmp_path), folds=5).setup()
