"""Every config option composes and builds; the parameter counts match the blog exactly."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from fmnist_exp.errors import ConfigError
from fmnist_exp.models import FlipAveraged, LeNet, ResidualCNN, count_parameters
from fmnist_exp.paths import config_dir
from fmnist_exp.training.module import Classifier
from fmnist_exp.training.module import build as build_network

GROUPS = {group: sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
          for group in ("data", "model", "optimizer", "scheduler", "trainer")}  # fmt: skip

PARAMETER_COUNTS = [  # (overrides, parameters): the blog's table plus our MLP
    (["model=mlp"], 235_146),
    (["model=lenet"], 44_426),
    (["model=lenet_relu"], 44_426),
    (["model=lenet_bn"], 44_470),
    (["model=lenet_bn", "model.channels=16"], 85_918),
    (["model=lenet_bn", "model.channels=16", "model.kernel_size=[5,3]"], 112_286),
    (["model=lenet_bn", "model.channels=16", "model.kernel_size=3"], 154_270),
    (["model=lenet_bn", "model.channels=32", "model.kernel_size=3"], 306_622),
]


def build(cfg) -> Classifier:
    plain = OmegaConf.to_container(cfg, resolve=True)
    return Classifier(
        net=plain["model"], optimizer=plain["optimizer"], scheduler=plain["scheduler"]
    )


def test_every_group_has_the_promised_options():
    assert GROUPS["model"] == ["lenet", "lenet_bn", "lenet_relu", "mlp", "resnet"]
    assert GROUPS["optimizer"] == ["adam", "adamw", "sgd"]
    assert GROUPS["scheduler"] == ["cosine", "none", "one_cycle"]
    assert GROUPS["trainer"] == ["cpu", "ddp", "default", "fast", "gpu"]
    assert GROUPS["data"] == ["fashion_mnist", "fashion_mnist_80_10_10"]


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_option_composes_and_builds(make_config, group, option):
    cfg = make_config(f"{group}={option}")
    if group == "trainer":
        assert cfg.trainer._target_ == "lightning.Trainer"
        if (
            option != "gpu"
        ):  # gpu needs a GPU: tests/test_cli.py checks its error, test_gpu.py the run
            trainer = instantiate(cfg.trainer, logger=False)
            assert trainer.max_epochs == cfg.trainer.max_epochs
    elif group == "data":
        datamodule = instantiate(cfg.data)
        assert datamodule.split == cfg.data.split
    else:
        model = build(cfg)
        logits = model(torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8))
        assert logits.shape == (3, 10)
        model.trainer = type(
            "T", (), {"estimated_stepping_batches": 100}
        )()  # what Lightning supplies
        assert model.configure_optimizers() is not None


@pytest.mark.parametrize(
    "overrides,expected",
    PARAMETER_COUNTS,
    ids=lambda v: " ".join(v) if isinstance(v, list) else str(v),
)
def test_parameter_counts_match_the_blog(make_config, overrides, expected):
    total, trainable = count_parameters(build(make_config(*overrides)).net)
    assert (total, trainable) == (expected, expected)


def test_lenet_layout_is_the_blogs():
    net = LeNet(channels=[6, 16], kernel_size=5)
    conv1, conv2 = net.features[0][0], net.features[1][0]
    assert (conv1.in_channels, conv1.out_channels, conv1.kernel_size, conv1.padding) == (
        1,
        6,
        (5, 5),
        (1, 1),
    )
    assert (conv2.in_channels, conv2.out_channels, conv2.kernel_size, conv2.padding) == (
        6,
        16,
        (5, 5),
        (0, 0),
    )
    assert [m.out_features for m in net.head if isinstance(m, torch.nn.Linear)] == [120, 84, 10]


@pytest.mark.parametrize(
    "kwargs,key",
    [
        (
            {"kernel_size": 29},
            "model.kernel_size",
        ),  # larger than the padded 30x30 input after pooling
        ({"kernel_size": [5, 14]}, "model.kernel_size"),  # larger than conv 2's 13x13 input
        ({"channels": 0}, "model.channels"),
        ({"channels": [8, -1]}, "model.channels"),
        ({"channels": [8, 16, 32]}, "model.channels"),
        ({"kernel_size": 0}, "model.kernel_size"),
        ({"activation": "gelu"}, "model.activation"),
    ],
)
def test_impossible_shapes_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        LeNet(**kwargs)


def test_load_from_checkpoint_rebuilds_the_network(make_config, tmp_path: Path):
    import lightning as L

    model = build(make_config("model.channels=16", "model.kernel_size=3"))
    trainer = L.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0
    )
    trainer.strategy.connect(model)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    restored = Classifier.load_from_checkpoint(path)
    x = torch.rand(4, 1, 28, 28) * 255
    model.eval(), restored.eval()
    assert count_parameters(restored.net)[0] == 154_270
    assert torch.equal(model(x), restored(x))


EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))
BLOG_ROWS = {  # experiment -> (parameters, the blog's test accuracy)
    "blog_mlp": (235_146, 0.745),
    "blog_lenet": (44_426, 0.872),
    "blog_lenet_relu": (44_426, 0.8824),
    "blog_lenet_bn": (44_470, 0.896),
    "blog_lenet_bn_c16": (85_918, 0.913),
    "blog_lenet_bn_c16_k53": (112_286, 0.914),
    "blog_lenet_bn_c16_k33": (154_270, 0.925),
    "blog_lenet_bn_c32_k33": (306_622, 0.940),
}
RECIPES = [name.replace("blog_", "recipe_") for name in BLOG_ROWS]  # every row, trained better


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(make_config, experiment):
    cfg = make_config(f"experiment={experiment}")
    total, _ = count_parameters(build(cfg).net)
    if experiment.startswith(("blog_", "recipe_")):  # a recipe keeps its blog row's network
        assert (total, cfg.logger.tags.reference_acc) == BLOG_ROWS[
            experiment.replace("recipe_", "blog_")
        ]
    elif experiment == "best":  # the flagship: under 1M parameters
        assert total == 926_578 and cfg.model._target_.endswith("ResidualCNN")
    else:  # Deep Learning Studio: 80/10/10 of 70k, batch 512, 100 epochs, plain cross-entropy
        assert (cfg.data.split, cfg.data.batch_size, cfg.trainer.max_epochs) == (
            "random_80_10_10",
            512,
            100,
        )
        assert cfg.module.label_smoothing == 0.0


@pytest.mark.parametrize("row", BLOG_ROWS)
def test_the_blog_rows_carry_no_improvement(make_config, row):
    """experiment=blog_*: the row's network with the plain recipe every row shares (Adam, cosine,
    batch 64, plain cross-entropy); each improvement lives in its recipe_* alone."""
    cfg = make_config(f"experiment={row}")
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.weight_decay == 0
    assert (cfg.optimizer.lr, cfg.data.batch_size) == (1e-3, 64)
    assert cfg.scheduler._target_.endswith(".cosine")
    assert dict(cfg.data.augment) == {"hflip": False, "crop_padding": 0, "erase_prob": 0.0}
    assert cfg.model.get("dropout", 0) == 0 and cfg.model.get("feature_dropout", 0) == 0
    assert cfg.module.label_smoothing == 0 and not cfg.module.tta_hflip
    assert not cfg.module.distill.teachers and cfg.callbacks.ema.decay is None
    recipe = make_config(f"experiment={row.replace('blog_', 'recipe_')}")
    assert recipe.optimizer._target_ == "torch.optim.AdamW" and recipe.module.tta_hflip
    assert recipe.data.augment.hflip and recipe.module.label_smoothing == 0.1


def test_experiment_list():
    assert sorted(["best", "dls", *BLOG_ROWS, *RECIPES]) == EXPERIMENTS


def test_dropout_keeps_the_parameter_count_and_only_acts_in_training():
    plain, dropped = (
        LeNet(channels=32, kernel_size=3, batch_norm=True),
        LeNet(channels=32, kernel_size=3, batch_norm=True, dropout=0.5, feature_dropout=0.25),
    )
    assert count_parameters(plain) == count_parameters(dropped) == (306_622, 306_622)
    assert [type(m) for m in list(dropped.head)[:3]] == [nn.Flatten, nn.Dropout, nn.Linear]
    x = torch.randn(8, 1, 28, 28)
    dropped.train()
    assert not torch.equal(dropped(x), dropped(x))  # random masks
    dropped.eval()
    assert torch.equal(dropped(x), dropped(x))
    with pytest.raises(ConfigError, match="model.dropout"):
        LeNet(dropout=1.0)
    with pytest.raises(ConfigError, match="model.feature_dropout=-0.1"):
        LeNet(feature_dropout=-0.1)
    with pytest.raises(ConfigError, match="model.feature_dropout='high'"):
        LeNet(feature_dropout="high")
    with pytest.raises(ConfigError, match="model.dropout='high'"):  # every model, one check
        ResidualCNN(dropout="high")


def test_an_option_the_model_does_not_have_names_the_key_and_the_options():
    with pytest.raises(
        ConfigError, match="model.feature_dropout is not an option of MLP; its options are hidden"
    ):
        build_network({"_target_": "fmnist_exp.models.MLP", "feature_dropout": 0.2})


def test_flip_tta_averages_an_image_and_its_mirror_at_evaluation_only():
    net = LeNet(batch_norm=True).eval()
    tta = FlipAveraged(net).eval()
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(tta(x), (net(x) + net(x.flip(3))) / 2)
    assert torch.allclose(tta(x), tta(x.flip(3)), atol=1e-6)  # mirror-invariant by construction
    tta.train()
    torch.manual_seed(0)
    assert torch.equal(tta(x), net(x))  # training sees single images
    model = Classifier(
        net={"_target_": "fmnist_exp.models.LeNet"}, optimizer={"_target_": "torch.optim.SGD", "lr": 0.1},
        tta_hflip=True,
    )  # fmt: skip
    assert isinstance(model.net[1], FlipAveraged) and count_parameters(model.net)[0] == 44_426
