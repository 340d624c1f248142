"""Real (short) training runs on the real data, read back through the MLflow client."""

import contextlib
import json
from pathlib import Path

import lightning as L
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from fmnist_exp import checks
from fmnist_exp.data import dataset
from fmnist_exp.errors import ConfigError, UserError
from fmnist_exp.train import train
from fmnist_exp.training.callbacks import RunInterrupted, moving_average
from fmnist_exp.training.module import Classifier


def the_only_run(cfg):
    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.logger.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, real_data_dir):
    """One LeNet+BN run: 1 epoch of 150 batches (19k images), validation and test on 3k images each."""
    from conftest import compose_config

    tmp = tmp_path_factory.mktemp("trained")
    cfg = compose_config(
        ["trainer.limit_train_batches=150", "trainer.limit_val_batches=3", "trainer.limit_test_batches=3"],
        tmp, real_data_dir,
    )  # fmt: skip
    return cfg, train(cfg)


def test_short_training_beats_chance_by_far(trained):
    _, results = trained
    assert results["test/acc"] > 0.75  # chance is 0.10; one partial epoch of LeNet+BN gets ~0.8


def test_run_records_params_metrics_tags(trained):
    cfg, results = trained
    client, run = the_only_run(cfg)
    assert run.info.status == "FINISHED"
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["model.channels"] == "[6, 16]" and params["model.batch_norm"] == "True"
    assert params["optimizer._target_"] == "torch.optim.Adam" and params["optimizer.lr"] == "0.001"
    assert params["data/format"] == "idx" and params["data/source"] == cfg.data.data_dir
    assert (params["data/n_train"], params["data/n_val"], params["data/n_test"]) == (
        "55000",
        "5000",
        "10000",
    )
    assert metrics["model/params_total"] == metrics["model/params_trainable"] == 44_470
    assert tags["partial"] == "true" and metrics["test/n_images"] == 3000  # 3 of 10 test batches
    assert metrics["test/acc"] == pytest.approx(results["test/acc"])
    for name in ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss"):
        assert np.isfinite(metrics[name]), name
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 1  # one epoch -> one point
    assert tags["model"] == "lenet_bn" and "command" in tags and len(tags["git_commit"]) >= 7


def test_run_logs_config_plots_checkpoint_and_model(trained):
    cfg, _ = trained
    client, run = the_only_run(cfg)
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "training_curves.png", "confusion_matrix.png", "checkpoints"} <= names
    (ckpt,) = client.list_artifacts(run.info.run_id, "checkpoints")
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=ckpt.path,
                                                tracking_uri=cfg.logger.tracking_uri)  # fmt: skip
    restored = Classifier.load_from_checkpoint(local, map_location="cpu").eval()
    config_file = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="config.yaml", tracking_uri=cfg.logger.tracking_uri
    )
    logged = OmegaConf.load(config_file)  # the resolved config: no interpolations left
    assert logged.model == cfg.model and logged.data.data_dir == cfg.data.data_dir
    assert logged.paths.output_dir == cfg.paths.output_dir

    mlflow.set_tracking_uri(cfg.logger.tracking_uri)
    served = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    pixels = np.random.default_rng(0).integers(0, 256, (5, 1, 28, 28)).astype(np.float32)
    probabilities = np.asarray(served.predict(pixels))
    assert probabilities.shape == (5, 10) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
    with torch.no_grad():  # the logged model is the best checkpoint, with normalisation inside
        expected = torch.softmax(restored(torch.from_numpy(pixels)), 1).numpy()
    assert np.allclose(probabilities, expected, atol=1e-5)


def test_outputs_stay_in_the_run_folder(trained):
    cfg, _ = trained
    from pathlib import Path

    run_dir = Path(cfg.paths.output_dir)
    assert (run_dir / "config.yaml").is_file() and list((run_dir / "checkpoints").glob("*.ckpt"))
    assert not (Path.cwd() / "lightning_logs").exists()


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=mlp", "optimizer=sgd", "scheduler=cosine"],
        [
            "model=lenet",
            "optimizer=adamw",
            "scheduler=one_cycle",
            "data.augment.hflip=true",
            "data.augment.crop_padding=2",
        ],
        [
            "model=lenet_relu",
            "data=fashion_mnist_80_10_10",
            "module.label_smoothing=0.1",
            "logger.log_model=false",
        ],
        [
            "model=lenet_bn",
            "model.dropout=0.3",
            "data.augment.erase_prob=0.5",
            "module.tta_hflip=true",
            "module.channels_last=true",
            "trainer.precision=bf16-mixed",
        ],
        pytest.param(["model=lenet_bn", "module.compile=true"], marks=pytest.mark.slow),
        pytest.param(["experiment=best", "trainer.max_epochs=1", "logger.log_model=false",
                      "data.batch_size=32", "data.eval_batch_size=100"],  # a 926k-param net on a CPU
                     marks=pytest.mark.slow),  # fmt: skip
    ],
    ids=["mlp-sgd-cosine", "lenet-adamw-onecycle-augment", "relu-80_10_10-smoothing",
         "bn-dropout-erase-tta-channels_last-bf16", "bn-compiled", "flagship"],
)  # fmt: skip
def test_other_options_train_a_few_steps(make_config, overrides):
    cfg = make_config(
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        *overrides,
    )
    results = train(cfg)
    _, run = the_only_run(cfg)
    assert run.info.status == "FINISHED" and 0 <= results["test/acc"] <= 1


def test_partial_runs_are_never_best(make_config, capsys):
    """A smoke run that scored part of the test split is tagged partial and skipped by
    model_uri=best; one that trained on few batches but tested on all 10,000 images is a result."""
    from fmnist_exp import inference

    smoke = make_config("trainer.limit_test_batches=1", "trainer.limit_train_batches=40")
    train(smoke)
    assert "(partial: 1000 of 10000 test images)" in capsys.readouterr().out
    with pytest.raises(
        UserError, match="no finished run that validated, tested on its whole test split"
    ):
        inference.best_run_uri(smoke.logger.tracking_uri, "fashion-mnist")
    debug = make_config("++trainer.fast_dev_run=true", "logger.log_model=false")
    train(debug)  # one batch of each split: partial, and its test metrics still reach MLflow
    client = mlflow.MlflowClient(debug.logger.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("fashion-mnist").experiment_id])
    fast_dev = next(r for r in runs if r.data.params.get("trainer.fast_dev_run") == "True")
    assert (
        fast_dev.data.tags["partial"] == "true" and fast_dev.data.metrics["test/n_images"] == 1000
    )
    real = make_config("trainer.limit_test_batches=null", "trainer.limit_train_batches=4")
    train(real)
    client = mlflow.MlflowClient(real.logger.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("fashion-mnist").experiment_id])
    (full,) = [r for r in runs if r.data.tags["partial"] == "false"]  # of three runs
    assert full.data.metrics["test/n_images"] == 10000
    assert inference.best_run_uri(real.logger.tracking_uri, "fashion-mnist") == (
        f"runs:/{full.info.run_id}/model"
    )


def test_bad_model_fails_before_any_run_is_made(make_config):
    cfg = make_config("model.kernel_size=[5,20]")
    with pytest.raises(ConfigError, match=r"model\.kernel_size"):
        train(cfg)
    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    assert client.search_experiments() == [] or not client.search_runs(
        [e.experiment_id for e in client.search_experiments()]
    )


@pytest.mark.parametrize("seed", ["abc", -1, 2**32, "true", 1.5])
def test_a_seed_numpy_cannot_take_names_the_key(make_config, seed):
    for fine in (0, 2**32 - 1):
        checks.check_run(make_config(f"seed={fine}"))
    with pytest.raises(ConfigError, match=r"seed=.* must be an int from 0 to 4294967295"):
        checks.check_run(make_config(f"seed={seed}"))


def test_failure_during_training_marks_the_run_failed(make_config, monkeypatch):
    cfg = make_config()

    def explode(*args, **kwargs):
        raise RuntimeError("boom in the middle of training")

    monkeypatch.setattr(Classifier, "training_step", explode)
    with pytest.raises(RuntimeError, match="boom"):
        train(cfg)
    _, run = the_only_run(cfg)
    assert run.info.status == "FAILED" and "boom" in run.data.tags["error"]


def test_ema_validates_tests_and_saves_the_average_of_the_steps(make_config):
    """callbacks.ema.decay: the checkpoint's weights, and what the test measures, are the moving average of
    the weights after each step (recomputed here from a copy taken after every step); the raw
    weights ride along for resume=. The average starts at the first step's weights, as torch's
    AveragedModel does."""
    decay, steps, tested = 0.6, [], {}

    def weights(module):
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    class EveryStep(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            steps.append(weights(pl_module))

        def on_test_start(self, trainer, pl_module):
            tested.update(weights(pl_module))

    cfg = make_config(
        "callbacks.ema.decay=0.6", "trainer.limit_train_batches=4", "logger.log_model=false"
    )
    train(cfg, extra_callbacks=[EveryStep()])
    (best,) = (Path(cfg.paths.output_dir) / "checkpoints").glob("epoch*.ckpt")
    saved = torch.load(best, weights_only=False)
    assert len(steps) == 4
    for name, raw in saved["current_model_state"].items():
        assert torch.equal(raw, steps[-1][name]), name  # the weights training goes on from
        if raw.is_floating_point() and "num_batches_tracked" not in name:
            average = steps[0][name]
            for step in steps[1:]:
                average = decay * average + (1 - decay) * step[name]
            assert torch.allclose(saved["state_dict"][name], average, atol=1e-6), name
    moved = [n for n, v in saved["state_dict"].items() if not torch.equal(v, steps[-1][n])]
    assert any(n.endswith("weight") for n in moved)  # the checkpoint holds the average, not the raw
    # what the test measured (Lightning's own callback put the raw weights back for it) and what
    # predict, serve and distillation load: the average
    loaded = Classifier.load_from_checkpoint(best, map_location="cpu")
    for module_weights in (tested, loaded.state_dict()):
        assert all(torch.equal(v, saved["state_dict"][k]) for k, v in module_weights.items())


@pytest.mark.parametrize("stop", [False, True])
def test_train_alone_sets_the_runs_status_once(make_config, monkeypatch, stop):
    """Lightning's logger used to mark the run FINISHED after fit (before the test) and FAILED on
    an interruption that train() then marked KILLED. A sweep stopped by SIGTERM, waiting for its
    jobs to leave RUNNING, took that passing FAILED as the end (the fresh clone at a68cab8 hit it)."""
    statuses = []
    set_terminated = mlflow.MlflowClient.set_terminated

    def record(client, run_id, status=None, *args, **kwargs):
        statuses.append(status)
        return set_terminated(client, run_id, status, *args, **kwargs)

    class Stop(L.Callback):  # what StopOnSignal raises when SIGTERM arrives
        def on_train_batch_end(self, trainer, *args):
            if stop and trainer.global_step == 2:
                raise RunInterrupted("SIGTERM")

    monkeypatch.setattr(mlflow.MlflowClient, "set_terminated", record)
    cfg = make_config("trainer.limit_train_batches=4", "logger.log_model=false")
    with pytest.raises(RunInterrupted) if stop else contextlib.nullcontext():
        train(cfg, extra_callbacks=[Stop()])
    _, run = the_only_run(cfg)
    assert statuses == [run.info.status] == (["KILLED"] if stop else ["FINISHED"])


@pytest.mark.parametrize("decay", [0, 1, 1.5, -0.1, "high", "true"])
def test_an_ema_decay_outside_0_1_names_the_key(make_config, decay):
    with pytest.raises(
        ConfigError, match=r"callbacks\.ema\.decay=.* must be a number between 0 and 1"
    ):
        checks.check_callbacks(make_config(f"callbacks.ema.decay={decay}").callbacks)
    checks.check_callbacks(make_config("callbacks.ema.decay=null").callbacks)
    assert moving_average(None) is None


def test_several_steps_per_call_train_exactly_like_one(tmp_path, real_data_dir):
    """module.steps_per_call=4 and auto (Lightning's loop once per four or sixteen batches; the
    module makes the optimizer steps) against the usual loop: the same batches, augmentation,
    dropout draws, cosine schedule and optimizer state, so the last checkpoint's weights are bit
    for bit the same, over epochs of 15 steps (960 images, batch 64) whose last call makes 3."""
    from conftest import compose_config

    common = ["trainer.max_epochs=2", "trainer.limit_train_batches=null", "data.val_size=59040",
              "logger.log_model=false", "data.augment.hflip=true", "model.dropout=0.2"]  # fmt: skip
    states = {}
    for k in (1, 4, "auto"):  # auto: 16 steps per call, so each epoch is one call of 15
        cfg = compose_config(
            [*common, f"module.steps_per_call={k}"], tmp_path / f"k{k}", real_data_dir
        )
        results = train(cfg)
        assert cfg.module.steps_per_call == {1: 1, 4: 4, "auto": 16}[k]  # what train() made
        last = torch.load(
            tmp_path / f"k{k}" / "run" / "checkpoints" / "last.ckpt", weights_only=False
        )
        states[k] = (last["state_dict"], last["global_step"], results["test/acc"])
    (one, steps_one, acc_one) = states[1]
    for k in (4, "auto"):
        several, steps, acc = states[k]
        assert steps_one == steps == 2 * 15  # 960 images, batch 64: 15 optimizer steps an epoch
        assert one.keys() == several.keys()
        assert all(torch.equal(one[key], several[key]) for key in one), k
        assert acc_one == acc, k


def test_training_sums_keep_no_graph(tmp_path, real_data_dir):
    """The epoch's device sums (loss, right answers) are detached, one step per call or several: a
    sum tied to each step's graph would keep every step's activations alive to the epoch's end."""
    held = []

    class Probe(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            held.append([pl_module.train_sums[k].requires_grad for k in ("loss", "correct")])

    from conftest import compose_config

    for k in (1, 4):
        overrides = ["logger.log_model=false", f"module.steps_per_call={k}"]
        train(compose_config(overrides, tmp_path / f"k{k}", real_data_dir), [Probe()])
    assert held == [[False, False], [False, False]]


def test_auto_steps_per_call_picks_one_where_lightning_acts_per_call(make_config):
    """auto makes 16 steps per call, 1 where a per-call setting is on or the trainer counts
    training batches (trainer=fast counts 8), so those counts keep meaning batches."""
    whole = "trainer.limit_train_batches=1.0"  # the share of the epoch: counts nothing
    assert checks.steps_per_call(make_config(whole)) == checks.AUTO_STEPS_PER_CALL == 16
    assert checks.steps_per_call(make_config()) == 1  # trainer=fast: limit_train_batches=8
    for setting in ("callbacks.ema.decay=0.99", "++trainer.gradient_clip_val=1.0",
                    "++trainer.accumulate_grad_batches=2", "++trainer.max_steps=10",
                    "++callbacks.model_checkpoint.every_n_train_steps=100",
                    "++trainer.fast_dev_run=true", "++trainer.overfit_batches=10",
                    "++trainer.val_check_interval=100"):  # fmt: skip
        assert checks.steps_per_call(make_config(whole, setting)) == 1, setting
    assert checks.steps_per_call(make_config("module.steps_per_call=4")) == 4  # a number is kept
    for bad in (
        "module.steps_per_call=0",
        "module.steps_per_call=fast",
        "module.steps_per_call=2.0",
    ):
        with pytest.raises(ConfigError, match="must be auto or a whole number >= 1"):
            checks.check(make_config(bad))


def test_several_steps_per_call_refuse_what_lightning_does_around_a_call(make_config):
    for clash in ("callbacks.ema.decay=0.99", "++trainer.gradient_clip_val=1.0",
                  "++trainer.accumulate_grad_batches=2", "++trainer.max_steps=10",
                  "++callbacks.model_checkpoint.every_n_train_steps=100"):  # fmt: skip
        key = clash.lstrip("+").split("=")[0]
        with pytest.raises(ConfigError, match=f"steps_per_call=4 cannot be combined with {key}"):
            checks.check(make_config("module.steps_per_call=4", clash))


def test_a_mixed_precision_run_logs_the_served_models_test_accuracy(make_config, real_data):
    """bf16-mixed trains and validates in bfloat16, but the logged model runs in float32: the
    test/acc a run logs is that model's on the same 10,000 images, to the image."""
    from fmnist_exp import inference

    cfg = make_config("trainer.precision=bf16-mixed", "trainer.limit_test_batches=null")
    results = train(cfg)
    _, run = the_only_run(cfg)
    served = inference.load(f"runs:/{run.info.run_id}/model", cfg.logger.tracking_uri)
    images, labels = real_data.test_images, real_data.test_labels
    predicted = torch.cat([served.probabilities(images[i : i + 1000]).argmax(1)
                           for i in range(0, len(labels), 1000)])  # fmt: skip
    assert int((predicted == labels).sum()) == round(results["test/acc"] * len(labels))


def test_a_run_that_never_validates_logs_no_best_validation_accuracy(make_config, run_main, tmp_path,
                                                                     real_data_dir):  # fmt: skip
    """++trainer.limit_val_batches=0: no val/acc_best (it used to be logged as 0.0), and a sweep,
    which ranks on it, refuses such jobs before its parent run exists."""
    cfg = make_config("++trainer.limit_val_batches=0", "logger.log_model=false")
    results = train(cfg)
    _, run = the_only_run(cfg)
    assert "val/acc_best" not in results and "val/acc_best" not in run.data.metrics
    assert run.info.status == "FINISHED" and "test/acc" in run.data.metrics
    store = f"sqlite:///{tmp_path}/sweep.db"
    done = run_main("--multirun", "trainer=fast", "++trainer.limit_val_batches=0", "seed=1,2",
                    f"data.data_dir={real_data_dir}", f"logger.tracking_uri={store}",
                    f"hydra.sweep.dir={tmp_path}/sweep")  # fmt: skip
    assert (
        done.returncode == 2
        and "trainer.limit_val_batches=0: its jobs would never validate"
        in (" ".join(done.stderr.split()))
    )
    assert not (tmp_path / "sweep.db").exists()


def test_best_is_chosen_on_validation_not_on_the_test_set(tmp_path):
    """model_uri=best (serve's, predict's and eval's default) takes the run with the highest
    val/acc_best, even where another run scored higher on the test split; a run that never
    validated is not chosen."""
    from conftest import ready_store

    from fmnist_exp import inference

    uri = ready_store(tmp_path / "mlruns")
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("fashion-mnist")
    made = {}
    for name, val, test in [("higher_val", 0.91, 0.88), ("higher_test", 0.89, 0.92),
                            ("never_validated", None, 0.95)]:  # fmt: skip
        run_id = client.create_run(experiment, tags={"partial": "false"}).info.run_id
        client.log_param(run_id, "logger.log_model", "True")
        if val is not None:
            client.log_metric(run_id, "val/acc_best", val)
        client.log_metric(run_id, "test/acc", test)
        client.set_terminated(run_id, "FINISHED")
        made[name] = run_id
    assert inference.best_run_uri(uri, "fashion-mnist") == f"runs:/{made['higher_val']}/model"


def test_runs_on_different_data_are_never_compared(tmp_path, capsys):
    """best and the report rank runs on one data only (dataset=auto: the newest run's), say how
    many they left out, and take a name or a data_digest; a sweep over two data names no best."""
    from conftest import ready_store

    from fmnist_exp import inference
    from fmnist_exp.report import main as report

    uri = ready_store(tmp_path / "mlruns")
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("fashion-mnist")
    made = {}
    for name, data, digest, val in [("fm_low", "fashion-mnist", "aaaa1111", 0.90),
                                    ("fm_high", "fashion-mnist", "aaaa1111", 0.91),
                                    ("pics", "pics", "bbbb2222", 0.99)]:  # fmt: skip
        tags = {"partial": "false", "data_digest": digest, "data.name": data, "model": "mlp"}
        run_id = client.create_run(experiment, tags=tags).info.run_id
        client.log_param(run_id, "logger.log_model", "True")
        client.log_metric(run_id, "val/acc_best", val)
        client.log_metric(run_id, "test/acc", val - 0.01)
        client.set_terminated(run_id, "FINISHED")
        made[name] = run_id
    best = inference.best_run_uri  # pics is the newest run: auto compares on its data
    assert best(uri, "fashion-mnist") == f"runs:/{made['pics']}/model"
    said = capsys.readouterr().err
    assert "compared pics (data_digest bbbb2222, 1 run)" in said
    assert "left out 2 run(s) on other data: fashion-mnist (data_digest aaaa1111, 2 runs)" in said
    assert best(uri, "fashion-mnist", "fashion-mnist") == f"runs:/{made['fm_high']}/model"
    assert best(uri, "fashion-mnist", "aaaa") == f"runs:/{made['fm_high']}/model"
    with pytest.raises(
        UserError, match=r"dataset=mnist matches none of them\. The runs read: pics"
    ):
        best(uri, "fashion-mnist", "mnist")

    out = tmp_path / "report"
    assert report([f"tracking_uri={uri}", "sweep=null", "dataset=fashion-mnist", f"out={out}"]) == 0
    table = pd.read_csv(out / "table.csv")
    assert set(table.run_id) == {made["fm_low"], made["fm_high"]}
    said = capsys.readouterr().out
    assert "left out 1 run(s) on other data: pics" in said and "2 runs on fashion-mnist" in said


def test_a_run_names_its_training_validation_and_test_data(make_config):
    """Each split is an MLflow dataset of the run (the UI's Dataset column, dataset.* filters):
    fashion-mnist by content, a digest per split, the folder, its size and class names."""
    cfg = make_config()
    train(cfg)
    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    experiment = client.get_experiment_by_name("fashion-mnist").experiment_id
    run = client.search_runs([experiment])[0]
    by_context = {
        next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset
        for i in run.inputs.dataset_inputs
    }
    assert set(by_context) == {"training", "validation", "test"}
    assert {d.name for d in by_context.values()} == {"fashion-mnist"}
    assert len({d.digest for d in by_context.values()}) == 3
    assert by_context["test"].digest == dataset.OFFICIAL_DIGESTS[1]  # the whole official test set
    sizes = {c: json.loads(d.profile)["num_images"] for c, d in by_context.items()}
    assert sizes == {"training": 55000, "validation": 5000, "test": 10000}
    assert json.loads(by_context["test"].profile)["classes"] == list(dataset.CLASS_NAMES)
    assert json.loads(by_context["test"].source)["uri"].startswith("file://")
    assert run.data.tags["data.name"] == "fashion-mnist"
    found = client.search_runs(
        [experiment],
        f"dataset.name = 'fashion-mnist' and dataset.digest = '{dataset.OFFICIAL_DIGESTS[1]}' "
        "and dataset.context = 'test'",
    )
    assert [r.info.run_id for r in found] == [run.info.run_id]
