"""Downloading against an HTTP server on 127.0.0.1 that serves copies of the real files."""

import hashlib
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from fmnist_exp.data import dataset
from fmnist_exp.data.datamodule import FashionMNISTDataModule
from fmnist_exp.errors import DataError

NAMES = [f"{n}.gz" for pair in dataset.IDX_FILES.values() for n in pair]


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def mirror(tmp_path, real_data_dir):
    """(base URL, served folder, md5 of each served file) for a server on 127.0.0.1."""
    served = tmp_path / "served"
    served.mkdir()
    for name in NAMES:
        shutil.copy(real_data_dir / name, served / name)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    md5 = {name: hashlib.md5((served / name).read_bytes()).hexdigest() for name in NAMES}
    yield f"http://127.0.0.1:{server.server_address[1]}/", served, md5
    server.shutdown()


def test_download_fetches_verifies_and_loads(mirror, tmp_path, real_data):
    url, _, md5 = mirror
    target = tmp_path / "data"
    dm = FashionMNISTDataModule(data_dir=str(target), download=True, url=url, md5=md5)
    dm.prepare_data()
    dm.setup()
    assert sorted(p.name for p in target.iterdir()) == sorted(NAMES)  # no temporary files left
    assert dm.summary()["data/source"] == str(target) and dm.summary()["data/format"] == "idx"
    assert torch.equal(dm.test[0], real_data.test_images)


def test_corrupt_download_is_rejected_and_nothing_half_written_survives(mirror, tmp_path):
    url, served, md5 = mirror
    corrupt = served / "t10k-images-idx3-ubyte.gz"
    blob = bytearray(corrupt.read_bytes())
    blob[5000] ^= 0xFF  # one flipped byte: the size is right, the content is not
    corrupt.write_bytes(bytes(blob))
    target = tmp_path / "data"
    with pytest.raises(
        DataError, match=r"t10k-images-idx3-ubyte\.gz downloaded with MD5 .* expected"
    ):
        dataset.download(target, url, md5)
    left = sorted(p.name for p in target.iterdir())
    assert left == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]  # the verified ones only
    assert all(hashlib.md5((target / n).read_bytes()).hexdigest() == md5[n] for n in left)


def test_the_published_md5s_reject_a_file_that_differs(mirror, tmp_path):
    url, _, _ = (
        mirror  # Debian's copies are recompressed, so their bytes differ from the published ones
    )
    with pytest.raises(DataError, match="data.md5.train-images-idx3-ubyte.gz"):
        FashionMNISTDataModule(
            data_dir=str(tmp_path / "data"), download=True, url=url,
            md5={"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d"},
        ).prepare_data()  # fmt: skip
    assert list((tmp_path / "data").iterdir()) == []


def test_unreachable_mirror_says_where_it_looked(mirror, tmp_path):
    url, served, md5 = mirror
    (served / "train-labels-idx1-ubyte.gz").unlink()  # the server answers 404 for this one
    dm = FashionMNISTDataModule(data_dir=str(tmp_path / "data"), download=True, url=url, md5=md5)
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert f"{url}train-labels-idx1-ubyte.gz" in message and "404" in message
    assert str(tmp_path / "data") in message  # where it searched
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["train-images-idx3-ubyte.gz"]


def test_existing_files_are_not_downloaded_again(mirror, tmp_path):
    url, served, md5 = mirror
    target = tmp_path / "data"
    dataset.download(target, url, md5)
    stamp = {p.name: p.stat().st_mtime_ns for p in target.iterdir()}
    for p in served.iterdir():
        p.unlink()  # the mirror is gone: a second call must not need it
    dataset.download(target, url, md5)
    assert {p.name: p.stat().st_mtime_ns for p in target.iterdir()} == stamp
    assert Path(target / NAMES[0]).stat().st_size > 1_000_000
