"""The lightning.Trainer from the `trainer` group, with our checkpoint files (checkpoint_io.py)."""

import logging

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from fmnist_exp.errors import ConfigError, user_error
from fmnist_exp.log_filters import Quiet
from fmnist_exp.training.checkpoint_io import AtomicCheckpointIO

for lightning_logger in (  # pytorch_lightning's once MLflow's pytorch flavour has imported it
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
):
    logging.getLogger(lightning_logger).addFilter(Quiet())


def make_trainer(trainer_cfg: DictConfig, callbacks: list[Callback], logger) -> L.Trainer:
    """An accelerator that isn't there (or any other setting Lightning rejects) fails here, before
    the MLflow run exists."""
    try:
        return instantiate(
            trainer_cfg, callbacks=callbacks, logger=logger, plugins=[AtomicCheckpointIO()]
        )
    except Exception as exc:
        if not isinstance(cause := user_error(exc), MisconfigurationException):
            raise
        gpu_hint = (gpu_hint_for_this_torch() if str(trainer_cfg.accelerator) in ("gpu", "cuda")
                    else "")  # fmt: skip
        raise ConfigError(
            f"Lightning rejected the trainer settings (trainer.accelerator={trainer_cfg.accelerator}, "
            f"devices={trainer_cfg.devices}): {str(cause).rstrip('.!')}.{gpu_hint}"
        ) from exc


def gpu_hint_for_this_torch() -> str:
    """Why `trainer.accelerator=gpu` cannot work here: a CPU-only torch build (whatever the machine
    has), or no GPU visible to a CUDA build."""
    if torch.version.cuda is None:
        return (
            f" This torch ({torch.__version__}) is a CPU-only build: it cannot use a GPU even where "
            f"the machine has one. Install a CUDA build (`make setup TORCH_INDEX=cu126`, see "
            f"docs/setup.md, or the command from pytorch.org/get-started), or train on the CPU "
            f"with trainer=cpu."
        )
    return (
        f" This torch ({torch.__version__}, CUDA {torch.version.cuda}) sees no GPU: check "
        f"nvidia-smi and CUDA_VISIBLE_DEVICES, or train on the CPU with trainer=cpu."
    )
