"""Runs that survive being killed: a config hash per run, resume=<run_id>|last, skip_finished=true.

Every run is tagged `config_hash`: a hash of its resolved config without the keys that say where or
how to run it (paths, MLflow location, resume switches, progress bars), numbers by value (an
override `=0` for a float key is the config's 0.0), together with the digest of the data files it
reads (tag `data_digest`), so the same overrides on other data are another experiment. Its
checkpoints hold the MLflow run id and the training seconds so far. `resume=` continues a run from
`last.ckpt` (written at the end of every epoch) into the same MLflow run, with its own saved config
(`reconcile`); `skip_finished=true` (for re-running a killed sweep) skips a job whose identical
config already has a FINISHED run and resumes one that has an unfinished run.
"""

import copy
import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from fmnist_exp.errors import UserError
from fmnist_exp.tracking import claims, sweep

NOT_PART_OF_THE_EXPERIMENT = (  # where or how a run goes, or what it shows: not what it trains
    "paths",
    "logger",
    "resume",
    "skip_finished",
    "search",  # which trial of which study a job is (hparams_search=optuna)
    "module.steps_per_call",  # how many optimizer steps per call: the same updates either way
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.default_root_dir",
    "callbacks.progress_bar",
    "callbacks.model_summary",
    "callbacks.epoch_lines",
    "callbacks.model_checkpoint.dirpath",  # the run's own folder
)


def experiment_part(plain: dict) -> dict:
    """A resolved config (plain containers) without NOT_PART_OF_THE_EXPERIMENT: what makes two
    runs the same experiment. config_hash hashes it; the report's seed fold compares it. Works on
    a copy."""
    plain = copy.deepcopy(plain)
    for key in NOT_PART_OF_THE_EXPERIMENT:
        *parents, last = key.split(".")
        node = plain
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return plain


def integral_floats_as_ints(value):
    """0.0 -> 0, 1e-3 stays: `data.augment.erase_prob=0` on the command line (an int) is the same
    experiment as the config's 0.0. Bools stay bools."""
    if isinstance(value, dict):
        return {k: integral_floats_as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral_floats_as_ints(v) for v in value]
    return int(value) if isinstance(value, float) and value.is_integer() else value


def hash_of(plain: dict) -> str:
    """The config_hash of an experiment_part: numbers by value (0 and 0.0 hash alike)."""
    text = json.dumps(integral_floats_as_ints(plain), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_hash(cfg: DictConfig, data_digest: str) -> str:
    """The run's identity: its experiment_part and the digest of the data files it reads
    (dataset.fingerprint), so the same overrides on another folder are another experiment."""
    return hash_of(experiment_part(OmegaConf.to_container(cfg, resolve=True)) | {
        "data_digest": data_digest
    })  # fmt: skip


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


def same_config_runs(tracking_uri: str, experiment: str, digest: str) -> list[Previous]:
    """Runs tagged with this config hash, newest first."""
    client = mlflow.MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs(
        [found.experiment_id],
        f"tags.config_hash = '{digest}'",
        order_by=["attributes.start_time DESC"],
        max_results=50,
    )
    return [_previous(r) for r in runs]


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


def choose(cfg: DictConfig, digest: str) -> tuple[str, Previous | None]:
    """("new" | "resume" | "skip", the previous run), from cfg.resume and cfg.skip_finished."""
    uri, resume, skip = cfg.logger.tracking_uri, cfg.resume, cfg.skip_finished
    if not resume and not skip:
        return "new", None
    if resume and resume != "last":
        return "resume", resumable(find_run(uri, str(resume)), f"resume={resume}")
    runs = same_config_runs(uri, cfg.logger.experiment, digest)
    if skip and (done := [r for r in runs if r.status == "FINISHED"]):
        return "skip", done[0]
    unfinished = [r for r in runs if r.status != "FINISHED" and r.last_checkpoint.is_file()]
    if resume == "last":
        if not unfinished:
            raise UserError(
                f"resume=last: no unfinished run with a last.ckpt has this config (config_hash "
                f"{digest}) in experiment {cfg.logger.experiment!r}. Pass the same overrides as the "
                f"interrupted command, or resume=<run_id>."
            )
        return "resume", unfinished[0]
    if skip and unfinished:
        return "resume", unfinished[0]
    return "new", None


def prepare(cfg: DictConfig, data_digest: str) -> tuple[DictConfig, Previous | None]:
    """What this command continues: (the config to train, the previous run or None). A run to
    resume brings its own saved config and folder; a FINISHED one (skip_finished=true) is returned
    as is, for train() to report. Claims (claims.py) keep two processes out of one run.
    data_digest: the digest of the data files this config reads (part of the config hash)."""
    digest = config_hash(cfg, data_digest)
    claims.config(  # skip_finished waits for a process training this config, then decides
        claims.claims_folder(cfg.logger.tracking_uri, Path(cfg.paths.root)), digest,
        exclusive=cfg.skip_finished,
    )  # fmt: skip
    action, previous = choose(cfg, digest)
    if action == "new":
        claims.folder(Path(cfg.paths.output_dir))
        with open_dict(cfg):
            cfg.logger.tags.config_hash, cfg.logger.tags.data_digest = digest, data_digest
        return cfg, None
    if action == "skip":
        return cfg, previous
    claims.folder(previous.output_dir, previous.run_id)  # never two writers in one run
    saved = previous.output_dir / "config.yaml"
    if not saved.is_file():
        raise UserError(
            f"resume: run {previous.run_id} has no {saved}; start it again without resume=."
        )
    run_cfg = OmegaConf.create(  # the run's own resolved config, on the store we found it in
        reconcile(OmegaConf.to_container(cfg, resolve=True), OmegaConf.to_container(
            OmegaConf.load(saved)), previous.run_id, command_overrides())
    )  # fmt: skip
    run_cfg.logger.tracking_uri, run_cfg.resume = cfg.logger.tracking_uri, previous.run_id
    return run_cfg, previous


# Settings a resumed run takes from the command rather than from its saved config: how it shows,
# and how many optimizer steps it makes per call (the same updates either way).
APPLIED_ON_RESUME = (
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "callbacks.progress_bar",
    "callbacks.model_summary",
    "callbacks.epoch_lines",
    "module.steps_per_call",
)
WHERE_IT_RUNS = ("resume", "skip_finished", "paths", "hydra", "logger.tracking_uri")
_MISSING = object()


def command_overrides() -> list[str]:
    """The overrides this command was given (none when the config was not composed by Hydra)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _select(plain: dict, key: str):
    node = plain
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _assign(plain: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        plain = plain.setdefault(part, {})
    plain[last] = value


def _fill_missing(saved: dict, command: dict, prefix: str = "") -> list[str]:
    """Keys this version reads that the saved config lacks (a setting added since the run
    started): taken from the command's config, in place; returns their paths."""
    added = []
    for key, value in command.items():
        path = f"{prefix}{key}"
        if path in ("hydra", "search"):  # Hydra's own; which search trial a job is
            continue
        if key not in saved:
            saved[key] = copy.deepcopy(value)
            added.append(path)
        elif isinstance(value, dict) and isinstance(saved[key], dict):
            added += _fill_missing(saved[key], value, f"{path}.")
    return added


def reconcile(command: dict, saved: dict, run_id: str, overrides: list[str]) -> dict:
    """The config a resumed run continues with: its saved one, plus any key added to fmnist-exp
    since (at the command's value, said once) and the command's APPLIED_ON_RESUME settings. Any
    other override that differs from the saved config is refused: it would be silently ignored."""
    if added := _fill_missing(saved, command):
        values = ", ".join(f"{k}={_select(saved, k)}" for k in added)
        print(f"resume: run {run_id}'s saved config has no {', '.join(added)} (added since it "
              f"started); it continues with {values}.")  # fmt: skip
    differ, experiment = [], (experiment_part(command), experiment_part(saved))
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group.replace("/", ".")
        if any(key == w or key.startswith(f"{w}.") for w in WHERE_IT_RUNS):
            continue
        if any(key == a or key.startswith(f"{a}.") for a in APPLIED_ON_RESUME):
            _assign(saved, key, copy.deepcopy(_select(command, key)))
            continue
        ours, theirs = experiment
        if _select(ours, key) is _MISSING and _select(theirs, key) is _MISSING:
            ours, theirs = command, saved  # outside the experiment: logger.log_model, ...
        mine, its = (integral_floats_as_ints(_select(c, key)) for c in (ours, theirs))
        if mine != its:
            differ.append((override.input_line, key, its))
    if differ:
        theirs = "; ".join(
            f"{line} (the run has {key}={'(none)' if v is _MISSING else json.dumps(v, default=str)})"
            for line, key, v in differ
        )
        raise UserError(
            f"resume: run {run_id} continues with its own saved config, so these overrides would "
            f"be ignored: {theirs}. Resume with the same command without them, or start a new run "
            f"with them (drop resume=)."
        )
    return saved


def skipped(cfg: DictConfig, previous: Previous) -> dict[str, float]:
    """skip_finished=true and this exact config already FINISHED: its results, nothing trained."""
    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    metrics = client.get_run(previous.run_id).data.metrics
    if parent := sweep.job_tags().get("mlflow.parentRunId"):  # the sweep's summary counts it
        client.set_tag(previous.run_id, sweep.REUSED_TAG.format(parent=parent), "true")
    print(f"skipped: this config already FINISHED as run {previous.run_id} (skip_finished=true)")
    return {k: metrics[k] for k in ("val/acc_best", "test/acc", "epochs") if k in metrics}
