"""`python -m fmnist_exp [overrides]`: Hydra composes conf/train.yaml, train() runs it.

User errors (a bad config value, missing or corrupt data, no GPU for accelerator=gpu) end here as
one paragraph and exit code 2; anything else is a bug and keeps its traceback. In a --multirun
sweep a failed job is recorded and the sweep goes on; the sweep exits non-zero at the end.
"""

import logging
import signal
import sys
import warnings

import hydra
from hydra.errors import HydraException
from omegaconf import DictConfig

from fmnist_exp import command_line
from fmnist_exp.errors import one_paragraph, user_error
from fmnist_exp.paths import config_dir, register_resolvers

register_resolvers()
for noise in (
    r".*LeafSpec.*",
    r".*smaller than the logging interval.*",
):  # Lightning's, not actionable
    warnings.filterwarnings("ignore", message=noise)


_jobs_started = 0  # a Hydra error before the first job is a refused command line


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def run(cfg: DictConfig) -> float:
    """One job; returns the best validation accuracy: the objective for Hydra sweepers."""
    global _jobs_started
    _jobs_started += 1
    # heavy imports only once Hydra has parsed the command line
    from fmnist_exp.tracking import search, sweep
    from fmnist_exp.train import train
    from fmnist_exp.training.callbacks import RunInterrupted, TrialPruned

    register_resolvers()  # again: joblib and submitit workers unpickle this function without the module
    # Lightning gives its logger a console handler when first imported (just above); Hydra's root
    # handlers (the console and train.log) already print its records, so each line would show twice.
    if logging.getLogger().handlers:
        logging.getLogger("lightning").handlers.clear()
    try:
        return train(cfg).get("val/acc_best", float("nan"))  # none: never validated
    except RunInterrupted as stopped:
        then = (
            "Continue it with resume=last (same overrides) or resume=<run_id>."
            if stopped.resumable
            else "It stopped before its first epoch ended, so there is nothing to resume: run the "
            "same command again."
        )
        print(f"interrupted: {stopped}; the run is KILLED with its checkpoints kept. {then}",
              file=sys.stderr)  # fmt: skip
        if (whole_sweep := sweep.StopTheSweep.current) is not None:  # a job in the sweep's process
            whole_sweep.stopped(stopped.signal_name)
        sys.exit(128 + getattr(signal, stopped.signal_name, signal.SIGINT))
    except TrialPruned as pruned:  # run KILLED and tagged; the sweeper tells the study
        print(f"pruned: {pruned}")
        return search.PRUNED
    except Exception as exc:
        if sweep.in_sweep():
            sweep.record_failed_job(cfg, exc)
            return float("nan")  # a failed trial for sweepers such as Optuna
        if (cause := user_error(exc)) is None:
            raise
        print(f"error: {one_paragraph(cause)}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """`python -m fmnist_exp` (and the `fmnist-exp` script). `--help` lists the groups and the
    settings with their comments; a command line Hydra refuses (an unknown key, a missing option)
    is bad input, one paragraph naming the closest real key, exit 2, as in every app (app.py)."""
    global _jobs_started
    _jobs_started = 0
    args = sys.argv[1:]
    try:
        if {"--help", "-h"} & set(args):  # with group choices: the settings they compose
            print(command_line.training_help(args))
            return
        with command_line.hydra_errors_raised():
            run()
    except HydraException as exc:
        if _jobs_started:
            raise
        print(f"error: {one_paragraph(command_line.refused(exc, args, 'train'))}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
