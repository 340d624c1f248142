"""From a trained run to predictions: every model_uri kind, every input format, the picture rule."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fmnist_exp import inference, predict, register
from fmnist_exp.data.dataset import CLASS_NAMES
from fmnist_exp.data.inputs import read_inputs
from fmnist_exp.data.pictures import to_model_input
from fmnist_exp.errors import DataError, UserError

REPO = Path(__file__).resolve().parents[1]


def write_pngs(folder: Path, images, labels) -> Path:
    """Test images as PNG files in one folder per class (the labelling convention predict reads)."""
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        target = folder / CLASS_NAMES[int(label)].replace("/", "_")
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(target / f"test{i:05d}.png")
    return folder


def run_predict(*args: str, tracking_uri: str):
    return subprocess.run(
        [sys.executable, "-m", "fmnist_exp.predict", *args],
        cwd=REPO, env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_predict_cli_on_png_test_images(tmp_path, trained_model, real_data):
    images, labels = real_data.test_images[:300], real_data.test_labels[:300]
    write_pngs(tmp_path / "pngs", images, labels)
    out = tmp_path / "preds.csv"
    uri = f"runs:/{trained_model['run_id']}/model"
    result = run_predict(
        f"model_uri={uri}", f"inputs={tmp_path / 'pngs'}", f"out={out}",
        tracking_uri=trained_model["tracking_uri"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out)
    assert len(table) == 300 and set(table.columns) >= {
        "input",
        "class_name",
        "probability",
        "top3",
    }
    index = table.input.str.extract(r"test(\d+)\.png")[0].astype(int)
    assert (table.true_label == labels.numpy()[index]).all()  # labels from the folder names
    accuracy = (table.label == table.true_label).mean()
    assert f"accuracy {accuracy:.4f} on 300 labelled inputs" in result.stdout
    # the PNG round trip is exact, so the accuracy is the model's on these images: ~0.8 after training
    model = inference.load(uri, trained_model["tracking_uri"])
    direct = (model.probabilities(images).argmax(1) == labels).float().mean().item()
    assert accuracy == pytest.approx(direct) and accuracy > 0.7


def test_every_model_uri_kind_gives_the_same_probabilities(trained_model, real_data):
    images = real_data.test_images[:64]
    tracking_uri = trained_model["tracking_uri"]
    uris = [
        "best",
        f"runs:/{trained_model['run_id']}/model",
        "models:/fmnist/1",  # registered at training time: logger.register_model=fmnist
        str(trained_model["checkpoint"]),
    ]
    probs = [inference.load(u, tracking_uri).probabilities(images) for u in uris]
    assert probs[0].shape == (64, 10) and torch.allclose(probs[0].sum(1), torch.ones(64), atol=1e-5)
    for p in probs[1:]:
        assert torch.allclose(p, probs[0], atol=1e-5)


def test_register_command_adds_a_version(trained_model, capsys):
    code = register.main(
        ["model_uri=best", "name=fmnist", f"tracking_uri={trained_model['tracking_uri']}"]
    )
    assert code == 0
    assert " as models:/fmnist/2" in capsys.readouterr().out  # version 1 came from training
    assert register.main([f"tracking_uri={trained_model['tracking_uri']}"]) == 2  # no name=
    assert "register: name= is required" in capsys.readouterr().err


def test_register_with_an_alias_serves_the_champion(trained_model, real_data, capsys):
    """train -> register alias=champion -> models:/<name>@champion loads that version; registering
    again moves the alias to the new version; an alias MLflow refuses is one paragraph, before
    anything is registered."""
    uri = trained_model["tracking_uri"]
    common = ["name=fmnist_served", f"tracking_uri={uri}"]  # apart from the other tests' fmnist
    for bad in ("latest", "v2", "two words"):
        assert register.main([*common, f"alias='{bad}'"]) == 2
        assert "is not an alias MLflow accepts" in capsys.readouterr().err
    client = mlflow.MlflowClient(uri)
    assert client.search_registered_models("name = 'fmnist_served'") == []
    for version in (1, 2):
        assert register.main([*common, "alias=champion"]) == 0
        said = capsys.readouterr().out
        assert (
            f"as models:/fmnist_served/{version}, alias champion: models:/fmnist_served@champion"
            in said
        )
        assert (
            int(client.get_model_version_by_alias("fmnist_served", "champion").version) == version
        )
    images = real_data.test_images[:32]
    champion = inference.load("models:/fmnist_served@champion", uri).probabilities(images)
    direct = inference.load(f"runs:/{trained_model['run_id']}/model", uri).probabilities(images)
    assert torch.allclose(champion, direct, atol=1e-5)


def test_csv_and_idx_inputs_carry_their_labels(tmp_path, real_data, real_data_dir):
    images, labels = real_data.test_images[:20], real_data.test_labels[:20]
    table = pd.DataFrame(
        images.reshape(20, -1).numpy(), columns=[f"pixel{i}" for i in range(1, 785)]
    )
    table.insert(0, "label", labels.numpy())
    table.to_csv(tmp_path / "rows.csv", index=False)
    found = read_inputs([tmp_path / "rows.csv"])
    assert np.array_equal(found.images, images.numpy()) and np.array_equal(found.labels, labels)
    assert found.names[0] == "rows.csv:2"  # the CSV's line number
    table.drop(columns="label").to_csv(tmp_path / "unlabelled.csv", index=False)
    assert read_inputs([tmp_path / "unlabelled.csv"]).labels is None
    idx = read_inputs([real_data_dir / "t10k-images-idx3-ubyte.gz"])
    assert len(idx.names) == 10000 and np.array_equal(idx.labels[:20], labels)


def test_the_picture_rule_inverts_light_backgrounds_and_fits_28x28(real_data):
    garment = real_data.test_images[0, 0].numpy()  # light on dark, 28x28
    assert np.array_equal(to_model_input(Image.fromarray(garment)), garment)  # untouched
    photo = (
        Image.fromarray(255 - garment).resize((280, 280), Image.Resampling.NEAREST).convert("RGB")
    )
    seen = to_model_input(photo).astype(int)  # dark on light, 10x size, colour
    assert np.abs(seen - garment).mean() < 8  # inverted and scaled back
    wide = to_model_input(Image.new("L", (100, 50), 255))  # white 2:1 -> black, aspect kept
    assert wide.shape == (28, 28) and wide.max() == 0
    transparent = Image.new("RGBA", (40, 40), (0, 0, 0, 0))  # transparency counts as white
    assert to_model_input(transparent).max() == 0


def test_bad_inputs_and_model_uris_are_clear(tmp_path, trained_model):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match="broken.png"):
        read_inputs([tmp_path / "broken.png"])
    with pytest.raises(DataError, match="does not exist"):
        read_inputs([tmp_path / "missing"])
    (tmp_path / "short.csv").write_text("label,pixel1\n1,2\n")
    with pytest.raises(DataError, match="1 pixel columns"):
        read_inputs([tmp_path / "short.csv"])
    store = trained_model["tracking_uri"]
    with pytest.raises(UserError, match="runs:/0123/model.*could not load"):
        inference.load("runs:/0123/model", store)
    with pytest.raises(UserError, match="not a checkpoint"):
        inference.load(str(tmp_path / "short.csv"), store)
    with pytest.raises(UserError, match="no such file"):
        inference.load("nonsense", store)
    with pytest.raises(UserError, match="no finished run"):
        inference.load("best", f"sqlite:///{tmp_path / 'empty.db'}")


def test_one_unreadable_picture_is_named_and_the_rest_are_labelled(tmp_path, trained_model,
                                                                   real_data, capsys):  # fmt: skip
    folder = write_pngs(tmp_path / "pngs", real_data.test_images[:5], real_data.test_labels[:5])
    broken = next(folder.rglob("*.png"))
    broken.write_bytes(broken.read_bytes()[:40])
    out = tmp_path / "preds.csv"
    code = predict.main(
        [f"inputs={folder}", f"out={out}", f"tracking_uri={trained_model['tracking_uri']}"]
    )
    err = capsys.readouterr().err
    assert code == 1  # done, but not everything: 1 (bad options or nothing readable: 2)
    assert f"skipped: {broken}: " in err and "1 input(s) could not be read" in err
    assert len(pd.read_csv(out)) == 4


@pytest.mark.parametrize(
    "rows,named",
    [
        ("label,{pixels}\n", "a header and no rows"),
        ("label,{pixels}\n3,{values_x}\n", "row 2, column 'pixel1' holds 'x'"),
        ("label,{pixels}\n12,{values}\n", "row 2 has label .12."),
        ("", "an empty file"),
    ],
    ids=["no-rows", "non-numeric", "label-out-of-range", "empty"],
)
def test_bad_prediction_csvs_are_one_paragraph(tmp_path, rows, named):
    pixels = ",".join(f"pixel{i}" for i in range(1, 785))
    values = ",".join(["0"] * 784)
    path = tmp_path / "rows.csv"
    path.write_text(rows.format(pixels=pixels, values=values, values_x="x," + values[2:]))
    with pytest.raises(DataError, match=named):
        read_inputs([path])


def test_checkpoints_that_are_not_ours_are_refused(tmp_path, trained_model):
    store = trained_model["tracking_uri"]
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(trained_model["checkpoint"].read_bytes()[:5000])
    other_module = tmp_path / "other.ckpt"  # a Lightning checkpoint of some other module
    torch.save(
        {"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {"hidden": 3}}, other_module
    )

    class Evil:  # a pickle that would run code: weights_only refuses to build it
        def __reduce__(self):
            return (print, ("this must not run",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Evil()}, evil)
    for path in (truncated, other_module, evil):
        with pytest.raises(UserError, match=f"{path.name}: not a checkpoint"):
            inference.load(str(path), store)


def test_eval_gives_the_test_accuracy_the_run_logged(trained_model, capsys):
    """`python -m fmnist_exp.eval` on the logged model, the registry version and the checkpoint:
    the figure the run logged (the same 10,000 images, the same network), to the image."""
    import mlflow

    from fmnist_exp import eval as evaluation

    store = trained_model["tracking_uri"]
    mlflow.MlflowClient(store).set_registered_model_alias("fmnist", "champion", "1")
    for uri in (f"runs:/{trained_model['run_id']}/model", "models:/fmnist/1",
                "models:/fmnist@champion", "models:/fmnist/latest",
                str(trained_model["checkpoint"])):  # fmt: skip
        assert evaluation.main([f"model_uri={uri}", f"tracking_uri={store}"]) == 0
        out = capsys.readouterr().out
        measured = float(out.split("test/acc=")[1].split()[0])
        assert f"on 10000 test images  (its run logged test/acc={measured:.4f})" in out
        assert abs(measured - trained_model["test_acc"]) < 1e-4, out


@pytest.mark.parametrize(
    "app, args, said",
    [
        ("predict", ["colour=blue"], "colour=blue: predict has no setting colour"),
        ("eval", ["experiment=fashion-mnist"], "eval has no setting experiment; did you mean experiment_name?"),
        ("eval", ["experiment_name=elsewhere"], "logged a model in experiment 'elsewhere'"),
        ("predict", ["inputs=.", "experiment_name=elsewhere"], "in experiment 'elsewhere'"),
        ("register", ["name=fmnist", "experiment_name=elsewhere"], "in experiment 'elsewhere'"),
        ("predict", ["inputs="], "predict: inputs='': give the pictures"),
        ("predict", ["inputs=/nonexistent/photos"], "predict: inputs: /nonexistent/photos does not exist"),
        ("predict", ["inputs=.", "show=-1"], "predict: show=-1 must be a whole number >= 0"),
        ("eval", ["model_uri=nonsense"], "model_uri=nonsense: not a model URI and no such file"),
        ("eval", ["data.split=other"], "data.split='other' is not one of"),
        ("report", ["partial=maybe"], "report: partial='maybe' must be true or false"),
        ("register", ["name=fmnist", "model_uri=x.ckpt"], "must be best or runs:/<run_id>/model"),
        ("predict", ["+colour=blue"], "predict: +colour=blue: predict reads no colour"),
        ("eval", ["+model_ur=x"], "eval reads no model_ur; did you mean model_uri?"),
        ("serve", ["++max_upload=9"], "serve reads no max_upload; did you mean max_upload_mb?"),
    ],
)  # fmt: skip
def test_every_app_refuses_bad_options_in_one_paragraph(app, args, said, tmp_path, capsys):
    import importlib

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    main = importlib.import_module(f"fmnist_exp.{app}").main
    assert main([*args, f"tracking_uri={store}"]) == 2
    err = capsys.readouterr().err
    assert said in " ".join(err.split()) and "Traceback" not in err


@pytest.mark.parametrize("app", ["predict", "serve", "report", "register", "eval"])
def test_every_app_has_help_with_its_options(app, capsys):
    import importlib

    assert importlib.import_module(f"fmnist_exp.{app}").main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"python -m fmnist_exp.{app}")  # the header names the app
    assert "tracking_uri: ${fmnist.tracking_uri:}  # $MLFLOW_TRACKING_URI" in out


def test_out_never_overwrites_an_input_and_is_checked_before_any_work(tmp_path, real_data, capsys):
    """out= naming an input, a file under an input folder, a folder or an unwritable place: one
    paragraph before the model loads (the store here is empty: had it got that far, `best` would
    fail instead), and the user's files keep every byte."""
    pixels = tmp_path / "pixels.csv"
    pd.DataFrame(real_data.test_images[:3].reshape(3, -1).numpy()).to_csv(pixels, index=False)
    before = pixels.read_bytes()
    folder = write_pngs(tmp_path / "pngs", real_data.test_images[:2], real_data.test_labels[:2])
    store = f"sqlite:///{tmp_path / 'empty.db'}"
    for inputs, out, said in [
        (pixels, pixels, "is one of the inputs"),
        (f"[{folder},{pixels}]", f"{folder}/../pixels.csv", "is one of the inputs"),
        (folder, folder / "preds.csv", "is inside the input folder"),
        (pixels, tmp_path, "is a folder"),
        (pixels, "/proc/preds.csv", "cannot be written"),
    ]:
        assert predict.main([f"inputs={inputs}", f"out={out}", f"tracking_uri={store}"]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"predict: out={out} {said}" in err and "Traceback" not in err, err
    assert pixels.read_bytes() == before and not (folder / "preds.csv").exists()


def test_names_from_outside_reach_the_terminal_without_control_characters(
    tmp_path, trained_model, real_data, capsys
):
    """A file name can hold escape sequences (set the terminal's title, colours, move the cursor)
    and bidirectional overrides: predict prints them escaped, labels and skips as usual."""
    folder = write_pngs(tmp_path / "pngs", real_data.test_images[:2], real_data.test_labels[:2])
    first, second = sorted(folder.rglob("*.png"))
    first.rename(first.with_name("evil\x1b]0;owned\x07\u202egnp.png"))
    second.rename(broken := second.with_name("bad\x1b[31mred.png"))
    broken.write_bytes(b"not a picture")
    store = trained_model["tracking_uri"]
    assert predict.main([f"inputs={folder}", f"tracking_uri={store}"]) == 1
    captured = capsys.readouterr()
    for stream in (captured.out, captured.err):
        assert "\x1b" not in stream and "\u202e" not in stream and "\x07" not in stream
    assert "evil\\x1b]0;owned\\x07\\u202egnp.png" in captured.out
    assert "bad\\x1b[31mred.png" in captured.err


def test_csvs_without_a_header_keep_every_row(tmp_path, real_data):
    """A CSV of pixels written without a header (or with pandas' column numbers as one) keeps its
    first image; 785 columns without a header are the Kaggle layout, the label first."""
    images, labels = real_data.test_images[:4].reshape(4, -1).numpy(), real_data.test_labels[:4]
    cases = {
        "bare.csv": (pd.DataFrame(images), {"header": False}),
        "numbered.csv": (pd.DataFrame(images), {}),
        "kaggle.csv": (pd.DataFrame(np.column_stack([labels.numpy(), images])), {"header": False}),
    }
    for name, (frame, options) in cases.items():
        frame.to_csv(tmp_path / name, index=False, **options)
        found = read_inputs([tmp_path / name])
        assert np.array_equal(found.images.reshape(4, -1), images), name
        assert found.names[0] == f"{name}:{1 if options else 2}"  # the CSV's line numbers
    assert list(read_inputs([tmp_path / "kaggle.csv"]).labels) == labels.tolist()
    pd.DataFrame(np.full((1, 784), 256)).to_csv(tmp_path / "over.csv", index=False, header=False)
    with pytest.raises(DataError, match=r"row 1, column 'pixel1' holds 256;"):
        read_inputs([tmp_path / "over.csv"])
