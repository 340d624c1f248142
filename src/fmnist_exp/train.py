"""train(cfg): one run, top to bottom.

seed -> data -> model -> trainer -> MLflow run -> fit -> test on the best checkpoint -> artifacts
-> summary. Everything a user can get wrong is checked before the MLflow run starts, so bad input
never leaves a half-made run behind.
"""

import shlex
import sys
import time
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from omegaconf import DictConfig, OmegaConf

from fmnist_exp import plots, sweep, tracking
from fmnist_exp.classifier import Classifier
from fmnist_exp.dataset import CLASS_NAMES
from fmnist_exp.errors import ConfigError, user_error
from fmnist_exp.models import count_parameters


class EpochHistory(Callback):
    """Keeps each epoch's train/val metrics (one host sync per epoch) for the curves PNG."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        self.epochs.append(
            {k: float(v) for k, v in metrics.items() if k.startswith(("train/", "val/"))}
        )


def describe_run(cfg: DictConfig) -> tuple[str, list[str]]:
    """(model config name, command-line overrides), from Hydra when it launched us."""
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        return hydra_cfg.runtime.choices.get("model", "custom"), list(hydra_cfg.overrides.task)
    return cfg.model._target_.rsplit(".", 1)[-1].lower(), []


def make_trainer(trainer_cfg: DictConfig, callbacks: list[Callback], logger) -> L.Trainer:
    """lightning.Trainer from the `trainer` group; an accelerator that isn't there (or any other
    setting Lightning rejects) fails here, before the MLflow run exists."""
    try:
        return instantiate(trainer_cfg, callbacks=callbacks, logger=logger)
    except Exception as exc:
        if not isinstance(cause := user_error(exc), MisconfigurationException):
            raise
        gpu_hint = (
            " Is a GPU visible (nvidia-smi, torch.cuda.is_available())? Without one use trainer=cpu "
            "or trainer.accelerator=auto."
            if str(trainer_cfg.accelerator) in ("gpu", "cuda")
            else ""
        )
        raise ConfigError(
            f"Lightning rejected the trainer settings (trainer.accelerator={trainer_cfg.accelerator}, "
            f"devices={trainer_cfg.devices}): {str(cause).rstrip('.!')}.{gpu_hint}"
        ) from exc


def train(cfg: DictConfig, extra_callbacks: list[Callback] = ()) -> dict[str, float]:
    """One run. extra_callbacks: more Lightning callbacks (the benchmark times epochs with one)."""
    started = time.perf_counter()
    if cfg.mlflow.register_model and not cfg.mlflow.log_model:
        raise ConfigError(
            f"mlflow.register_model={cfg.mlflow.register_model} needs the logged model: drop "
            f"mlflow.log_model=false, or register_model."
        )
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)

    # Data first: its training statistics go into the model's normalisation layer.
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")

    def plain(node):  # resolved plain containers: they are saved in the checkpoint
        return OmegaConf.to_container(node, resolve=True) if node is not None else None

    model = Classifier(
        net=plain(cfg.model),
        optimizer=plain(cfg.optimizer),
        scheduler=plain(cfg.get("scheduler")),
        mean=datamodule.mean,
        std=datamodule.std,
        label_smoothing=cfg.label_smoothing,
        tta_hflip=cfg.tta_hflip,
    )
    params_total, params_trainable = count_parameters(model.net)
    if cfg.model.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    if cfg.model.get("compile"):
        model.net.compile()  # in place: compiled forward, same state_dict keys, same checkpoints

    checkpoint = ModelCheckpoint(
        dirpath=output_dir / "checkpoints",
        filename="epoch{epoch:03d}",
        auto_insert_metric_name=False,
        monitor="val/acc",
        mode="max",
        save_last=True,
    )
    history = EpochHistory()
    callbacks: list[Callback] = [checkpoint, history, *extra_callbacks]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(RichProgressBar())
    model_name, overrides = describe_run(cfg)
    logger = tracking.make_logger(
        cfg.mlflow.tracking_uri,
        cfg.mlflow.experiment,
        run_name=cfg.mlflow.run_name or " ".join([model_name, *overrides]),
        tags={
            "model": model_name,
            "overrides": " ".join(overrides),
            "git_commit": tracking.git_commit(Path(cfg.paths.root)),
            "command": shlex.join(["python", "-m", "fmnist_exp", *sys.argv[1:]]),
            **sweep.job_tags(),  # nests the run under its sweep's parent run
            **{k: str(v) for k, v in cfg.get("tags", {}).items()},  # e.g. reference_acc
        },
    )
    trainer = make_trainer(cfg.trainer, callbacks, logger)

    # From here on the MLflow run exists: it ends FAILED (or KILLED) if anything below raises.
    client, run_id = logger.experiment, logger.run_id
    try:
        params = {
            k: v for k, v in tracking.flatten(plain(cfg)).items()
            if not k.startswith(("paths.", "data.md5."))  # machine-specific or constant
        }  # fmt: skip
        logger.log_hyperparams(params | datamodule.summary() | {"output_dir": str(output_dir)})
        logger.log_metrics(
            {"model/params_total": params_total, "model/params_trainable": params_trainable}
        )
        output_dir.mkdir(parents=True, exist_ok=True)
        config_file = output_dir / "config.yaml"
        config_file.write_text(OmegaConf.to_yaml(cfg, resolve=True))

        fit_started = time.perf_counter()
        trainer.fit(model, datamodule=datamodule)
        fit_seconds = time.perf_counter() - fit_started
        best = checkpoint.best_model_path or None
        tested = trainer.test(
            model, datamodule=datamodule, ckpt_path="best" if best else None, verbose=False
        )
        results = {
            "test/acc": tested[0]["test/acc"],
            "test/loss": tested[0]["test/loss"],
            "val/acc_best": float(checkpoint.best_model_score or float("nan")),
            "time/fit_s": fit_seconds,
            "epochs": trainer.current_epoch,
        }

        if trainer.global_rank != 0:  # other DDP processes: rank 0 records the run
            return results
        curves = plots.training_curves(history.epochs, output_dir / "training_curves.png")
        confusion = plots.confusion_matrix(
            model.test_confusion_counts, CLASS_NAMES, output_dir / "confusion_matrix.png"
        )
        for artifact in (config_file, curves, confusion):
            client.log_artifact(run_id, str(artifact))
        if best:
            client.log_artifact(run_id, best, artifact_path="checkpoints")
        if cfg.mlflow.log_model:
            example = datamodule.test[0][:2]
            tracking.log_model(
                cfg.mlflow.tracking_uri, run_id, model.probabilities_module(), example
            )
            if cfg.mlflow.register_model:
                registered = tracking.register_model(
                    cfg.mlflow.tracking_uri, f"runs:/{run_id}/model", cfg.mlflow.register_model
                )
                client.set_tag(run_id, "registered_model", registered)
        results["time/total_s"] = time.perf_counter() - started
        logger.log_metrics({k: v for k, v in results.items() if not k.startswith("test/")})
    except BaseException as exc:
        client.set_tag(run_id, "error", f"{type(exc).__name__}: {exc}"[:5000])
        client.set_terminated(run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")

    print(
        f"run {run_id}  test/acc={results['test/acc']:.4f}  params={params_total:,}  "
        f"epochs={results['epochs']}  wall={results['time/total_s']:.1f}s  "
        f"outputs={output_dir}\n"
        f"compare runs: make ui  (or: mlflow ui --backend-store-uri {cfg.mlflow.tracking_uri})"
    )
    return results
