"""hparams_search=optuna: a Hydra sweeper of our own on current Optuna, with pruning and a study that
persists in a database.

The sweeper (`Search`, named `OptunaSearch` in conf/hydra/sweeper/optuna.yaml) reads the search space in Hydra's sweep
syntax (`choice(32, 64)`, `interval(0.0, 0.2)`, `tag(log, interval(1e-4, 1e-2))`, `range(3, 8)`),
opens the study in its storage (by default `optuna.db` beside the tracking store) and continues it
when it exists: trial numbers go on and the sampler sees every earlier trial. It asks the study for
`n_jobs` trials at a time, launches them through Hydra's launcher (basic, joblib, submitit) as
ordinary jobs with the trial's values as overrides, and tells the study how each ended. Several
sweeps on one storage draw trials from one study (Optuna's database storage serialises them).

Each job finds its trial from `search.trial` (an override the sweeper adds), gives it its MLflow
run's id and address (user attributes `mlflow_run_id`, `mlflow_run`; the run has tags
`search.study` and `search.trial`), and reports val/acc after every validation at step = epochs
trained, the step MLflow records it at (`PruneHopeless`); when the pruner finds it behind before its
last epoch, the job stops with `TrialPruned` (both in training/callbacks.py): its MLflow run is
KILLED and tagged `search.state=PRUNED`, with its curves kept, and the sweeper tells the study the
trial was pruned. The study names its objective OBJECTIVE.
"""

import math
import warnings
from pathlib import Path

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from fmnist_exp import checks
from fmnist_exp.errors import ConfigError
from fmnist_exp.tracking import store

PRUNED = "pruned"  # what a pruned job returns to the sweeper
OBJECTIVE = "val/acc_best"  # what a trial's value is: its run's best validation accuracy
SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours to print


def default_storage(tracking_uri: str, root: Path) -> str:
    """sqlite beside a sqlite tracking store (one folder holds runs and studies), else in
    <root>/outputs/."""
    db = store.sqlite_path(tracking_uri)
    folder = db.parent if db is not None else Path(root) / "outputs"
    return f"sqlite:///{folder.resolve() / 'optuna.db'}"


def distribution(override: Override) -> optuna.distributions.BaseDistribution:
    """One key of the space: Hydra's sweep syntax -> an Optuna distribution."""
    value = override.value()
    log = "log" in getattr(value, "tags", ())  # tag(log, interval(...))
    if isinstance(value, ChoiceSweep):
        return optuna.distributions.CategoricalDistribution(list(value.list))
    if isinstance(value, RangeSweep):
        step = value.step or 1
        ints = all(isinstance(v, int) for v in (value.start, value.stop, step))
        if ints:  # range(a, b) stops before b, as in Python
            return optuna.distributions.IntDistribution(value.start, value.stop - step, step=step)
        return optuna.distributions.FloatDistribution(value.start, value.stop, step=step)
    if isinstance(value, IntervalSweep):
        if isinstance(value.start, int) and isinstance(value.end, int):
            return optuna.distributions.IntDistribution(value.start, value.end, log=log)
        return optuna.distributions.FloatDistribution(value.start, value.end, log=log)
    raise ConfigError(
        f"hydra.sweeper.params: {override.input_line} is not a search dimension; use choice(a, b), "
        f"interval(low, high), tag(log, interval(low, high)) or range(a, b)."
    )


def search_space(params: dict, arguments: list[str], config: DictConfig) -> tuple[dict, list[str]]:
    """(the space, fixed overrides): the sweep dimensions of hydra.sweeper.params plus the sweep
    overrides on the command line (which win); a plain value in params is a fixed override. Every
    key set must be a key of the training config."""
    parser = OverridesParser.create()
    from_params = parser.parse_overrides([f"{k}={v}" for k, v in params.items()])
    space, fixed = {}, []
    for override in [*from_params, *parser.parse_overrides(list(arguments))]:
        if override not in from_params and not override.is_sweep_override():
            continue  # the command line's own fixed overrides: the sweeper passes them on
        key = override.get_key_element()
        if OmegaConf.select(config, key, default="<absent>") == "<absent>":
            raise ConfigError(
                f"hydra.sweeper.params: {key} is not a key of the training config, so the search "
                f"cannot set it. Check its spelling against `python -m fmnist_exp --cfg job`."
            )
        if override.is_sweep_override():
            space[key] = distribution(override)
        else:
            fixed.append(override.input_line)
    if not space:
        raise ConfigError(
            "hparams_search=optuna has an empty search space: give hydra.sweeper.params at least "
            "one dimension, e.g. `optimizer.lr: tag(log, interval(1e-4, 1e-2))` in "
            "conf/hparams_search/optuna.yaml."
        )
    return space, fixed


# How long a search waits for a busy sqlite optuna.db (another sweep writing) before it gives up,
# in seconds: the patience the tracking store gets (store.patiently).
BUSY_TIMEOUT_S = 60


def storage_of(url: str) -> optuna.storages.BaseStorage | str:
    """Optuna's storage for a URL; a sqlite file waits up to BUSY_TIMEOUT_S for another writer's
    lock (sqlite's own default, 5 s, failed a search mid-way)."""
    if not url.startswith("sqlite:"):
        return url
    return optuna.storages.RDBStorage(
        url, engine_kwargs={"connect_args": {"timeout": BUSY_TIMEOUT_S}}
    )


def open_study(name: str, storage: str, direction: str, sampler, pruner) -> optuna.Study:
    """The study, made on first use and continued after that. Storage errors are one paragraph."""
    try:
        study = optuna.create_study(
            study_name=name, storage=storage_of(storage), direction=direction, sampler=sampler,
            pruner=pruner, load_if_exists=True,
        )  # fmt: skip
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2, unchanged since
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([OBJECTIVE])  # the dashboard's name for the objective
        return study
    except Exception as exc:  # sqlalchemy, OSError, ValueError: all mean the storage cannot be used
        raise ConfigError(
            f"hydra.sweeper.storage={storage}: the Optuna storage could not be opened "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]}). Give a database URL "
            f"Optuna takes (sqlite:////absolute/path/optuna.db, postgresql://...), or leave it "
            f"null for optuna.db beside the tracking store."
        ) from exc


def make_pruner(name: str, warmup_epochs: int) -> optuna.pruners.BasePruner:
    """median: a trial whose val/acc after k epochs (k > warmup_epochs) is below the median of the
    earlier trials' after k epochs stops, once two trials have completed; none: never."""
    if name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=warmup_epochs)


def trial_of(ref: DictConfig) -> optuna.Trial:
    """The trial a job is, to report to (`search.*`: overrides the sweeper adds). Optuna keeps the
    pruner out of the storage, so the job builds the sweep's own."""
    study = optuna.load_study(
        study_name=ref.study, storage=storage_of(ref.storage),
        pruner=make_pruner(ref.pruner, ref.warmup_epochs),
    )  # fmt: skip
    trial_id = next(t._trial_id for t in study.get_trials(deepcopy=False) if t.number == ref.trial)
    return optuna.Trial(study, trial_id)


def prepare(options: DictConfig | dict, config: DictConfig, arguments: list[str]) -> dict:
    """Everything the search needs, checked: the space, the fixed overrides, the storage and the
    study (made on first use). The sweep callback calls it before the sweep's parent run exists,
    so bad input is one paragraph and leaves nothing behind; the sweeper calls it again to run."""
    options = dict(options)
    if options.get("sampler") not in SAMPLERS:
        raise ConfigError(f"hydra.sweeper.sampler={options.get('sampler')!r} is not one of "
                          f"{', '.join(SAMPLERS)}.")  # fmt: skip
    if options.get("pruner") not in ("median", "none"):
        raise ConfigError(f"hydra.sweeper.pruner={options.get('pruner')!r} must be median or none.")
    if options.get("direction") not in ("maximize", "minimize"):
        raise ConfigError(f"hydra.sweeper.direction={options.get('direction')!r} must be maximize "
                          f"or minimize.")  # fmt: skip
    for key, minimum in (("n_trials", 1), ("n_jobs", 1), ("warmup_epochs", 0)):
        value = options.get(key)
        if not checks.is_whole(value, minimum):
            raise ConfigError(f"hydra.sweeper.{key}={value!r} must be a whole number >= {minimum}.")
    space, fixed = search_space(dict(options.get("params") or {}), arguments, config)
    fixed += [o.input_line for o in OverridesParser.create().parse_overrides(arguments)
              if not o.is_sweep_override()]  # fmt: skip
    storage = options.get("storage") or default_storage(
        config.logger.tracking_uri, Path(config.paths.root)
    )
    pruner = make_pruner(options["pruner"], options["warmup_epochs"])
    sampler = SAMPLERS[options["sampler"]](seed=options.get("seed"))
    study = open_study(options["study_name"], storage, options["direction"], sampler, pruner)
    check_same_space(study, space)
    return {"space": space, "fixed": fixed, "storage": storage, "study": study}


def check_same_space(study: optuna.Study, space: dict) -> None:
    """A study continues only over the space its trials were drawn from: Optuna refuses a changed
    set of choices mid-search (with a traceback, after the sweep's parent run and a trial exist)."""
    for trial in study.get_trials(deepcopy=False):
        for key, before in trial.distributions.items():
            if key not in space:
                continue
            try:
                optuna.distributions.check_distribution_compatibility(before, space[key])
            except ValueError as exc:
                raise ConfigError(
                    f"hydra.sweeper.study_name={study.study_name}: the study searched {key} over "
                    f"{_shown(before)}, and this search gives {_shown(space[key])} ({exc}). "
                    f"Continue it with its own space, or start a new study with the new one: "
                    f"hydra.sweeper.study_name=<new name>."
                ) from exc


def _shown(distribution: optuna.distributions.BaseDistribution) -> str:
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return f"choice({', '.join(map(str, distribution.choices))})"
    return f"[{distribution.low}, {distribution.high}]"


def finished_trials(study: optuna.Study) -> int:
    return sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))


class Search(Sweeper):
    """The sweeper behind hydra_plugins.fmnist_exp_search.OptunaSearch (Hydra's name for it);
    its arguments are conf/hydra/sweeper/optuna.yaml's keys."""

    def __init__(self, study_name: str, storage: str | None, direction: str, n_trials: int,
                 n_jobs: int, sampler: str, seed: int | None, pruner: str,
                 warmup_epochs: int, params: dict | None = None):  # fmt: skip
        self.options = {
            "study_name": study_name, "storage": storage, "direction": direction,
            "n_trials": n_trials, "n_jobs": n_jobs, "sampler": sampler, "seed": seed,
            "pruner": pruner, "warmup_epochs": warmup_epochs, "params": params,
        }  # fmt: skip
        self.launcher, self.config = None, None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:  # fmt: skip
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> list:
        ready = prepare(self.options, self.config, arguments)
        study, storage, name = ready["study"], ready["storage"], self.options["study_name"]
        n_trials, n_jobs = self.options["n_trials"], self.options["n_jobs"]
        done = finished_trials(study)
        print(f"study {name!r} in {storage}: {done} trials so far, {n_trials} wanted")
        results, job_idx = [], 0
        while done < n_trials:
            batch = [study.ask(ready["space"]) for _ in range(min(n_jobs, n_trials - done))]
            overrides = [
                tuple(
                    ready["fixed"]
                    + [f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}"
                       for key, value in trial.params.items()]
                    + [f"+search.storage={storage}", f"+search.study={name}",
                       f"+search.pruner={self.options['pruner']}",
                       f"+search.warmup_epochs={self.options['warmup_epochs']}",
                       f"+search.trial={trial.number}"]
                )
                for trial in batch
            ]  # fmt: skip
            returns = self.launcher.launch(overrides, initial_job_idx=job_idx)
            job_idx += len(returns)
            for trial, ret in zip(batch, returns, strict=True):
                self._tell(study, trial, ret)
            results.append(returns)
            done = finished_trials(study)
        self._summary(study, storage)
        return results

    @staticmethod
    def _tell(study: optuna.Study, trial: optuna.Trial, ret) -> None:
        try:
            value = ret.return_value
        except Exception:  # the job raised where the launcher could not catch it
            value = None
        if value == PRUNED:
            state, values = optuna.trial.TrialState.PRUNED, None
        elif isinstance(value, float) and math.isfinite(value):
            state, values = optuna.trial.TrialState.COMPLETE, value
        else:
            state, values = optuna.trial.TrialState.FAIL, None
        study.tell(trial, values, state=state)
        print(f"trial {trial.number}: {state.name}"
              + (f" {OBJECTIVE}={values:.4f}" if values is not None else "")
              + f"  {' '.join(f'{k}={v}' for k, v in trial.params.items())}")  # fmt: skip

    @staticmethod
    def _summary(study: optuna.Study, storage: str) -> None:
        tags, metrics = outcome(study, storage)
        counts = {k.split("/")[1]: int(v) for k, v in metrics.items() if k != "search/best_value"}
        print(
            f"study {study.study_name!r}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        )
        if "search.best_trial" in tags:
            print(f"best trial {tags['search.best_trial']}: val/acc_best={metrics['search/best_value']:.4f}  "
                  + " ".join(f"{k.removeprefix('search.best.')}={v}" for k, v in tags.items()
                             if k.startswith("search.best.")))  # fmt: skip


def outcome(study: optuna.Study, storage: str) -> tuple[dict[str, str], dict[str, float]]:
    """(tags, metrics) for the sweep's parent run: the study, its trials by state, its best trial
    (number, params, value)."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    tags = {"search.study": study.study_name, "search.storage": storage}
    metrics = {f"search/{state}": float(n) for state, n in counts.items()}
    if counts["complete"]:
        best = study.best_trial
        tags |= {"search.best_trial": str(best.number),
                 **{f"search.best.{k}": str(v) for k, v in best.params.items()}}  # fmt: skip
        metrics["search/best_value"] = best.value
    return tags, metrics


def study_outcome(
    options: DictConfig, config: DictConfig
) -> tuple[dict[str, str], dict[str, float]]:
    """outcome() of the study a finished sweep searched in."""
    storage = options.get("storage") or default_storage(
        config.logger.tracking_uri, Path(config.paths.root)
    )
    study = optuna.load_study(study_name=options.study_name, storage=storage_of(storage))
    return outcome(study, storage)
