"""Distillation: teachers are checked before any run exists, their targets are their predictions,
and a student taught by them alone (no label in its loss) learns."""

import mlflow
import pytest
import torch

from fmnist_exp import inference
from fmnist_exp.data.datamodule import FashionMNISTDataModule
from fmnist_exp.errors import ConfigError
from fmnist_exp.inference import load_classifier
from fmnist_exp.train import train
from fmnist_exp.training import distill


def student_config(make_config, trained_model, *overrides, experiment="students"):
    """A run in the teacher's store (the session's trained_model), in its own experiment."""
    return make_config(
        f"logger.tracking_uri={trained_model['tracking_uri']}",
        f"logger.experiment={experiment}",
        "logger.log_model=false",
        *overrides,
    )


def student_runs(cfg):
    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.logger.experiment)
    return client.search_runs([experiment.experiment_id]) if experiment else []


def test_soft_targets_are_the_teachers_probabilities(trained_model, real_data):
    images = real_data.train_images[:700]  # more than one chunk
    teacher = load_classifier(trained_model["checkpoint"], "teacher", "")
    targets = distill.soft_targets([teacher], images, 1.0)
    expected = inference.load(str(trained_model["checkpoint"]), "").probabilities(images)
    torch.testing.assert_close(targets, expected, atol=1e-5, rtol=1e-4)
    softer = distill.soft_targets([teacher, teacher], images, 4.0)
    assert softer.max(1).values.mean() < targets.max(1).values.mean()  # T > 1 flattens


def test_a_student_taught_only_by_its_teacher_learns(make_config, trained_model, monkeypatch):
    """Its training labels are shuffled, so only the teacher's targets can teach it."""
    setup = FashionMNISTDataModule.setup

    def setup_with_shuffled_labels(self, stage=None):
        setup(self, stage)
        images, labels = self.train
        self.train = images, labels[torch.randperm(len(labels))]

    monkeypatch.setattr(FashionMNISTDataModule, "setup", setup_with_shuffled_labels)
    cfg = student_config(
        make_config, trained_model,
        f"module.distill.teachers=[{trained_model['run_id']}]",
        "module.distill.weight=1.0",  # the labels' cross-entropy gets weight 0
        "module.distill.temperature=2.0",
        "trainer.limit_train_batches=150",
        "trainer.limit_val_batches=3",
        "trainer.limit_test_batches=3",
    )  # fmt: skip
    results = train(cfg)
    (run,) = student_runs(cfg)
    assert run.info.status == "FINISHED"
    assert run.data.params["module.distill.teachers"] == f"['{trained_model['run_id']}']"
    assert (
        results["test/acc"] > 0.6
    )  # chance is 0.1 (what the shuffled labels teach); the teacher ~0.8


@pytest.mark.parametrize(
    "overrides, names",
    [
        (
            ["module.distill.teachers=[0123456789abcdef0123456789abcdef]"],
            "no run '0123456789abcdef",
        ),
        (
            ["module.distill.teachers=[{run_id}]", "data=fashion_mnist_80_10_10"],
            "data.split=official",
        ),
        (["module.distill.teachers=[{run_id}]", "data.val_size=6000"], "held out 5000 images"),
        (["module.distill.teachers=[{run_id}]", "data.folds=3"], "used data.folds=None"),
        (
            ["module.distill.teachers=[{run_id}]", "module.distill.weight=2"],
            "module.distill.weight=2",
        ),
        (
            ["module.distill.teachers=[{run_id}]", "module.distill.temperature=0"],
            "module.distill.temperature=0",
        ),
    ],
    ids=["unknown-run", "other-split", "smaller-val", "other-folds", "weight", "temperature"],
)
def test_bad_teachers_fail_before_any_run_is_made(make_config, trained_model, overrides, names):
    overrides = (o.format(run_id=trained_model["run_id"]) for o in overrides)
    cfg = student_config(make_config, trained_model, *overrides, experiment="rejected")
    with pytest.raises(ConfigError, match="distill") as caught:
        train(cfg)
    assert names in str(caught.value)
    assert student_runs(cfg) == []


def test_a_run_that_trained_nothing_is_no_teacher(make_config, trained_model):
    client = mlflow.MlflowClient(trained_model["tracking_uri"])
    parent = client.create_run(client.create_experiment("sweeps"))  # apart from what others read
    client.set_terminated(parent.info.run_id, "FINISHED")  # like a sweep's parent run
    cfg = student_config(
        make_config,
        trained_model,
        f"module.distill.teachers=[{parent.info.run_id}]",
        experiment="rejected",
    )
    with pytest.raises(ConfigError, match="did not train a model"):
        train(cfg)
    assert student_runs(cfg) == []
