"""One training's MLflow run, from the moment it exists to its status.

`lifecycle()` is the only code that sets a run's status: FINISHED when its block ends, KILLED on a
stop signal or Ctrl+C, FAILED on anything else, with the reason in the run's `error` tag. Inside
it, `Run.start` records what the run is (params, parameter counts, the resolved config) and
`Run.finish` what it gave (the partial tag, plots, the best checkpoint, the servable model, the
summary metrics).
"""

import contextlib
import errno
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import lightning as L
import mlflow
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.entities import RunTag
from omegaconf import DictConfig, OmegaConf

from fmnist_exp.errors import UserError
from fmnist_exp.models import count_parameters
from fmnist_exp.tracking import resume, store, sweep
from fmnist_exp.training import plots
from fmnist_exp.training.callbacks import RunInterrupted, RunState, StopOnSignal, TrialPruned

DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)  # the disk, not a bug
EPOCH_METRICS = ("train/loss", "train/acc", "val/loss", "val/acc")


class RunLogger(MLFlowLogger):
    """Lightning's MLflow logger, except that it leaves the run's status to lifecycle(), which sets
    it once, at the end. Lightning's own finalize marks the run FINISHED after fit (before the test
    has run) and FAILED on any exception, a SIGTERM included: a sweep stopped by a signal, waiting
    for its jobs to leave RUNNING, would take that FAILED for the job's end."""

    def finalize(self, status: str = "success") -> None:
        pass  # (Lightning's also uploads checkpoints when log_model is set; we never set it)

    def __init__(self, *args, tested: frozenset[str] = frozenset(), **kwargs):
        super().__init__(*args, **kwargs)
        self.tested = tested  # test metrics an earlier leg of this run logged: the same figures

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Lightning tags what it logs with the epoch; ours is all per epoch (training sums,
        validation, test), so each value is recorded at step = epochs trained (1 for the first
        epoch's, as the console, the curves PNG and an Optuna trial count; the test's at the last
        epoch's step): MLflow's charts then plot the curves against epochs, and a resumed run's
        epochs line up with the first leg's. A run stopped after its test (while its model was
        logged) tests again when resumed, on the same checkpoint: those figures are not logged
        twice."""
        if "epoch" in metrics:  # Lightning's epoch index: the one running, or after fit the count
            fitting = not any(key.startswith("test/") for key in metrics)
            step = int(metrics["epoch"]) + fitting
        metrics = {k: v for k, v in metrics.items() if k not in self.tested}
        if metrics:
            super().log_metrics(metrics, step)


def describe(cfg: DictConfig) -> tuple[str, list[str]]:
    """(model config name, command-line overrides), from Hydra when it launched us."""
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        return hydra_cfg.runtime.choices.get("model", "custom"), list(hydra_cfg.overrides.task)
    return cfg.model._target_.rsplit(".", 1)[-1].lower(), []


def make_logger(cfg: DictConfig, previous: resume.Previous | None) -> RunLogger:
    """Lightning's MLflow logger on the checked store: a new run, or the previous one (RUNNING
    again). A sweep job's name starts with its job number, so jobs that share a run name stay apart
    in the MLflow UI."""
    uri, model_name, overrides = cfg.logger.tracking_uri, *describe(cfg)
    name = cfg.logger.run_name or " ".join([model_name, *overrides])
    if (job := sweep.job_tags().get("sweep.job_num")) is not None:
        name = f"#{job} {name}"
    tested = frozenset()
    if previous:
        client = mlflow.MlflowClient(uri)
        client.update_run(previous.run_id, status="RUNNING")
        logged = client.get_run(previous.run_id).data.metrics
        tested = frozenset(k for k in logged if k.startswith("test/"))
    return RunLogger(
        tested=tested,
        experiment_name=cfg.logger.experiment,
        tracking_uri=uri,
        run_name=name,
        tags={
            "model": model_name,
            "overrides": " ".join(overrides),
            "git_commit": git_commit(Path(cfg.paths.root)),
            "command": shlex.join(["python", "-m", "fmnist_exp", *sys.argv[1:]]),
            **sweep.job_tags(),  # nests the run under its sweep's parent run
            **(
                {f"search.{k}": str(cfg.search[k]) for k in ("study", "trial")}
                if cfg.get("search")
                else {}
            ),  # a trial of hparams_search=optuna
            **{k: str(v) for k, v in cfg.logger.tags.items()},  # config_hash, reference_acc, debug
        },
        artifact_location=store.artifact_location(uri),
        run_id=previous.run_id if previous else None,
    )


class Run:
    """What one run records, through the logger's client (a no-op on DDP's other processes)."""

    def __init__(self, cfg: DictConfig, logger: RunLogger, state: RunState, previous):
        self.cfg, self.logger, self.state, self.previous = cfg, logger, state, previous
        self.client, self.id = logger.experiment, logger.run_id
        self.uri, self.output_dir = cfg.logger.tracking_uri, Path(cfg.paths.output_dir)
        state.run_id = self.id  # into every checkpoint from here on

    def start(self, datamodule, model, device: torch.device) -> None:
        """A new run: its params, parameter counts, resolved config, and where it trains (`device`:
        the trainer's). A resumed one keeps what it logged, and a sweep that finishes it adopts it."""
        if self.previous is not None:
            for key, value in sweep.job_tags().items():
                self.client.set_tag(self.id, key, value)
            checkpoint = self.previous.last_checkpoint
            damaged = "" if checkpoint.name == "last.ckpt" else " (last.ckpt is damaged)"
            print(f"resuming run {self.id} from {checkpoint}{damaged}")
            self.fail_unfinished_models()
            return
        params = {
            k: v for k, v in flatten(OmegaConf.to_container(self.cfg, resolve=True)).items()
            if not k.startswith(("paths.", "data.md5."))  # machine-specific or constant
        }  # fmt: skip
        summary = datamodule.summary() | {"output_dir": str(self.output_dir)}
        self.logger.log_hyperparams(params | summary)
        tags = {"data.name": datamodule.name, **environment(device)}
        self.client.log_batch(self.id, tags=[RunTag(k, v) for k, v in tags.items()])
        store.log_datasets(self.client, self.id, datamodule.splits())
        total, trainable = count_parameters(model.net)
        self.logger.log_metrics({"model/params_total": total, "model/params_trainable": trainable})
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "config.yaml").write_text(OmegaConf.to_yaml(self.cfg, resolve=True))

    def fail_unfinished_models(self) -> None:
        """A logged model an earlier leg left PENDING (stopped while logging it) is marked FAILED;
        this leg logs the model again once it has tested."""
        experiment = self.client.get_run(self.id).info.experiment_id
        for model in self.client.search_logged_models(
            [experiment], filter_string=f"source_run_id = '{self.id}'"
        ):
            if str(model.status) == "PENDING":
                self.client.finalize_logged_model(model.model_id, "FAILED")

    def finish(self, trainer: L.Trainer, model, datamodule, tested: dict, started: float) -> dict:
        """The results: tested on the whole test split or partial (part of it, fast_dev_run, a
        debug mode: never ranked); then, on rank 0, the artifacts and the summary metrics."""
        cfg, checkpoint = self.cfg, trainer.checkpoint_callback
        n_tested, n_test = int(tested["test/n_images"]), len(datamodule.test[1])
        partial = n_tested < n_test or bool(trainer.fast_dev_run) or "debug" in cfg.logger.tags
        self.client.set_tag(self.id, "partial", str(partial).lower())
        results = {
            "test/acc": tested["test/acc"],
            "test/loss": tested["test/loss"],
            "test/n_images": n_tested,
            "time/fit_s": self.state.seconds(),  # every leg, when resumed
            "epochs": trainer.current_epoch,
            "partial": partial,
            "n_test": n_test,
        }
        best_score = getattr(checkpoint, "best_model_score", None)  # NaN: never validated
        if best_score is not None and math.isfinite(best_score):  # (trainer.limit_val_batches=0)
            results["val/acc_best"] = float(best_score)
        if trainer.global_rank != 0:  # other DDP processes: rank 0 records the run
            return results
        folder = self.output_dir
        curves = plots.training_curves(
            epoch_history(self.client, self.id), folder / "training_curves.png"
        )
        confusion = plots.confusion_matrix(
            model.test_confusion_counts, model.class_names, folder / "confusion_matrix.png"
        )
        for artifact in (folder / "config.yaml", curves, confusion):
            self.client.log_artifact(self.id, str(artifact))
        if best := getattr(checkpoint, "best_model_path", ""):
            self.client.log_artifact(self.id, best, artifact_path="checkpoints")
        if cfg.logger.log_model:
            uri = self.uri
            store.log_model(uri, self.id, model.probabilities_module(), datamodule.test[0][:2],
                            model.class_names)  # fmt: skip
            if cfg.logger.register_model:
                name = store.register_model(
                    uri, f"runs:/{self.id}/model", cfg.logger.register_model
                )
                self.client.set_tag(self.id, "registered_model", name)
        earlier = self.state.earlier_legs
        results["time/total_s"] = earlier + time.perf_counter() - started
        if self.previous is not None:
            results["time/fit_earlier_legs_s"] = earlier
        # Lightning's logger recorded the test metrics, except under fast_dev_run (it mutes loggers)
        muted = bool(trainer.fast_dev_run)
        numbers = {k: v for k, v in results.items() if k not in ("partial", "n_test")}
        self.logger.log_metrics(
            {k: v for k, v in numbers.items() if muted or not k.startswith("test/")}
        )
        return results


@contextlib.contextmanager
def lifecycle(
    cfg: DictConfig, logger: RunLogger, stop: StopOnSignal, state: RunState,
    previous: resume.Previous | None,
) -> Iterator[Run]:  # fmt: skip
    """The run exists from here on. Stop signals raise RunInterrupted (StopOnSignal saves a
    checkpoint of the moment); every way out sets the run's status once."""
    run = Run(cfg, logger, state, previous)
    try:
        with stop:
            yield run
    except TrialPruned as pruned:  # stopped on purpose: its curves are kept, it is no result
        why = str(pruned)
        store.patiently(lambda: run.client.set_tag(run.id, "search.state", "PRUNED"))
        store.patiently(lambda: run.client.set_tag(run.id, "search.pruned", why))
        store.patiently(lambda: run.client.set_terminated(run.id, "KILLED"))
        raise
    except BaseException as exc:
        killed = isinstance(exc, (KeyboardInterrupt, RunInterrupted)) or stop.received
        note = f"; checkpoint {stop.saved}" if stop.saved else ""
        error = f"{type(exc).__name__}: {exc}{note}"[:5000]
        try:
            store.patiently(lambda: run.client.set_tag(run.id, "error", error))
            store.patiently(
                lambda: run.client.set_terminated(run.id, "KILLED" if killed else "FAILED")
            )
        except Exception as unrecorded:  # the store itself failed: nothing more can be written
            if store.failure(unrecorded, run.uri) is None:
                raise
        if (explained := _explained(exc, killed, stop, run)) is exc:
            raise
        raise explained from exc
    if previous is not None and run.id and "error" in run.client.get_run(run.id).data.tags:
        run.client.delete_tag(run.id, "error")  # an earlier leg's; this one finished
    store.patiently(lambda: run.client.set_terminated(run.id, "FINISHED"))


def _explained(exc: BaseException, killed: bool, stop: StopOnSignal, run: Run) -> BaseException:
    """What the user sees: a stop with whether it can be resumed, a full disk or a busy store as
    one paragraph with the way on; anything else as it was."""
    checkpoints, uri = run.output_dir / "checkpoints", run.uri
    if killed:
        stopped = (
            exc if isinstance(exc, RunInterrupted) else RunInterrupted(stop.received or "SIGINT")
        )
        stopped.resumable = resume.last_checkpoint(run.output_dir).is_file()
        return stopped
    if isinstance(exc, OSError) and exc.errno in DISK_ERRORS:
        where = (
            exc.filename or f"the run (outputs in {run.output_dir}, artifacts in the store {uri})"
        )
        return UserError(
            f"{exc.strerror} while writing {where}: run {run.id} is FAILED; its checkpoints so far "
            f"are in {checkpoints}. Free space (or fix the permissions), then continue it with "
            f"resume={run.id}."
        )
    if reason := store.failure(exc, uri):
        return UserError(
            f"The tracking store {uri} failed while run {run.id} trained ({reason}), so the run's "
            f"status could not be recorded; its checkpoints so far are in {checkpoints}. Once the "
            f"store is back (restored, or its server up again), continue it with "
            f"resume={run.id}; if the store is lost, run the same command again."
        )
    if store.is_busy(exc):
        return UserError(
            f"The tracking store {uri} stayed busy (another process held its write lock) and "
            f"refused a write: run {run.id} is FAILED; its checkpoints so far are in "
            f"{checkpoints}. Continue it with resume={run.id} once the other process is done "
            f"(many parallel writers: use make tracking-server)."
        )
    return exc


def summary(cfg: DictConfig, run_id: str, results: dict, model) -> str:
    """The line a finished run prints, and where to compare it (a sweep says that once, at its
    end: sweep.py)."""
    uri, output_dir = cfg.logger.tracking_uri, cfg.paths.output_dir
    partial = (f" (partial: {results['test/n_images']} of {results['n_test']} test images)"
               if results["partial"] else "")  # fmt: skip
    line = (
        f"run {run_id}  test/acc={results['test/acc']:.4f}{partial}  "
        f"params={count_parameters(model.net)[0]:,}  epochs={results['epochs']}  "
        f"wall={results['time/total_s']:.1f}s  outputs={output_dir}"
    )
    return line if sweep.in_sweep() else f"{line}\ncompare runs: {store.compare_where(uri)}"


def epoch_history(client, run_id: str) -> list[dict[str, float]]:
    """The per-epoch metrics the run logged (every leg of a resumed one), for the curves plot."""
    by_step: dict[int, dict[str, float]] = {}
    for key in EPOCH_METRICS:
        for m in client.get_metric_history(run_id, key):
            by_step.setdefault(m.step, {})[key] = m.value
    return [by_step[s] for s in sorted(by_step)]


def flatten(config: Mapping, prefix: str = "") -> dict[str, str]:
    """{'model': {'channels': [16, 32]}} -> {'model.channels': '[16, 32]'} (MLflow params are flat)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def environment(device: torch.device) -> dict[str, str]:
    """Where a run trained, as tags the report's provenance lines quote: the CPU (model name and
    cores), the GPU when it trains on one, and the versions that decide its numbers."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    hardware = f"{os.cpu_count()}-core {cpu}"
    if device.type == "cuda":
        hardware += f", {torch.cuda.get_device_name(device)}"
    return {
        "env.hardware": hardware,
        "env.versions": f"python {platform.python_version()}, torch {torch.__version__}, "
        f"lightning {L.__version__}, mlflow {mlflow.__version__}",
    }


def git_commit(directory: Path) -> str:
    """HEAD of the checkout (with '-dirty' when it has uncommitted changes), or 'unknown'."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=directory, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha
