"""Guarded training: a diverging loss and a stop signal both end a run cleanly, never silently.

- FiniteLossGuard: each step's training loss is copied into a small buffer on the device (one copy,
  no host sync); every `check_every` steps, before each validation (so before the epoch's
  checkpoints) and at the epoch's end the guard looks at the buffer once, and stops the run with
  NonFiniteLoss naming the first step whose loss was NaN or inf and the likely cause.
- StopOnSignal: SIGTERM or SIGINT (a cluster's pre-emption, `kill`, Ctrl+C) raises RunInterrupted
  where the program is; a checkpoint of the moment is saved (interrupted.ckpt) and train() marks the
  run KILLED. last.ckpt (end of the last whole epoch) is what `resume=` continues from.
"""

import signal
import threading
from pathlib import Path

import lightning as L
import torch

from fmnist_exp.errors import UserError


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
        self.losses: torch.Tensor | None = None  # the losses since the last look, on the device
        self.steps: list[int] = []  # their optimizer steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if self.losses is None:
            self.losses = torch.empty(self.check_every, device=loss.device)
        self.losses[len(self.steps)] = loss.detach()
        self.steps.append(trainer.global_step)  # the optimizer step this loss produced
        if len(self.steps) == self.check_every:
            self._check(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module):  # before the epoch's checkpoints are written
        self._check(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        self._check(trainer, pl_module)

    def _check(self, trainer, pl_module) -> None:
        steps, self.steps = self.steps, []
        if not steps:
            return
        finite = torch.isfinite(self.losses[: len(steps)])
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


class StopOnSignal(L.Callback):
    """Handlers installed by __enter__ for the life of the MLflow run (train() calls __enter__ when
    the run exists and __exit__ in its `finally`); the old handlers come back afterwards."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, checkpoint_dir: Path):
        self.checkpoint_dir = Path(checkpoint_dir)
        self.received: str | None = None
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
        raise RunInterrupted(self.received)

    def on_exception(self, trainer, pl_module, exception) -> None:
        if isinstance(exception, RunInterrupted) and trainer.global_step > 0:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            self.saved = self.checkpoint_dir / "interrupted.ckpt"
            trainer.save_checkpoint(self.saved)
