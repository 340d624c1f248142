"""lean.py: less Lightning bookkeeping per step, the same behaviour."""

import lightning as L
import pytest
import torch
from lightning.pytorch.profilers import SimpleProfiler
from omegaconf import OmegaConf

from fmnist_exp.classifier import Classifier
from fmnist_exp.lean import CallbackBundle, QuietProfiler
from fmnist_exp.train import make_trainer


class Recorder(L.Callback):
    def __init__(self, name: str, calls: list):
        self.name, self.calls = name, calls

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.calls.append((self.name, "on_train_batch_end", batch_idx))


class EpochOnly(L.Callback):
    def __init__(self, calls: list):
        self.calls = calls

    def on_train_epoch_end(self, trainer, pl_module):
        self.calls.append(("epoch", "on_train_epoch_end"))


def test_bundle_calls_each_hook_on_the_parts_that_define_it_in_order():
    calls = []
    bundle = CallbackBundle(Recorder("a", calls), EpochOnly(calls))
    bundle.add(Recorder("b", calls))
    bundle.on_train_batch_end(None, None, None, None, 7)
    bundle.on_train_epoch_end(None, None)
    bundle.on_validation_start(None, None)  # no part defines it: the base class's no-op
    assert calls == [
        ("a", "on_train_batch_end", 7),
        ("b", "on_train_batch_end", 7),
        ("epoch", "on_train_epoch_end"),
    ]


def test_bundle_refuses_a_callback_with_checkpoint_state():
    class Stateful(L.Callback):
        def state_dict(self):
            return {"n": 1}

    with pytest.raises(TypeError, match="Stateful keeps state in checkpoints"):
        CallbackBundle(Stateful())


def test_the_quiet_profiler_is_the_default_and_a_named_one_wins():
    trainer_cfg = OmegaConf.create({"_target_": "lightning.Trainer", "accelerator": "cpu"})
    assert isinstance(make_trainer(trainer_cfg, [], False).profiler, QuietProfiler)
    trainer_cfg.profiler = "simple"
    assert isinstance(make_trainer(trainer_cfg, [], False).profiler, SimpleProfiler)
    with QuietProfiler().profile("step") as nothing:  # a usable, reusable context
        assert nothing is None


def test_plain_attribute_writes_keep_modules_parameters_and_buffers_registered():
    model = Classifier(
        net={"_target_": "fmnist_exp.models.MLP", "hidden": [8]}, optimizer={"_target_": "x"}
    )
    model._current_fx_name = "training_step"  # the write Lightning makes dozens of times a step
    assert model.__dict__["_current_fx_name"] == "training_step"
    model.net = None  # a registered module set to None stays nn.Module's business
    assert "net" in model._modules and model._modules["net"] is None
    assert "net" not in model.__dict__
    model.register_buffer("tally", torch.zeros(1))
    model.tally = torch.ones(1)  # tensors, modules and parameters take nn.Module's path
    assert model._buffers["tally"].item() == 1.0 and "tally" not in model.__dict__
