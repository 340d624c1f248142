"""Bring your own data: every layout and size the readers take, the class rule, and bad folders."""

import io
import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from test_data import write_csv

from fmnist_exp import inference
from fmnist_exp.data import dataset, pictures
from fmnist_exp.data.datamodule import FashionMNISTDataModule
from fmnist_exp.data.inputs import read_inputs
from fmnist_exp.errors import ConfigError, DataError
from fmnist_exp.train import train

FOLDER_NAMES = (
    "T-shirt_top",
    "trouser",
    "PULLOVER",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)  # fmt: skip  (official classes, spelt as users do)


def write_picture_folder(root: Path, splits: dict, names) -> Path:
    """{split: (images, labels)} as root/<split>/<names[label]>/<i>.png."""
    for split, (images, labels) in splits.items():
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / names[int(label)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[0].numpy()).save(folder / f"{i:05d}.png")
    return root


def test_a_kaggle_subset_of_any_size_trains_and_val_size_must_fit(tmp_path, real_data):
    """The default data.val_size is a fraction (5,000 of 60,000): 1,200 training images split 1,100
    / 100 with no setting; a count or a fraction that leaves nothing to train on is refused."""
    write_csv(tmp_path / dataset.CSV_FILES["train"], real_data.train_images[:1200],
              real_data.train_labels[:1200])  # fmt: skip
    write_csv(tmp_path / dataset.CSV_FILES["test"], real_data.test_images[:300],
              real_data.test_labels[:300])  # fmt: skip
    dm = FashionMNISTDataModule(data_dir=str(tmp_path))
    dm.setup()
    assert (len(dm.train[1]), len(dm.val[1]), len(dm.test[1])) == (1100, 100, 300)
    for val_size in (5000, 1200, 0.9999):
        with pytest.raises(ConfigError, match=rf"data\.val_size={val_size} .*1200 images") as err:
            FashionMNISTDataModule(data_dir=str(tmp_path), val_size=val_size).setup()
        assert "data.val_size=0.1" in str(err.value) and "data.val_size=120" in str(err.value)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), val_size=200)
    dm.setup()
    assert (len(dm.train[1]), len(dm.val[1]), len(dm.test[1])) == (1000, 200, 300)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), val_size=0.25)
    dm.setup()
    assert (len(dm.train[1]), len(dm.val[1])) == (900, 300)
    dls = FashionMNISTDataModule(data_dir=str(tmp_path), split="random_80_10_10")
    dls.setup()
    assert (len(dls.train[1]), len(dls.val[1]), len(dls.test[1])) == (1200, 150, 150)


def test_torchvision_layout_is_read_from_its_root_or_its_raw_folder(tmp_path, real_data_dir,
                                                                    real_data):  # fmt: skip
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in real_data_dir.glob("*.gz"):
        (raw / path.name).symlink_to(path)
    for given in (tmp_path, tmp_path / "FashionMNIST"):
        found = dataset.load([given])
        assert found.format == "torchvision" and found.source == raw
        assert torch.equal(found.test_labels, real_data.test_labels)


@pytest.fixture(scope="module")
def official_folder(tmp_path_factory, real_data) -> Path:
    """500 training and 200 test images as PNGs under the official class names, spelt loosely."""
    splits = {"train": (real_data.train_images[:500], real_data.train_labels[:500]),
              "test": (real_data.test_images[:200], real_data.test_labels[:200])}  # fmt: skip
    return write_picture_folder(tmp_path_factory.mktemp("pictures"), splits, FOLDER_NAMES)


def test_picture_folders_named_after_the_classes_keep_the_official_ids(official_folder, real_data):
    found = dataset.load([official_folder])
    assert found.format == "folder" and found.class_names == dataset.CLASS_NAMES
    # the PNG round trip is exact: each class holds the same images, in file order
    images, labels = real_data.test_images[:200], real_data.test_labels[:200]
    assert torch.equal(torch.bincount(found.test_labels), torch.bincount(labels))
    for c in range(10):
        assert torch.equal(found.test_images[found.test_labels == c], images[labels == c])
    digits = write_picture_folder(  # 0-9 work as names too
        official_folder.parent / "digits",
        {"train": (found.test_images[:40], found.test_labels[:40]),
         "test": (found.test_images[:20], found.test_labels[:20])},
        [str(i) for i in range(10)],
    )  # fmt: skip
    from_digits = dataset.load([digits]).train_labels
    assert torch.equal(from_digits.sort().values, found.test_labels[:40].sort().values)


def test_other_class_names_train_a_network_of_their_size_and_travel_with_the_model(
    tmp_path, make_config, real_data
):
    """Three classes named cat/dog/owl (sorted: the ImageFolder rule): a 3-way network, and the
    names come back from the run, its checkpoint and its logged model."""
    keep = real_data.train_labels[:3000] < 3
    train_images, train_labels = (
        real_data.train_images[:3000][keep],
        real_data.train_labels[:3000][keep],
    )
    test_keep = real_data.test_labels[:600] < 3
    splits = {
        "train": (train_images, train_labels),
        "test": (real_data.test_images[:600][test_keep], real_data.test_labels[:600][test_keep]),
    }
    names = ["owl", "cat", "dog"]  # label 0 (T-shirt) -> owl, 1 -> cat, 2 -> dog
    root = write_picture_folder(tmp_path / "animals", splits, names)
    cfg = make_config(
        f"data.data_dir={root}", "trainer.limit_train_batches=12", "trainer.limit_test_batches=null"
    )  # no data.val_size: 1/12 of ~900 images

    results = train(cfg)
    assert results["test/acc"] > 0.6  # three well-separated garments (chance: 1/3), 12 steps
    run = mlflow.MlflowClient(cfg.logger.tracking_uri).search_runs(
        [
            mlflow.MlflowClient(cfg.logger.tracking_uri)
            .get_experiment_by_name("fashion-mnist")
            .experiment_id
        ]
    )[0]
    assert json.loads(run.data.params["data/classes"]) == ["cat", "dog", "owl"]
    assert run.data.params["data/format"] == "folder" and run.data.tags["partial"] == "false"
    assert int(run.data.params["data/n_val"]) == round(len(train_labels) / 12)
    logged = inference.load(f"runs:/{run.info.run_id}/model", cfg.logger.tracking_uri)
    checkpoint = next(Path(cfg.paths.output_dir, "checkpoints").glob("epoch*.ckpt"))
    from_ckpt = inference.load(str(checkpoint), cfg.logger.tracking_uri)
    assert logged.class_names == from_ckpt.class_names == ("cat", "dog", "owl")
    some = torch.from_numpy(read_inputs([root / "test"], logged.class_names).images[:16])
    assert logged.probabilities(some).shape == (16, 3)
    found = read_inputs([root / "test" / "dog"], logged.class_names)
    assert (found.labels == 1).all()  # predict labels pictures by the model's class names


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:60])


@pytest.mark.parametrize(
    "damage,named",
    [
        (lambda r: shutil.rmtree(r / "train" / "coat") or (r / "train" / "coat").mkdir(), "coat holds no pictures"),
        (lambda r: truncate(sorted((r / "train" / "shirt").iterdir())[0]), r"shirt/\d+\.png: a corrupt or truncated"),
        (lambda r: (r / "test" / "hats").mkdir() or shutil.copy(next((r / "test" / "bag").iterdir()), r / "test" / "hats"), "train lacks: hats"),
        (lambda r: shutil.copytree(r / "train" / "bag", r / "train" / "8"), "8, bag all mean class 'Bag'"),
        (lambda r: [shutil.rmtree(p) for p in (r / "test").iterdir()], "test has no class folders"),
    ],
    ids=["empty-class", "unreadable", "unknown-test-class", "two-folders-one-class", "empty-split"],
)  # fmt: skip
def test_bad_picture_folders_name_the_folder_or_file(tmp_path, official_folder, damage, named):
    root = tmp_path / "copy"
    shutil.copytree(official_folder, root)
    damage(root)
    with pytest.raises(DataError, match=named):
        dataset.load([root])


def test_a_file_or_a_link_loop_as_data_dir_is_one_paragraph(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match=r"data\.data_dir=.*file\.txt is a file"):
        FashionMNISTDataModule(data_dir=str(tmp_path / "file.txt")).setup()
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises((ConfigError, DataError), match=r"data\.data_dir"):
        FashionMNISTDataModule(data_dir=str(tmp_path / "a")).setup()


def test_class_folders_without_train_and_test_say_where_they_go(official_folder):
    with pytest.raises(DataError, match=r"holds folders such as .* but no train/ and test/"):
        dataset.load([official_folder / "train"])


def test_empty_and_header_only_csvs_name_the_file(tmp_path, real_data):
    write_csv(
        tmp_path / dataset.CSV_FILES["train"],
        real_data.train_images[:0],
        real_data.train_labels[:0],
    )
    write_csv(
        tmp_path / dataset.CSV_FILES["test"], real_data.test_images[:5], real_data.test_labels[:5]
    )
    with pytest.raises(DataError, match=r"fashion-mnist_train\.csv holds no images"):
        dataset.load([tmp_path])
    (tmp_path / dataset.CSV_FILES["train"]).write_text("")
    with pytest.raises(DataError, match=r"fashion-mnist_train\.csv is empty"):
        dataset.load([tmp_path])


def test_16_bit_pictures_are_scaled_not_clipped(real_data):
    garment = real_data.test_images[0, 0].numpy()
    wide = Image.fromarray(garment.astype(np.uint16) * 257)  # the same picture at 16 bits
    assert wide.mode.startswith("I")
    assert np.array_equal(pictures.to_model_input(wide), garment)
    import io

    buffer = io.BytesIO()
    wide.save(buffer, format="PNG")  # and through a 16-bit PNG file
    assert np.array_equal(pictures.decode(buffer.getvalue(), "wide.png"), garment)


def test_a_huge_canvas_is_refused_from_its_header_before_decoding():
    import io

    buffer = io.BytesIO()
    Image.new("1", (10_000, 8_000)).save(buffer, format="PNG")  # 80 megapixels in a few kB
    assert len(buffer.getvalue()) < 200_000
    with pytest.raises(pictures.PictureTooLarge, match=r"huge\.png: 10000 x 8000 pixels, over"):
        pictures.decode(buffer.getvalue(), "huge.png")


def test_class_names_keep_letters_of_every_script_and_hidden_folders_are_skipped(
    tmp_path, real_data
):
    """Class keys keep letters of every script (`Кофта` and `👕 футболка` stay two classes, as in
    predict's labels), the same name in two Unicode forms is one class, and the folders file
    managers add inside a class folder (`.thumbnails/`, `@eaDir/`) are not read as pictures."""
    names = ("Café", "Кофта", "👕 футболка")
    root = write_picture_folder(
        tmp_path / "shop", {s: (real_data.test_images[:6], torch.tensor([0, 1, 2] * 2)) for s in ("train", "test")},
        names,
    )  # fmt: skip
    for junk in (".thumbnails", "@eaDir", "sub/.cache"):
        (root / "train" / "Кофта" / junk).mkdir(parents=True)
        (root / "train" / "Кофта" / junk / "thumb.png").write_bytes(b"not a picture")
    (root / "train" / "@eaDir").mkdir()  # beside the class folders: not a class either
    data = dataset.load([root])
    assert data.class_names == tuple(sorted(names)) and len(data.train_labels) == 6
    assert len({dataset.class_key(n) for n in names}) == 3
    assert dataset.class_key("Cafe\u0301") == dataset.class_key(
        "CAFÉ"
    )  # decomposed, as macOS writes it
    found = read_inputs([root / "test"], data.class_names)  # predict labels them by the same keys
    assert list(found.labels) == [
        data.class_names.index(n) for n in sorted(names) for _ in range(2)
    ]
    (root / "train" / "CAFÉ").mkdir()  # one class in two folders
    shutil.copy(next((root / "train" / "Café").iterdir()), root / "train" / "CAFÉ" / "x.png")
    with pytest.raises(DataError, match="the class folders CAFÉ, Café all mean class one name"):
        dataset.load([root])


def test_a_runs_identity_includes_its_data_and_eval_tests_on_that_data(
    run_main, tmp_path, official_folder, real_data_dir, monkeypatch, capsys
):
    """The same overrides (data.data_dir=null) on a 700-image picture folder and on the official
    files are two experiments: skip_finished=true reuses a run only on the data it read. eval of
    the folder run tests it on that folder's 200 test images (the folder it read, its
    data.val_size), whatever the default data is now, and refuses once the files changed."""
    from fmnist_exp import eval as evaluation

    shop = shutil.copytree(official_folder, tmp_path / "shop")
    store = f"sqlite:///{tmp_path}/mlflow.db"
    common = ["trainer=fast", "trainer.limit_test_batches=null", "data.val_size=100",
              f"logger.tracking_uri={store}", "skip_finished=true"]  # fmt: skip
    first = run_main(*common, env={"FMNIST_DATA_DIR": str(shop)})
    assert first.returncode == 0, first.stderr[-3000:]
    official = run_main(
        *common, "logger.log_model=false", env={"FMNIST_DATA_DIR": str(real_data_dir)}
    )
    assert official.returncode == 0 and "skipped" not in official.stdout, official.stderr[-3000:]
    again = run_main(*common, env={"FMNIST_DATA_DIR": str(shop)})
    assert "skipped: this config already FINISHED" in again.stdout
    client = mlflow.MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("fashion-mnist").experiment_id])
    assert len(runs) == 2 and len({r.data.tags["data_digest"] for r in runs}) == 2
    assert len({r.data.tags["config_hash"] for r in runs}) == 2
    on_shop = next(r for r in runs if r.data.params["data/source"] == str(shop))

    monkeypatch.setenv("FMNIST_DATA_DIR", str(real_data_dir))  # the default data is now official
    uri = f"runs:/{on_shop.info.run_id}/model"
    capsys.readouterr()
    assert evaluation.main([f"model_uri={uri}", f"tracking_uri={store}"]) == 0
    logged, out = on_shop.data.metrics["test/acc"], capsys.readouterr().out
    assert (
        f"test/acc={logged:.4f} on 200 test images  (its run logged test/acc={logged:.4f})" in out
    )
    picture = next((shop / "test" / "bag").iterdir())
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(picture)
    assert evaluation.main([f"model_uri={uri}", f"tracking_uri={store}"]) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert f"run {on_shop.info.run_id} read the data in {shop} (digest" in said
    assert "now hold other files" in said and "Point data.data_dir at a copy" in said


def test_large_pictures_cost_what_a_28x28_model_needs():
    """A picture is bounded by what it costs to decode, not only by its size: a 7000x7000 PNG
    (49 megapixels in a few hundred kB) is refused from its header; the same picture as a JPEG is
    decoded at 1/8 scale (so it passes even a 1-megapixel budget) and gives the 28x28 a small copy
    gives; a large PNG within the budget is box-reduced before the rule and gives the same input."""

    def encoded(side: int, fmt: str, mode: str = "RGB") -> bytes:
        canvas = Image.new(mode, (side, side), "white")
        ImageDraw.Draw(canvas).rectangle(
            (side // 4, side // 5, 3 * side // 4, 4 * side // 5), "navy"
        )
        buffer = io.BytesIO()
        canvas.save(buffer, format=fmt)
        return buffer.getvalue()

    with pytest.raises(
        pictures.PictureTooLarge, match="7000 x 7000 pixels, over the limit of 16,000,000"
    ):
        pictures.decode(encoded(7000, "PNG"), "huge.png")
    big_jpeg = pictures.decode(encoded(7000, "JPEG"), "huge.jpg", max_pixels=1_000_000)
    small = pictures.decode(encoded(700, "JPEG"), "small.jpg")
    assert big_jpeg.shape == (28, 28) and close(big_jpeg, small)
    for mode in ("RGBA", "P", "L"):
        reduced = pictures.decode(encoded(2800, "PNG", mode), f"{mode}.png")
        direct = pictures.to_model_input(Image.open(io.BytesIO(encoded(2800, "PNG", mode))))
        assert close(reduced, direct), mode


def close(a: np.ndarray, b: np.ndarray) -> bool:
    """Two model inputs of one picture resampled along different paths: the same but for the
    shape's edge pixels (seen: mean difference < 1, at most 17 of 255)."""
    difference = np.abs(a.astype(int) - b)
    return difference.mean() < 2 and difference.max() <= 24
