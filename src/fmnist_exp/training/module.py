"""One LightningModule for every architecture: normalisation + network + loss, metrics, optimiser.

It is built from plain dicts (the resolved `model`, `optimizer` and `scheduler` configs), which are
saved in the checkpoint, so `load_classifier(path)` rebuilds the exact network.
"""

import inspect

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import get_object, instantiate
from lightning.pytorch.strategies import SingleDeviceStrategy
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from fmnist_exp.data.dataset import CLASS_NAMES
from fmnist_exp.errors import ConfigError, UserError, one_paragraph
from fmnist_exp.models import FlipAveraged, Normalize


def build(spec: dict, num_classes: int = len(CLASS_NAMES)) -> nn.Module:
    """{'_target_': 'fmnist_exp.models.LeNet', **kwargs} -> the module, with `num_classes` outputs
    (the dataset's classes). Unlike hydra's instantiate, a ConfigError raised by the constructor
    reaches the caller unwrapped."""
    kwargs = dict(spec)
    network = get_object(kwargs.pop("_target_"))
    options = inspect.signature(network).parameters
    given = kwargs.setdefault("num_classes", num_classes)
    if given != num_classes:
        raise ConfigError(
            f"model.num_classes={given!r}, but the data has {num_classes} classes: leave "
            f"model.num_classes out (it follows the data), or point data.data_dir at data with "
            f"{given} classes."
        )
    if "num_classes" not in options:
        if num_classes != len(CLASS_NAMES):
            raise ConfigError(
                f"{network.__name__} takes no num_classes, so it cannot have the data's "
                f"{num_classes} outputs; give it a num_classes argument, or pick a model from conf/model/."
            )
        kwargs.pop("num_classes")
    if unknown := sorted(set(kwargs) - set(options)):
        raise ConfigError(
            f"model.{unknown[0]} is not an option of {network.__name__}; its options are "
            f"{', '.join(options)}. Drop the override or pick a model that has it (conf/model/); "
            f"module.* holds the settings around the network (loss, compile, channels_last)."
        )
    return network(**kwargs)


class Classifier(L.LightningModule):
    def __init__(
        self,
        net: dict,
        optimizer: dict,
        scheduler: dict | None = None,
        mean: float = 0.0,
        std: float = 255.0,
        label_smoothing: float = 0.0,
        tta_hflip: bool = False,
        distill_weight: float = 0.0,
        distill_temperature: float = 1.0,
        class_names: tuple[str, ...] | list[str] = CLASS_NAMES,
        steps_per_call: int = 1,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)  # the run logs the whole resolved config instead
        # steps_per_call > 1: each training_step receives that many batches and makes one optimizer
        # step per batch itself (Lightning's manual optimisation), so Lightning's loop runs once per
        # K steps. The sequence of updates is the one automatic optimisation makes (a test checks).
        self.automatic_optimization = steps_per_call == 1
        self.class_names = tuple(class_names)  # label id -> name: the outputs, in order
        self.run_id: str | None = None  # the MLflow run that wrote the checkpoint loaded (if any)
        num_classes = len(self.class_names)
        # net[0] normalises raw pixels, so the network takes what a user has: 0..255 images
        network = build(net, num_classes)
        self.net = nn.Sequential(
            Normalize(mean, std), FlipAveraged(network) if tta_hflip else network
        )

        # validate_args=False: the inputs are our own logits and labels, and the checks (torch.unique
        # on the labels) would cost a host sync per batch.
        def accuracy() -> MulticlassAccuracy:
            return MulticlassAccuracy(num_classes, average="micro", validate_args=False)

        self.val_acc, self.test_acc = accuracy(), accuracy()
        # one raw image: Lightning's model summary measures each layer's FLOPs and sizes on it
        self.example_input_array = torch.zeros(1, 1, 28, 28)
        self.test_confusion = MulticlassConfusionMatrix(num_classes, validate_args=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw pixels [N, 1, 28, 28] (uint8 or float 0..255) -> logits [N, classes]."""
        return self.net(images)

    def _loss(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits). A training batch with teacher targets (x, y, t) mixes in distillation."""
        images, labels = batch[:2]
        logits = self(images)
        hp = self.hparams
        loss = F.cross_entropy(logits, labels, label_smoothing=hp.label_smoothing)
        if len(batch) == 3:
            taught = distillation_loss(logits, batch[2], hp.distill_temperature)
            loss = (1 - hp.distill_weight) * loss + hp.distill_weight * taught
        return loss, logits

    # Training loss and accuracy are summed on the device and logged once, at the epoch's last step:
    # no per-step host sync and no per-step self.log or metric update (their Python bookkeeping
    # cost about 2 ms of a 13 ms lenet_bn step on the CPU). The sums live in a dict and grow in
    # place; with several steps per call they grow once per call (a few tensor ops per step fewer).
    # sync_dist averages over DDP processes (equal shards; a no-op in one process). Validation and
    # test use torchmetrics. The count of images is a Python int.
    def on_train_epoch_start(self) -> None:
        zero = torch.zeros((), device=self.device)
        self.train_sums = {"loss": zero, "correct": zero.clone(), "seen": 0}

    def training_step(self, batch, batch_idx):
        if self.automatic_optimization:
            loss, logits = self._loss(batch)
            self._count(loss.detach().reshape(1), [len(batch[1])], logits, batch[1])
        else:  # a list of batches: one optimizer step each, as Lightning would make them
            optimizer, scheduler = self.optimizers(), self.lr_schedulers()
            losses, outputs = [], []
            for step_batch in batch:
                loss, logits = self._loss(step_batch)
                optimizer.zero_grad(set_to_none=True)
                self._backward(loss)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                losses.append(loss.detach())
                outputs.append(logits.detach())
            loss = torch.stack(losses)  # [steps]: the loss guard reads every step's
            labels = torch.cat([step_batch[1] for step_batch in batch])
            self._count(loss, [len(b[1]) for b in batch], torch.cat(outputs), labels)
        if batch_idx + 1 == self.trainer.num_training_batches:  # callbacks read these at epoch end
            sums = self.train_sums
            n = sums["seen"]  # batch_size=n: logged once an epoch, it only names what they sum
            epoch = {"on_epoch": True, "on_step": False, "prog_bar": True, "sync_dist": True}
            self.log("train/loss", sums["loss"] / n, batch_size=n, **epoch)
            self.log("train/acc", sums["correct"] / n, batch_size=n, **epoch)
        return loss

    def on_fit_start(self) -> None:
        # Under steps_per_call > 1, on one device with no loss scaling, Lightning's manual_backward
        # only adds its hooks around loss.backward() (on_before_backward and on_after_backward, fanned
        # out to every callback: about 360 Python calls a step), so call loss.backward() itself.
        # A gradient scaler (precision=16-mixed) or DDP (its reducer is prepared before each backward)
        # needs Lightning's. The optimizer step stays Lightning's: it counts global_step.
        plain = isinstance(self.trainer.strategy, SingleDeviceStrategy) and (
            getattr(self.trainer.precision_plugin, "scaler", None) is None
        )
        self._backward = torch.Tensor.backward if plain else self.manual_backward

    def _count(self, losses, sizes: list[int], logits, labels) -> None:
        """Adds optimizer steps to the epoch's device sums: losses [steps] (each its batch's mean,
        detached: the sums keep no graph), the batches' sizes (all one size but an epoch's last),
        their logits and labels."""
        sums, size = self.train_sums, sizes[0]
        if sizes[-1] == size:
            sums["loss"].add_(losses.sum(), alpha=size)
        else:  # the epoch's last step: a smaller batch
            sums["loss"].add_(losses[:-1].sum(), alpha=size).add_(losses[-1], alpha=sizes[-1])
        sums["correct"].add_((logits.argmax(1) == labels).sum())  # argmax: no graph to detach from
        sums["seen"] += len(labels)

    def validation_step(self, batch, batch_idx):
        loss, logits = self._loss(batch)
        self.val_acc.update(logits, batch[1])
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def test_step(self, batch, batch_idx):
        # in float32 whatever trainer.precision is: the figure is the served model's (the logged
        # model runs in float32); under bf16-mixed or 16-mixed only training and validation are mixed
        with torch.autocast(self.device.type, enabled=False):
            loss, logits = self._loss(batch)
        self.test_acc.update(logits, batch[1])
        self.test_confusion.update(logits, batch[1])
        self.log("test/loss", loss, sync_dist=True)
        self.log("test/acc", self.test_acc)
        # how many test images this run really scored: fewer than the split's makes it partial
        self.log("test/n_images", float(len(batch[1])), reduce_fx="sum", sync_dist=True)

    def on_test_epoch_start(self) -> None:
        self.test_confusion.reset()

    def on_test_epoch_end(self) -> None:
        # computed here, where every DDP process takes part in the sync; read by rank 0 afterwards
        self.test_confusion_counts = self.test_confusion.compute().cpu()

    def make_optimizer(self) -> torch.optim.Optimizer:
        """The `optimizer` config on this model's parameters. A value torch refuses (optimizer.lr=-1)
        is a ConfigError naming the group's settings; train() builds it once before the run exists."""
        return self._build("optimizer", params=self.parameters())

    def make_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int):
        """The `scheduler` config around `optimizer`; a value it refuses (scheduler.pct_start=1.5) is
        a ConfigError like the optimizer's, and train() builds it once before the run exists too."""
        return self._build("scheduler", optimizer=optimizer, total_steps=total_steps)

    def _build(self, group: str, **arguments):
        try:
            return instantiate(self.hparams[group], **arguments)
        except Exception as exc:
            spec = dict(self.hparams[group])
            settings = " ".join(f"{group}.{k}={v}" for k, v in spec.items() if k != "_target_")
            raise ConfigError(
                f"{spec.get('_target_')} refused the {group} settings ({settings}): "
                f"{exc.__cause__ or exc}. Fix the value it names on the command line or in "
                f"conf/{group}/."
            ) from exc

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.run_id = checkpoint.get("mlflow_run_id")  # RunState writes it into every checkpoint

    def configure_optimizers(self):
        optimizer = self.make_optimizer()
        if not self.hparams.scheduler:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)  # Lightning's calls of training_step
        if not self.automatic_optimization:  # optimizer steps: each call makes up to K
            steps = self.trainer.train_dataloader.optimizer_steps  # per epoch
            per_epoch = min(steps, self.trainer.num_training_batches * self.hparams.steps_per_call)
            total = total // self.trainer.num_training_batches * per_epoch
        scheduler = self.make_scheduler(optimizer, total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def probabilities_module(self) -> nn.Module:
        """The servable model: raw pixels float32 [N, 1, 28, 28] -> class probabilities [N, classes]."""
        return nn.Sequential(self.net, nn.Softmax(dim=1)).eval()


def distillation_loss(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(targets || softmax(logits / T)), averaged over the batch (Hinton et al. 2015)."""
    log_student = (logits / temperature).log_softmax(1)
    kl = F.kl_div(log_student, targets, reduction="batchmean")
    return kl * temperature**2


def classifier(cfg: DictConfig, datamodule) -> Classifier:
    """The run's Classifier: the `model`, `optimizer`, `scheduler` and `module` configs around the
    data's statistics and classes. The optimizer and schedule are built once here, so a setting
    they refuse fails before the MLflow run exists."""

    def plain(node):  # resolved plain containers: they are saved in the checkpoint
        return OmegaConf.to_container(node, resolve=True) if node is not None else None

    module, teachers = cfg.module, bool(cfg.module.distill.teachers)
    model = Classifier(
        net=plain(cfg.model),
        optimizer=plain(cfg.optimizer),
        scheduler=plain(cfg.get("scheduler")),
        mean=datamodule.mean,
        std=datamodule.std,
        label_smoothing=module.label_smoothing,
        tta_hflip=module.tta_hflip,
        distill_weight=module.distill.weight if teachers else 0.0,
        distill_temperature=module.distill.temperature,
        class_names=datamodule.class_names,
        steps_per_call=module.steps_per_call,
    )
    optimizer = model.make_optimizer()
    if model.hparams.scheduler:  # total_steps is only known in fit; any count checks the settings
        model.make_scheduler(optimizer, total_steps=1000)
    if module.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if module.compile:
        model.net.compile()  # in place: compiled forward, same state_dict keys, same checkpoints
    return model


def load_classifier(path, source: str, hint: str) -> Classifier:
    """The Classifier in a checkpoint, on the CPU, in eval mode. A file that is not one of ours is a
    UserError that starts with `source` (the key it came from) and ends with `hint`."""
    try:
        model = Classifier.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip, key and shape errors: not one of our checkpoints
        raise UserError(
            f"{source}: not a checkpoint this version of fmnist-exp can load "
            f"({type(exc).__name__}: {one_paragraph(exc).split('. ')[0][:200]}). {hint}"
        ) from exc
    return model.eval()
