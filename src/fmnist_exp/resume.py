"""Runs that survive being killed: a config hash per run, resume=<run_id>|last, skip_finished=true.

Every run is tagged `config_hash`: a hash of its resolved config without the keys that say where or
how to run it (paths, MLflow location, resume switches, progress bars), numbers by value (an
override `=0` for a float key is the config's 0.0). Its checkpoints hold the
MLflow run id and the training seconds so far. `resume=` continues a run from `last.ckpt` (written
at the end of every epoch) into the same MLflow run; `skip_finished=true` (for re-running a killed
sweep) skips a job whose identical config already has a FINISHED run and resumes one that has an
unfinished run.
"""

import copy
import hashlib
import json
import random
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import mlflow
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig, OmegaConf

from fmnist_exp.errors import ConfigError, UserError

NOT_PART_OF_THE_EXPERIMENT = ("paths", "mlflow", "resume", "skip_finished")
TRAINER_COSMETICS = ("enable_progress_bar", "enable_model_summary", "default_root_dir")
EPOCH_METRICS = ("train/loss", "train/acc", "val/loss", "val/acc")
# Keys added after runs were recorded, with the value that trains exactly as before the key existed:
# at that value they stay out of the hash, so older FINISHED runs still count for skip_finished.
ADDED_LATER = {("model", "feature_dropout"): 0.0}
# Blocks added later: out of the hash while switched off (their switch empty or null).
OFF_WHEN_EMPTY = {"distill": "teachers", "ema": "decay"}


def experiment_part(plain: dict) -> dict:
    """A resolved config (plain containers) without what says where or how to run it, and without
    keys added later while they are at their neutral value: what makes two runs the same experiment.
    config_hash hashes it; the report's seed fold compares it. Works on a copy."""
    plain = copy.deepcopy(plain)
    for key in NOT_PART_OF_THE_EXPERIMENT:
        plain.pop(key, None)
    for key in TRAINER_COSMETICS:
        plain.get("trainer", {}).pop(key, None)
    for (group, key), neutral in ADDED_LATER.items():
        if group in plain and plain[group].get(key, neutral) == neutral:
            plain[group].pop(key, None)
    for block, switch in OFF_WHEN_EMPTY.items():
        if not plain.get(block, {}).get(switch):
            plain.pop(block, None)
    return plain


def integral_floats_as_ints(value):
    """0.0 -> 0, 1e-3 stays: `data.augment.erase_prob=0` on the command line (an int) is the same
    experiment as the config's 0.0. Bools stay bools."""
    if isinstance(value, dict):
        return {k: integral_floats_as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral_floats_as_ints(v) for v in value]
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _digest(plain: dict) -> str:
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


def hash_of(plain: dict) -> str:
    """The config_hash of an experiment_part: numbers by value (0 and 0.0 hash alike)."""
    return _digest(integral_floats_as_ints(plain))


def config_hashes(cfg: DictConfig) -> tuple[str, str]:
    """(config_hash, the hash the same config had before numbers were hashed by value): runs tagged
    before 2026-11-25 carry the second, so resume and skip_finished look for both."""
    plain = experiment_part(OmegaConf.to_container(cfg, resolve=True))
    return hash_of(plain), _digest(plain)


def config_hash(cfg: DictConfig) -> str:
    return config_hashes(cfg)[0]


def readable(path: Path) -> bool:
    """A whole checkpoint file: torch.save writes a zip archive, and a truncated one (a full disk,
    a killed copy) fails its central directory or a member's CRC."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError):
        return False


def last_checkpoint(output_dir: Path) -> Path:
    """What resume= continues from: ModelCheckpoint's save_last file in the run's folder, or, when
    that one is missing or damaged, the newest epoch checkpoint beside it that reads whole.
    (Checkpoints are replaced atomically, see checkpoint_io.py; this covers files damaged otherwise.)
    Returns last.ckpt's path when nothing there reads, so the caller's message names it."""
    folder = Path(output_dir) / "checkpoints"
    last = folder / "last.ckpt"
    if readable(last):
        return last
    epochs = sorted(folder.glob("epoch*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    return next((p for p in epochs if readable(p)), last)


@dataclass
class Previous:
    """A run to continue (or, when finished, to skip)."""

    run_id: str
    status: str
    output_dir: Path

    @property
    def last_checkpoint(self) -> Path:
        return last_checkpoint(self.output_dir)


def _previous(run) -> Previous:
    return Previous(run.info.run_id, run.info.status, Path(run.data.params.get("output_dir", "")))


def find_run(tracking_uri: str, run_id: str) -> Previous:
    try:
        run = mlflow.MlflowClient(tracking_uri).get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        raise UserError(
            f"resume={run_id}: no such run in {tracking_uri}. Copy the id from the MLflow UI or the "
            f"run's summary line, or use resume=last."
        ) from exc
    return _previous(run)


def same_config_runs(
    tracking_uri: str, experiment: str, digests: tuple[str, ...]
) -> list[Previous]:
    """Runs tagged with any of these config hashes, newest first."""
    client = mlflow.MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = {
        run.info.run_id: run
        for digest in dict.fromkeys(digests)  # MLflow's filter has no IN for tags: one search each
        for run in client.search_runs(
            [found.experiment_id],
            f"tags.config_hash = '{digest}'",
            order_by=["attributes.start_time DESC"],
            max_results=50,
        )
    }
    newest_first = sorted(runs.values(), key=lambda r: r.info.start_time, reverse=True)
    return [_previous(r) for r in newest_first]


def resumable(previous: Previous, key: str) -> Previous:
    """Check that `previous` can be continued: unfinished, with a last.ckpt on disk."""
    if previous.status == "FINISHED":
        raise UserError(
            f"{key}: run {previous.run_id} already FINISHED; there is nothing to resume. Start a new "
            f"run without {key.split('=')[0]}=, or pass skip_finished=true to skip finished configs."
        )
    if previous.last_checkpoint.is_file() and not readable(previous.last_checkpoint):
        raise UserError(
            f"{key}: run {previous.run_id}'s {previous.last_checkpoint} is damaged (truncated or "
            f"corrupt) and no epoch checkpoint beside it reads whole; it was left as it is. Start "
            f"the run again without resume=."
        )
    if not previous.last_checkpoint.is_file():
        raise UserError(
            f"{key}: run {previous.run_id} has no {previous.last_checkpoint} (it stopped before its "
            f"first epoch ended, or its output folder moved). Start it again without resume=."
        )
    return previous


def choose(cfg: DictConfig, digests: tuple[str, str]) -> tuple[str, Previous | None]:
    """("new" | "resume" | "skip", the previous run), from cfg.resume and cfg.skip_finished;
    `digests` as config_hashes gives them."""
    uri, resume, skip = cfg.mlflow.tracking_uri, cfg.get("resume"), cfg.get("skip_finished", False)
    # a typo such as `skip_finished=flase` is a non-empty string, so it would count as true
    if not isinstance(skip, bool):
        raise ConfigError(
            f"skip_finished={skip}: must be true or false. Pass skip_finished=true to skip configs "
            f"that already FINISHED (and resume unfinished ones), or leave it out."
        )
    if not resume and not skip:
        return "new", None
    if resume and resume != "last":
        return "resume", resumable(find_run(uri, str(resume)), f"resume={resume}")
    runs = same_config_runs(uri, cfg.mlflow.experiment, digests)
    if skip and (done := [r for r in runs if r.status == "FINISHED"]):
        return "skip", done[0]
    unfinished = [r for r in runs if r.status != "FINISHED" and r.last_checkpoint.is_file()]
    if resume == "last":
        if not unfinished:
            raise UserError(
                f"resume=last: no unfinished run with a last.ckpt has this config (config_hash "
                f"{digests[0]}) in experiment {cfg.mlflow.experiment!r}. Pass the same overrides as the "
                f"interrupted command, or resume=<run_id>."
            )
        return "resume", unfinished[0]
    if skip and unfinished:
        return "resume", unfinished[0]
    return "new", None


def epoch_history(tracking_uri: str, run_id: str) -> list[dict[str, float]]:
    """The per-epoch metrics already logged, as EpochHistory keeps them (for the curves plot)."""
    client = mlflow.MlflowClient(tracking_uri)
    by_step: dict[int, dict[str, float]] = {}
    for key in EPOCH_METRICS:
        for m in client.get_metric_history(run_id, key):
            by_step.setdefault(m.step, {})[key] = m.value
    return [by_step[s] for s in sorted(by_step)]


class FitClock(L.Callback):
    """Seconds of training over every leg of a run. Each checkpoint stores the seconds so far
    (`checkpoint["fit_seconds"]`) and a resumed run counts on from there, so `time/fit_s` of a
    resumed run is the whole training, not its last leg. A leg counts up to its last checkpoint:
    the work a kill threw away after it was not needed for the result."""

    def __init__(self) -> None:
        self.earlier_legs = 0.0  # from the checkpoint this leg resumed from
        self.leg_started = time.perf_counter()

    def on_fit_start(self, trainer, pl_module) -> None:
        self.leg_started = time.perf_counter()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # not the best checkpoint that test() loads
            self.earlier_legs = float(checkpoint.get("fit_seconds", 0.0))  # 0: an older checkpoint

    def seconds(self) -> float:
        return self.earlier_legs + time.perf_counter() - self.leg_started

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["fit_seconds"] = self.seconds()


def numpy_state_as_tensors() -> tuple:
    """np.random.get_state() with its key array as a tensor: checkpoints load with weights_only."""
    name, key, *rest = np.random.get_state()
    return (name, torch.from_numpy(key.copy()), *rest)


class RandomStateInCheckpoints(L.Callback):
    """The global random states (python, numpy, torch, CUDA) in every checkpoint, put back when a
    run resumes from it: dropout then draws what it would have drawn had the run never stopped.
    (The batch order and augmentation come from their own per-epoch seed: datamodule.py.)"""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["random_states"] = {
            "python": random.getstate(),
            "numpy": numpy_state_as_tensors(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        states = checkpoint.get("random_states")  # none in checkpoints from before 2026-11-25
        if trainer.state.fn != TrainerFn.FITTING or states is None:
            return
        random.setstate(states["python"])
        name, key, *rest = states["numpy"]
        np.random.set_state((name, key.numpy(), *rest))
        torch.set_rng_state(states["torch"])
        if torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])


class RunIdInCheckpoints(L.Callback):
    """Writes the MLflow run id into every checkpoint (`checkpoint["mlflow_run_id"]`)."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["mlflow_run_id"] = self.run_id
