"""The run's Lightning callbacks. conf/callbacks/ names the optional ones (the checkpoints, the loss
guard, the weight average, the progress bar); train() adds the two every run needs (a stop signal's
checkpoint and what a checkpoint carries besides the weights: RunState).

- FiniteLossGuard: each step's training loss is copied into a small buffer on the device (one copy,
  no host sync); every `check_every` steps, before each validation (so before the epoch's
  checkpoints) and at the epoch's end the guard looks at the buffer once, and stops the run with
  NonFiniteLoss naming the first step whose loss was NaN or inf and the likely cause.
- EpochLines: `epoch 3/20  train loss 0.3121 acc 88.61%  val loss 0.3012 acc 89.14%  9.1 s` after
  each validation, to the `fmnist_exp.epochs` logger: train.log always, and the console unless a
  progress bar shows the epochs there (a terminal with trainer.enable_progress_bar=true). Piped to
  a file, under a scheduler or in a sweep's worker, the console gets the lines.
- StopOnSignal: SIGTERM or SIGINT (a cluster's pre-emption, `kill`, Ctrl+C) raises RunInterrupted
  where the program is (inside a database write: at the next batch, once the write is done); a
  checkpoint of the moment is saved (interrupted.ckpt) and train() marks the run KILLED. last.ckpt
  (end of the last whole epoch) is what `resume=` continues from.
"""

import logging
import random
import signal
import sys
import threading
import time
from pathlib import Path

import lightning as L
import numpy as np
import optuna
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import (
    Callback,
    EMAWeightAveraging,
    ModelSummary,
    ProgressBar,
    RichProgressBar,
)
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig

from fmnist_exp.errors import UserError


def from_config(node: DictConfig, progress_bar: bool, summary: bool) -> list[Callback]:
    """The `callbacks` group, instantiated; entries set to null (or a factory that returns None,
    such as an EMA switched off) are left out, and so are progress bars under
    trainer.enable_progress_bar=false and the model summary under enable_model_summary=false."""
    built = [instantiate(spec) for spec in node.values() if spec is not None]
    return [
        c
        for c in built
        if c is not None
        and (progress_bar or not isinstance(c, ProgressBar))
        and (summary or not isinstance(c, ModelSummary))
    ]


class Bar(RichProgressBar):
    """Lightning's rich progress bar, in a terminal only (elsewhere EpochLines prints the epochs;
    a bar's last frame in a file says nothing more), without the logger's version (`v_num`),
    which names nothing a user looks for."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not sys.stdout.isatty():
            self.disable()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        return {k: v for k, v in super().get_metrics(trainer, pl_module).items() if k != "v_num"}


class NonFiniteLoss(UserError):
    """The training loss stopped being a finite number."""


class RunInterrupted(BaseException):  # noqa: N818 - like KeyboardInterrupt, not an Exception
    """A stop signal arrived; not an Exception, so nothing on the way swallows it."""

    def __init__(self, signal_name: str):
        super().__init__(f"stopped by {signal_name}")
        self.signal_name = signal_name
        self.resumable = True  # train() says False when no last.ckpt exists to continue from


class FiniteLossGuard(L.Callback):
    def __init__(self, check_every: int = 25):
        self.check_every = check_every
        self.losses: list[torch.Tensor] = []  # the losses since the last look, on the device
        self.steps: list[int] = []  # their optimizer steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        loss = loss.detach().reshape(
            -1
        )  # one per optimizer step this call made (module.steps_per_call)
        self.losses.append(loss)
        first = trainer.global_step - len(loss) + 1  # the optimizer step the first loss produced
        self.steps.extend(range(first, trainer.global_step + 1))
        if len(self.steps) >= self.check_every:
            self._check(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module):  # before the epoch's checkpoints are written
        self._check(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        self._check(trainer, pl_module)

    def _check(self, trainer, pl_module) -> None:
        steps, self.steps = self.steps, []
        losses, self.losses = self.losses, []
        if not steps:
            return
        finite = torch.isfinite(torch.cat(losses))
        if bool(finite.all()):  # the one host sync per check_every steps
            return
        step = steps[int((~finite).nonzero()[0])]
        optimizer = pl_module.hparams.optimizer
        raise NonFiniteLoss(
            f"The training loss became NaN or infinite at optimizer step {step} (epoch "
            f"{trainer.current_epoch}), so the run stopped. The usual cause is a learning rate too high "
            f"for this model and optimiser (optimizer.lr={optimizer.get('lr')}, "
            f"{optimizer['_target_'].rsplit('.', 1)[-1]}): lower it (e.g. by 10x), or add warm-up "
            f"(scheduler.warmup_steps) or weight decay. Checkpoints up to the last good epoch are kept."
        )


DATABASE_CODE = (
    "sqlalchemy.",
    "sqlite3",
    "mlflow.store.",
)  # modules whose frames hold a transaction


def in_a_database_write(frame) -> bool:
    """Whether the interrupted code is inside SQLAlchemy or MLflow's store (an MLflow or Optuna
    write). A RunInterrupted raised there (at a commit, for one) left the connection's transaction
    open, and with it sqlite's write lock, while the stop was recorded: the run's own KILLED could
    not be written (test_reliability.py::test_a_signal_during_a_store_write_waits_for_the_write)."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(DATABASE_CODE):
            return True
        frame = frame.f_back
    return False


class StopOnSignal(L.Callback):
    """Handlers installed while the MLflow run lives (tracking/run.py enters it); the old handlers
    come back afterwards."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, checkpoint_dir: Path):
        self.checkpoint_dir = Path(checkpoint_dir)
        self.received: str | None = None
        self.pending = False  # received during a database write: raised at the next batch
        self.saved: Path | None = None
        self._previous = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is not threading.main_thread():
            return self  # Python only lets the main thread handle signals
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.received:  # a second signal while shutting down: let the first finish
            return
        self.received = signal.Signals(signum).name
        if in_a_database_write(frame):  # cut short, it would keep sqlite's lock from our KILLED
            self.pending = True
            return
        raise RunInterrupted(self.received)

    def _raise_pending(self, *_) -> None:
        """The signal that arrived during a database write, at the next step, validation or test
        batch, or epoch end."""
        if self.pending:
            self.pending = False
            raise RunInterrupted(self.received)

    on_train_batch_start = on_validation_batch_start = on_test_batch_start = _raise_pending
    on_train_epoch_end = on_validation_end = _raise_pending

    def on_exception(self, trainer, pl_module, exception) -> None:
        if isinstance(exception, RunInterrupted) and trainer.global_step > 0:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            self.saved = self.checkpoint_dir / "interrupted.ckpt"
            trainer.save_checkpoint(self.saved)


class MovingAverage(EMAWeightAveraging):
    """Lightning's EMAWeightAveraging, except that outside fit the checkpoint's weights (the
    average) stay in the model. Lightning 2.6 restores callbacks for trainer.test(ckpt_path="best")
    too, and the stock callback, still holding its average from fit, would load the checkpoint's
    raw weights (`current_model_state`) back into the model: the test would measure those."""

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # resume=: the raw weights and the average
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


def moving_average(decay: float | None) -> MovingAverage | None:
    """callbacks.ema: the average for a decay in (0, 1), None when off. It validates on the
    average (so the best checkpoint is picked on it), saves it as the checkpoint's weights (test,
    the logged model, predict and serve use it) and keeps the raw weights and the average's state in
    the checkpoint for resume=."""
    return None if decay is None else MovingAverage(decay=float(decay))


def numpy_state_as_tensors() -> tuple:
    """np.random.get_state() with its key array as a tensor: checkpoints load with weights_only."""
    name, key, *rest = np.random.get_state()
    return (name, torch.from_numpy(key.copy()), *rest)


def python_state_as_tensors() -> tuple:
    """random.getstate() with its 625 numbers as one tensor: pickled as one object, not 625 (every
    checkpoint carries it)."""
    version, numbers, gauss_next = random.getstate()
    return (version, torch.tensor(numbers, dtype=torch.int64), gauss_next)


class RunState(L.Callback):
    """What every checkpoint carries besides the weights, so that a resumed run goes on as if it
    had never stopped: the MLflow run id, the training seconds so far (a resumed run's `time/fit_s`
    is the whole training, not its last leg) and the global random states (python, numpy, torch,
    CUDA: dropout then draws what it would have drawn). The batch order and augmentation come from
    their own per-epoch seed (data/datamodule.py). A leg counts up to its last checkpoint: the work
    a kill threw away after it was not needed for the result."""

    def __init__(self) -> None:
        self.run_id: str | None = None  # set once the MLflow run exists
        self.earlier_legs = 0.0  # seconds, from the checkpoint this leg resumed from
        self.leg_started = time.perf_counter()

    def seconds(self) -> float:
        return self.earlier_legs + time.perf_counter() - self.leg_started

    def on_fit_start(self, trainer, pl_module) -> None:
        self.leg_started = time.perf_counter()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["mlflow_run_id"] = self.run_id
        checkpoint["fit_seconds"] = self.seconds()
        checkpoint["random_states"] = {
            "python": python_state_as_tensors(),
            "numpy": numpy_state_as_tensors(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if trainer.state.fn != TrainerFn.FITTING:  # not the best checkpoint that test() loads
            return
        self.earlier_legs = float(checkpoint["fit_seconds"])
        states = checkpoint["random_states"]
        version, numbers, gauss_next = states["python"]
        random.setstate((version, tuple(numbers.tolist()), gauss_next))
        name, key, *rest = states["numpy"]
        np.random.set_state((name, key.numpy(), *rest))
        torch.set_rng_state(states["torch"])
        if torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])


class TrialPruned(UserError):  # noqa: N818 - Optuna's name for the same event
    """The pruner stopped this trial of a search: its validation accuracy was behind the study's."""


class PruneHopeless(L.Callback):
    """A trial of hparams_search=optuna (tracking/search.py): reports val/acc to its Optuna trial
    after every validation, and stops the run when the study's pruner says it is behind."""

    def __init__(self, trial: optuna.Trial, run_address: str):
        self.trial, self.run_address = trial, run_address

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.trial.set_user_attr("mlflow_run_id", trainer.logger.run_id)  # the dashboard shows both
        self.trial.set_user_attr(
            "mlflow_run", self.run_address.format(run_id=trainer.logger.run_id)
        )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or "val/acc" not in trainer.callback_metrics:
            return
        epochs, value = trainer.current_epoch + 1, float(trainer.callback_metrics["val/acc"])
        self.trial.report(value, epochs)  # step = epochs trained, as in MLflow; warm-up counts them
        if epochs < trainer.max_epochs and self.trial.should_prune():  # never the last: it is done
            raise TrialPruned(
                f"trial {self.trial.number} pruned after {epochs} epochs: val/acc {value:.4f} is "
                f"behind the study's earlier trials after as many epochs"
            )


def percent(value) -> str:
    return f"{100 * float(value):.2f}%"


EPOCH_LOG = logging.getLogger("fmnist_exp.epochs")


class EpochLines(L.Callback):
    """One line per epoch, after its validation: epoch, train and val loss and accuracy, seconds."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        bar = trainer.progress_bar_callback
        self.log_only = bar is not None and bar.is_enabled  # the bar shows them on the console

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        for split in ("train", "val"):
            if f"{split}/loss" in metrics:
                parts.append(f"{split} loss {float(metrics[f'{split}/loss']):.4f} "
                             f"acc {percent(metrics[f'{split}/acc'])}")  # fmt: skip
        parts.append(f"{time.perf_counter() - self.started:.1f} s")
        EPOCH_LOG.info("  ".join(parts), extra={"log_only": self.log_only})
