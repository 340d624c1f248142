"""train(cfg): one run, top to bottom.

seed -> data -> model -> trainer -> MLflow run -> fit -> test on the best checkpoint -> artifacts
-> summary. Everything a user can get wrong is checked before the MLflow run starts, so bad input
never leaves a half-made run behind.
"""

import errno
import shlex
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import mlflow
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import (
    Callback,
    EMAWeightAveraging,
    ModelCheckpoint,
    RichProgressBar,
)
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig, OmegaConf

from fmnist_exp import claims, distill, plots, resume, sweep, tracking
from fmnist_exp.checkpoint_io import AtomicCheckpointIO
from fmnist_exp.classifier import Classifier
from fmnist_exp.errors import ConfigError, UserError, user_error
from fmnist_exp.guards import FiniteLossGuard, RunInterrupted, StopOnSignal
from fmnist_exp.lean import CallbackBundle, QuietProfiler
from fmnist_exp.models import count_parameters
from fmnist_exp.paths import check_writable, config_dir


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


def run_name(base: str) -> str:
    """A sweep job's name starts with its job number: jobs that share a run_name, or overrides
    drawn in the config rather than typed, stay apart in the MLflow UI."""
    job = sweep.job_tags().get("sweep.job_num")
    return f"#{job} {base}" if job is not None else base


def make_trainer(trainer_cfg: DictConfig, callbacks: list[Callback], logger) -> L.Trainer:
    """lightning.Trainer from the `trainer` group; an accelerator that isn't there (or any other
    setting Lightning rejects) fails here, before the MLflow run exists."""
    try:
        # a profiler the user names (trainer.profiler=simple) wins over the quiet default
        quiet = {} if trainer_cfg.get("profiler") else {"profiler": QuietProfiler()}
        return instantiate(
            trainer_cfg, callbacks=callbacks, logger=logger, plugins=[AtomicCheckpointIO()], **quiet
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
            f"the machine has one. Install a CUDA build (`make setup TORCH=torch` on Linux, or the "
            f"command from pytorch.org/get-started), or train on the CPU with trainer=cpu."
        )
    return (
        f" This torch ({torch.__version__}, CUDA {torch.version.cuda}) sees no GPU: check "
        f"nvidia-smi and CUDA_VISIBLE_DEVICES, or train on the CPU with trainer=cpu."
    )


def check_blocks(cfg: DictConfig) -> None:
    """`ema=0.999` (a value where a block of settings belongs) ended in an AttributeError
    traceback: the blocks a switch turns on (resume.OFF_WHEN_EMPTY) must stay blocks."""
    for block, switch in resume.OFF_WHEN_EMPTY.items():
        if (value := cfg.get(block)) is not None and not isinstance(value, DictConfig):
            keys = OmegaConf.load(config_dir() / "train.yaml")[block]
            raise ConfigError(
                f"{block}={value!r} sets a whole block of settings to one value; set its keys "
                f"instead, e.g. {block}.{switch}=<value> (its keys: "
                f"{', '.join(f'{block}.{k}' for k in keys)}; defaults in conf/train.yaml)."
            )


def check_seed(seed) -> int:
    """`seed`, checked: an int in numpy's range. Lightning's seed_everything ends in a traceback for
    'abc' or an out-of-range seed, and truncates 1.5 to 1 without a word."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**32 - 1:
        raise ConfigError(
            f"seed={seed!r} must be an int from 0 to 4294967295: it seeds python, numpy, torch and "
            f"the batch order. Pass e.g. seed=1, or seed=1,2,3 with --multirun."
        )
    return seed


def check_training(cfg: DictConfig) -> None:
    """Two settings that torch and Lightning take, only to fail inside fit once the run exists:
    label_smoothing outside [0, 1) (cross_entropy refuses it at the first step) and
    trainer.max_epochs=-1 (Lightning's "no limit") under a schedule, which needs a step count."""
    smoothing = cfg.get("label_smoothing", 0.0)
    if not is_number(smoothing) or not 0 <= smoothing < 1:
        raise ConfigError(
            f"label_smoothing={smoothing!r} must be a number in [0, 1): the share of each target "
            f"spread over the other classes (0 = off; the recipes use 0.1)."
        )
    epochs = cfg.trainer.get("max_epochs")
    if epochs is not None and (
        isinstance(epochs, bool) or not isinstance(epochs, int) or epochs == 0
    ):
        raise ConfigError(
            f"trainer.max_epochs={epochs!r} must be a whole number of passes over the training "
            f"split, 1 or more (or -1: no limit, with trainer.max_steps); 0 would test an untrained "
            f"network."
        )
    no_limit = cfg.trainer.get("max_epochs") == -1 and (cfg.trainer.get("max_steps") or -1) < 1
    if no_limit and cfg.get("scheduler"):
        raise ConfigError(
            "trainer.max_epochs=-1 (no limit) leaves the learning-rate schedule no number of steps "
            "to run over: give trainer.max_epochs a number of epochs, or train without one "
            "(scheduler=none)."
        )


def is_number(value) -> bool:
    """An int or float from the config; True and False are not numbers here."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_distill(node: DictConfig | None) -> dict:
    """The `distill` block, checked: teachers a list of run ids, weight in [0, 1], temperature > 0."""
    found = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    # a config.yaml saved before `distill` existed (resume=) has no block: distillation off
    settings = {"teachers": [], "weight": 0.0, "temperature": 1.0} | found
    teachers, weight, temperature = (settings[k] for k in ("teachers", "weight", "temperature"))
    if isinstance(teachers, str):
        teachers = settings["teachers"] = [teachers]
    if not isinstance(teachers, list) or not all(isinstance(t, str) and t for t in teachers):
        raise ConfigError(
            f"distill.teachers={teachers!r} must be a list of MLflow run ids, e.g. "
            f"'distill.teachers=[<run_id>,<run_id>]' ([] = no distillation)."
        )

    if not is_number(weight) or not 0 <= weight <= 1:
        raise ConfigError(
            f"distill.weight={weight!r} must be in [0, 1]: the share of the loss on the teachers."
        )
    if not is_number(temperature) or temperature <= 0:
        raise ConfigError(
            f"distill.temperature={temperature!r} must be a number > 0 (1 = plain probabilities)."
        )
    return settings


class MovingAverage(EMAWeightAveraging):
    """Lightning's EMAWeightAveraging, except that outside fit the checkpoint's weights (the
    average) stay in the model. Lightning 2.6 restores callbacks for trainer.test(ckpt_path="best")
    too, and the stock callback, still holding its average from fit, would load the checkpoint's
    raw weights (`current_model_state`) back into the model: the test would measure those."""

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # resume=: the raw weights and the average
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


def ema_callback(node: DictConfig | None) -> MovingAverage | None:
    """The `ema` block: Lightning's EMAWeightAveraging for a decay in (0, 1), None when off. It keeps
    the average beside the model, validates on it (so the best checkpoint is picked on it), saves
    it as the checkpoint's weights (test, the logged model, predict and serve use it) and keeps the
    raw weights and the average's state in the checkpoint for resume=."""
    decay = node.get("decay") if node is not None else None  # a config.yaml from before `ema`
    if decay is None:
        return None
    if not is_number(decay) or not 0 < decay < 1:
        raise ConfigError(
            f"ema.decay={decay!r} must be a number between 0 and 1 (each step keeps that share of "
            f"the average), e.g. ema.decay=0.999; ema.decay=null switches the average off."
        )
    return MovingAverage(decay=float(decay))


DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)  # the disk, not a bug


def skip_finished_run(cfg: DictConfig, previous: resume.Previous) -> dict[str, float]:
    """skip_finished=true and this exact config already FINISHED: its results, nothing trained."""
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    metrics = client.get_run(previous.run_id).data.metrics
    if parent := sweep.job_tags().get("mlflow.parentRunId"):  # the sweep's summary counts it
        client.set_tag(previous.run_id, sweep.REUSED_TAG.format(parent=parent), "true")
    print(f"skipped: this config already FINISHED as run {previous.run_id} (skip_finished=true)")
    return {k: metrics[k] for k in ("val/acc_best", "test/acc", "epochs") if k in metrics}


def continue_config(cfg: DictConfig, previous: resume.Previous) -> DictConfig:
    """The interrupted run's own resolved config (its config.yaml), on the store we found it in."""
    saved = previous.output_dir / "config.yaml"
    if not saved.is_file():
        raise ConfigError(
            f"resume: run {previous.run_id} has no {saved}; start it again without resume=."
        )
    run_cfg = OmegaConf.load(saved)
    run_cfg.mlflow, run_cfg.resume = cfg.mlflow, previous.run_id
    return run_cfg


def train(cfg: DictConfig, extra_callbacks: list[Callback] = ()) -> dict[str, float]:
    """One run. extra_callbacks: more Lightning callbacks that keep no checkpoint state (they join
    the CallbackBundle; the benchmark times epochs with one). The run's claims (claims.py) are
    held until it returns."""
    with claims.session():
        return _train(cfg, extra_callbacks)


def _train(cfg: DictConfig, extra_callbacks: list[Callback]) -> dict[str, float]:
    started = time.perf_counter()
    if (name := cfg.mlflow.register_model) is not None:
        tracking.check_model_name(name)  # MLflow would refuse it only after training
    if cfg.mlflow.register_model and not cfg.mlflow.log_model:
        raise ConfigError(
            f"mlflow.register_model={cfg.mlflow.register_model} needs the logged model: drop "
            f"mlflow.log_model=false, or register_model."
        )
    # the store first: a bad URI, a corrupt or read-only file, an unreachable server fail here,
    # in seconds, before anything is read or recorded (and a brand-new store is made once)
    tracking.ensure_store(cfg.mlflow.tracking_uri, cfg.mlflow.experiment)
    check_blocks(cfg)
    digests = resume.config_hashes(cfg)  # (the tag, the same config's pre-2026-11-25 tag)
    claims.config(  # skip_finished waits for a process training this config, then decides
        claims.claims_folder(cfg.mlflow.tracking_uri, Path(cfg.paths.root)), digests[0],
        exclusive=cfg.get("skip_finished") is True,
    )  # fmt: skip
    action, previous = resume.choose(cfg, digests)
    if action == "skip":
        return skip_finished_run(cfg, previous)
    if action == "resume":  # the run's own config and folder; checkpoints continue there
        claims.folder(previous.output_dir, previous.run_id)  # never two writers in one run
        cfg = continue_config(cfg, previous)
    L.seed_everything(check_seed(cfg.seed), workers=True)
    check_training(cfg)
    output_dir = Path(cfg.paths.output_dir)
    check_writable(
        output_dir, "paths.output_dir (hydra.run.dir)"
    )  # also checked by Hydra's callback, before Hydra makes it
    if action != "resume":
        claims.folder(output_dir)

    distill_cfg = check_distill(cfg.get("distill"))  # teachers checked before the data loads
    ema = ema_callback(cfg.get("ema"))
    teachers = distill.load_teachers(
        cfg.mlflow.tracking_uri, distill_cfg["teachers"], dict(cfg.data)
    )

    # Data first: its training statistics go into the model's normalisation layer.
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    if teachers:  # their soft targets ride along with the training batches
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        datamodule.soft_targets = distill.soft_targets(
            teachers, datamodule.train[0], distill_cfg["temperature"], device
        )

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
        distill_weight=distill_cfg["weight"] if distill_cfg["teachers"] else 0.0,
        distill_temperature=distill_cfg["temperature"],
        class_names=datamodule.class_names,
    )
    model.make_optimizer()  # a setting torch refuses fails here, before the MLflow run exists
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
    stop = StopOnSignal(output_dir / "checkpoints")
    clock = resume.FitClock()  # training seconds, summed over the legs of a resumed run
    ours = CallbackBundle(  # see lean.py
        history, FiniteLossGuard(), stop, clock, resume.RandomStateInCheckpoints(), *extra_callbacks
    )
    callbacks: list[Callback] = [checkpoint, ours, *([ema] if ema else [])]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(RichProgressBar())
    model_name, overrides = describe_run(cfg)
    logger = tracking.make_logger(
        cfg.mlflow.tracking_uri,
        cfg.mlflow.experiment,
        run_name=run_name(cfg.mlflow.run_name or " ".join([model_name, *overrides])),
        tags={
            "model": model_name,
            "overrides": " ".join(overrides),
            "git_commit": tracking.git_commit(Path(cfg.paths.root)),
            "command": shlex.join(["python", "-m", "fmnist_exp", *sys.argv[1:]]),
            **sweep.job_tags(),  # nests the run under its sweep's parent run
            **{k: str(v) for k, v in cfg.get("tags", {}).items()},  # e.g. reference_acc
            "config_hash": digests[0],
        },
        run_id=previous.run_id if previous else None,
    )
    trainer = make_trainer(cfg.trainer, callbacks, logger)

    # From here on the MLflow run exists: it ends FAILED (or KILLED) if anything below raises.
    client, run_id = logger.experiment, logger.run_id
    ours.add(resume.RunIdInCheckpoints(run_id))
    config_file = output_dir / "config.yaml"
    try:
        stop.__enter__()  # SIGTERM / SIGINT from here on: checkpoint, KILLED
        if previous is None:
            params = {
                k: v for k, v in tracking.flatten(plain(cfg)).items()
                if not k.startswith(("paths.", "data.md5."))  # machine-specific or constant
            }  # fmt: skip
            logger.log_hyperparams(params | datamodule.summary() | {"output_dir": str(output_dir)})
            logger.log_metrics(
                {"model/params_total": params_total, "model/params_trainable": params_trainable}
            )
            output_dir.mkdir(parents=True, exist_ok=True)
            config_file.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        else:  # epochs already logged stay as they are; the curves plot gets them back
            history.epochs = resume.epoch_history(cfg.mlflow.tracking_uri, run_id)
            for key, value in sweep.job_tags().items():  # a sweep that finishes a run adopts it
                client.set_tag(run_id, key, value)
            damaged = (
                "" if previous.last_checkpoint.name == "last.ckpt" else " (last.ckpt is damaged)"
            )
            print(f"resuming run {run_id} from {previous.last_checkpoint}{damaged}")

        with warnings.catch_warnings():
            if previous:  # its folder holds its own checkpoints: expected, not worth a warning
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* not empty")
            trainer.fit(
                model,
                datamodule=datamodule,
                ckpt_path=previous.last_checkpoint if previous else None,
            )
        best = checkpoint.best_model_path or None
        tested = trainer.test(
            model, datamodule=datamodule, ckpt_path="best" if best else None, verbose=False
        )
        n_tested, n_test = int(tested[0]["test/n_images"]), len(datamodule.test[1])
        # a run that scored part of its test split (limit_test_batches, fast_dev_run) is no result
        partial = n_tested < n_test or bool(trainer.fast_dev_run)
        client.set_tag(run_id, "partial", str(partial).lower())
        results = {
            "test/acc": tested[0]["test/acc"],
            "test/loss": tested[0]["test/loss"],
            "test/n_images": n_tested,
            "val/acc_best": float(checkpoint.best_model_score or float("nan")),
            "time/fit_s": clock.seconds(),  # every leg, when resumed
            "epochs": trainer.current_epoch,
        }

        if trainer.global_rank != 0:  # other DDP processes: rank 0 records the run
            return results
        curves = plots.training_curves(history.epochs, output_dir / "training_curves.png")
        confusion = plots.confusion_matrix(
            model.test_confusion_counts, model.class_names, output_dir / "confusion_matrix.png"
        )
        for artifact in (config_file, curves, confusion):
            client.log_artifact(run_id, str(artifact))
        if best:
            client.log_artifact(run_id, best, artifact_path="checkpoints")
        if cfg.mlflow.log_model:
            example = datamodule.test[0][:2]
            tracking.log_model(
                cfg.mlflow.tracking_uri, run_id, model.probabilities_module(), example,
                model.class_names,
            )  # fmt: skip
            if cfg.mlflow.register_model:
                registered = tracking.register_model(
                    cfg.mlflow.tracking_uri, f"runs:/{run_id}/model", cfg.mlflow.register_model
                )
                client.set_tag(run_id, "registered_model", registered)
        results["time/total_s"] = clock.earlier_legs + time.perf_counter() - started
        if previous is not None:
            results["time/fit_earlier_legs_s"] = clock.earlier_legs
        # Lightning's logger recorded the test metrics, except under fast_dev_run (it mutes loggers)
        muted = bool(trainer.fast_dev_run)
        logger.log_metrics({k: v for k, v in results.items() if muted or not k.startswith("test/")})
    except BaseException as exc:
        killed = isinstance(exc, (KeyboardInterrupt, RunInterrupted)) or stop.received
        note = f"; checkpoint {stop.saved}" if stop.saved else ""
        error = f"{type(exc).__name__}: {exc}{note}"[:5000]
        tracking.patiently(lambda: client.set_tag(run_id, "error", error))
        tracking.patiently(lambda: client.set_terminated(run_id, "KILLED" if killed else "FAILED"))
        if killed:
            interrupted = (
                exc
                if isinstance(exc, RunInterrupted)
                else RunInterrupted(stop.received or "SIGINT")
            )
            interrupted.resumable = resume.last_checkpoint(output_dir).is_file()
            if interrupted is not exc:
                raise interrupted from exc
        if isinstance(exc, OSError) and exc.errno in DISK_ERRORS:
            raise UserError(
                f"{exc.strerror} while writing "
                f"{exc.filename or f'the run (outputs in {output_dir}, artifacts in the store {cfg.mlflow.tracking_uri})'}: "
                f"run {run_id} is FAILED; "
                f"its checkpoints so far are in {output_dir / 'checkpoints'}. Free space (or fix the "
                f"permissions), then continue it with resume={run_id}."
            ) from exc
        if tracking.is_busy(exc):
            raise UserError(
                f"The tracking store {cfg.mlflow.tracking_uri} stayed busy (another process held "
                f"its write lock) and refused a write: run {run_id} is FAILED; its checkpoints so "
                f"far are in {output_dir / 'checkpoints'}. Continue it with resume={run_id} once "
                f"the other process is done (many parallel writers: use make tracking-server)."
            ) from exc
        raise
    finally:
        stop.__exit__()
    if previous is not None and "error" in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, "error")  # an earlier leg's; this one finished
    tracking.patiently(lambda: client.set_terminated(run_id, "FINISHED"))

    print(
        f"run {run_id}  test/acc={results['test/acc']:.4f}"
        + (f" (partial: {n_tested} of {n_test} test images)" if partial else "")
        + f"  params={params_total:,}  "
        f"epochs={results['epochs']}  wall={results['time/total_s']:.1f}s  "
        f"outputs={output_dir}\n"
        + (
            f"compare runs: {cfg.mlflow.tracking_uri}"
            if cfg.mlflow.tracking_uri.startswith(("http://", "https://"))
            else f"compare runs: make ui  (or: mlflow ui --backend-store-uri {cfg.mlflow.tracking_uri})"
        )
    )
    return results
