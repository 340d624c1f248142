"""Sweeps in MLflow: one parent run per `--multirun`, one child run per job.

The Hydra callback creates the tracking store, the experiment and the parent run once, before any
job starts (on a fresh sqlite file, parallel jobs otherwise race on schema creation), and leaves the
parent's id in the sweep folder, where every job (local process, joblib worker, SLURM node) finds it.
At the end it sums the sweep up on the parent run, lists failed jobs, and exits non-zero if any.
"""

import contextlib
import logging
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

import mlflow
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ValueType
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from fmnist_exp import checks
from fmnist_exp.errors import ConfigError, UserError, one_paragraph, printable
from fmnist_exp.tracking import same_data, search, store

log = logging.getLogger(__name__)
PARENT_FILE = ".mlflow_parent_run_id"  # in the sweep folder
# On a FINISHED run that a skip_finished=true sweep took as one job's result:
REUSED_TAG = "sweep.reused_in.{parent}"


def child_filter(parent_id: str) -> str:
    """The runs this sweep trained (its children)."""
    return f"tags.`mlflow.parentRunId` = '{parent_id}'"


def reused_filter(parent_id: str) -> str:
    """The FINISHED runs of earlier sweeps whose results this one reused (skip_finished=true).
    One tag per sweep, so a run reused by several sweeps counts in each of them."""
    return f"tags.`{REUSED_TAG.format(parent=parent_id)}` = 'true'"


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_tags() -> dict[str, str]:
    """Tags that nest this job's run under its sweep's parent run (empty outside a sweep)."""
    if not in_sweep():
        return {}
    hydra_cfg = HydraConfig.get()
    parent_file = Path(hydra_cfg.sweep.dir) / PARENT_FILE
    tags = {"sweep.job_num": str(hydra_cfg.job.num), "sweep.dir": str(hydra_cfg.sweep.dir)}
    if parent_file.is_file():  # absent only when the callback was taken out of the config
        tags["mlflow.parentRunId"] = parent_file.read_text().strip()
    return tags


def record_failed_job(cfg: DictConfig, exc: BaseException) -> None:
    """A failed job must not sink the sweep: log it, make sure MLflow shows a FAILED run for it."""
    message = printable(f"{type(exc).__name__}: {' '.join(str(exc).split())}")
    log.error("job failed: %s\n%s", message, "".join(traceback.format_exception(exc)))
    print(f"error: job {HydraConfig.get().job.num} failed: {message}", file=sys.stderr)
    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    tags = job_tags()
    experiment = client.get_experiment_by_name(cfg.logger.experiment)
    if experiment is None or "mlflow.parentRunId" not in tags:
        return
    mine = client.search_runs(
        [experiment.experiment_id],
        f"tags.`mlflow.parentRunId` = '{tags['mlflow.parentRunId']}' "
        f"and tags.`sweep.job_num` = '{tags['sweep.job_num']}'",
    )
    if mine:  # train() made the run and already marked it FAILED
        return
    overrides = " ".join(HydraConfig.get().overrides.task)  # failed before its run existed
    run = client.create_run(
        experiment.experiment_id,
        run_name=overrides or "job",
        tags={**tags, "overrides": overrides, "error": message[:5000]},
    )
    client.set_terminated(run.info.run_id, "FAILED")


def processes_under(root: int) -> list[int]:
    """Every process below `root` (Linux /proc; elsewhere none): a joblib or submitit_local
    launcher's workers and whatever they started."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:  # the process name, in parentheses, may hold spaces: fields start after its ")"
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopTheSweep:
    """In the sweep's own process: SIGTERM / SIGINT go on to the job processes (each job then does
    what a single run does: checkpoint, run KILLED), and once no job's run is RUNNING (60 s at
    most) the parent run is marked KILLED and the sweep exits 128+signal, saying how to finish it.
    Without it, `kill <sweep pid>` left joblib's workers training on as orphans and the parent
    RUNNING. Jobs that run in this process (the basic launcher) catch the signal themselves, and
    __main__ calls stopped() for them."""

    current: "StopTheSweep | None" = None  # set in the sweep's own process only

    def __init__(self, uri: str, parent_id: str):
        self.uri, self.parent_id, self.pid = uri, parent_id, os.getpid()
        self.previous = {}
        if threading.current_thread() is threading.main_thread():  # only it may handle signals
            self.previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        StopTheSweep.current = self

    def close(self) -> None:
        """The sweep ended: the handlers from before it come back."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        StopTheSweep.current = None

    def _handle(self, signum, frame) -> None:
        signal.signal(signum, signal.SIG_IGN)  # one shutdown; a second Ctrl+C must not cut it short
        for pid in processes_under(self.pid):
            with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                os.kill(pid, signum)
        client = mlflow.MlflowClient(self.uri)
        experiment = client.get_run(self.parent_id).info.experiment_id
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and client.search_runs(
            [experiment], f"{child_filter(self.parent_id)} and attributes.status = 'RUNNING'"
        ):
            time.sleep(0.5)
        self.stopped(signal.Signals(signum).name)
        sys.exit(128 + signum)

    def stopped(self, signal_name: str) -> None:
        client = mlflow.MlflowClient(self.uri)
        client.set_tag(self.parent_id, "error", f"sweep stopped by {signal_name}")
        client.set_terminated(self.parent_id, "KILLED")
        print(
            f"interrupted: sweep {self.parent_id} stopped by {signal_name}; its parent run is "
            f"KILLED, and jobs under way kept their checkpoints. Finish it with the same command "
            f"and skip_finished=true: finished jobs are reused, stopped ones resumed.",
            file=sys.stderr,
        )


def is_search(config: DictConfig) -> bool:
    """hparams_search=optuna: our Optuna sweeper runs this sweep (tracking/search.py)."""
    return str(config.hydra.sweeper.get("_target_", "")).endswith(".OptunaSearch")


def check_sweep_ranges(overrides: list[str]) -> None:
    """A sweep over an empty range (`seed=range(1,1)`) launches no job and would record an empty
    sweep as FINISHED: refuse it before anything is made."""
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.value_type == ValueType.RANGE_SWEEP and not list(
            override.sweep_string_iterator()
        ):
            raise ConfigError(
                f"{override.input_line}: an empty range, so the sweep would run no job. range(a, b) "
                f"stops before b: e.g. {override.key_or_group}=range(1,4) gives 1, 2, 3."
            )


class MLflowSweep(Callback):
    """Hydra callback (conf/train.yaml: hydra.callbacks.mlflow_sweep)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        uri, sweep_dir = config.logger.tracking_uri, Path(config.hydra.sweep.dir)
        overrides, options = list(config.hydra.overrides.task), config.hydra.sweeper
        try:
            check_sweep_ranges(overrides)
            checks.check_added_keys(overrides)
            checks.check_validates(config)
            if is_search(config):
                ready = search.prepare(options, config, overrides)
                if (done := search.finished_trials(ready["study"])) >= options.n_trials:
                    print(f"study {options.study_name!r} in {ready['storage']} already holds {done} "
                          f"finished trials (hydra.sweeper.n_trials={options.n_trials}): nothing to "
                          f"run, no sweep recorded. Raise hydra.sweeper.n_trials to search on, or "
                          f"start another study (hydra.sweeper.study_name=<new name>).")  # fmt: skip
                    sys.exit(0)
            experiment_id = store.ensure_store(uri, config.logger.experiment)
        except UserError as exc:  # before any job: one paragraph, exit 2
            print(f"error: {one_paragraph(exc)}", file=sys.stderr)
            sys.exit(2)
        overrides = " ".join(config.hydra.overrides.task)
        run = mlflow.MlflowClient(uri).create_run(
            experiment_id,
            run_name=f"sweep {overrides}".strip(),
            tags={"sweep": "parent", "sweep.dir": str(sweep_dir), "overrides": overrides,
                  "command": " ".join(["python -m fmnist_exp", *sys.argv[1:]])},
        )  # fmt: skip
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_FILE).write_text(run.info.run_id)
        log.info("sweep parent run %s in %s", run.info.run_id, uri)
        StopTheSweep(uri, run.info.run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if StopTheSweep.current is not None:
            StopTheSweep.current.close()
        uri, sweep_dir = config.logger.tracking_uri, Path(config.hydra.sweep.dir)
        parent_id = (sweep_dir / PARENT_FILE).read_text().strip()
        client = mlflow.MlflowClient(uri)
        parent = client.get_run(parent_id)
        children = client.search_runs([parent.info.experiment_id], child_filter(parent_id))
        pruned = [r for r in children if r.data.tags.get("search.state") == "PRUNED"]
        failed = [r for r in children if r.info.status != "FINISHED" and r not in pruned]
        finished = [r for r in children if r.info.status == "FINISHED"]
        skipped = client.search_runs([parent.info.experiment_id], reused_filter(parent_id))
        partial = [r for r in finished + skipped if r.data.tags.get("partial") == "true"]
        summary = {
            "sweep/jobs": len(children) + len(skipped),
            "sweep/finished": len(finished),
            "sweep/failed": len(failed),
            "sweep/pruned": len(pruned),
            "sweep/skipped": len(skipped),
            "sweep/partial": len(partial),
        }
        # a reused run is this sweep's result for its job; a partial run is nobody's result
        results = [r for r in finished + skipped if r.data.tags.get("partial") != "true"]
        data = same_data.groups(same_data.tags_of(r.data.tags) for r in results)
        if len(data) > 1:  # runs on different data are not ranked against each other
            print(f"the jobs read {len(data)} different data ({'; '.join(map(str, data))}): no "
                  f"best across them; the report compares one at a time (dataset=...)")  # fmt: skip
            results = []
        if results:
            best = max(results, key=lambda r: r.data.metrics.get("val/acc_best", float("-inf")))
            summary |= {
                "best/val_acc": best.data.metrics.get("val/acc_best", float("nan")),
                "best/test_acc": best.data.metrics.get("test/acc", float("nan")),
                "best/params": best.data.metrics.get("model/params_total", float("nan")),
            }
            client.set_tag(parent_id, "best_run_id", best.info.run_id)
            client.set_tag(parent_id, "best_overrides", best.data.tags.get("overrides", ""))
        if is_search(config):  # the study and its best trial (over every invocation)
            tags, metrics = search.study_outcome(config.hydra.sweeper, config)
            for key, value in tags.items():
                client.set_tag(parent_id, key, value)
            summary |= metrics
        for key, value in summary.items():
            client.log_metric(parent_id, key, value)
        client.set_terminated(parent_id, "FAILED" if failed else "FINISHED")
        counts = {"trained": len(finished), "failed": len(failed),
                  "pruned (hparams_search: behind the study, stopped early)": len(pruned),
                  "reused (FINISHED before; skip_finished=true)": len(skipped),
                  "partial (tested on part of the test split: not ranked)": len(partial)}  # fmt: skip
        print(
            f"sweep {parent_id}: {summary['sweep/jobs']} jobs: "
            + ", ".join(f"{n} {what}" for what, n in counts.items() if n or what == "trained")
            + (
                f"; best val/acc {summary['best/val_acc']:.4f} ({best.data.tags.get('overrides')})"
                if results
                else ""
            )
            + f"\nreport: python -m fmnist_exp.report sweep={parent_id}"
            + f"\ncompare runs: {store.compare_where(uri)}"
        )
        if failed:
            print(f"{len(failed)} job(s) failed:", file=sys.stderr)
            for run in sorted(failed, key=lambda r: int(r.data.tags.get("sweep.job_num", -1))):
                tags = run.data.tags
                print(f"  job {tags.get('sweep.job_num', '?')} [{tags.get('overrides', '')}]: "
                      f"{printable(tags.get('error', run.info.status))}", file=sys.stderr)  # fmt: skip
            sys.exit(1)
