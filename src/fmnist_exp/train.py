"""train(cfg): one run, top to bottom.

checks -> store -> new, resumed or skipped -> seed -> data -> model -> callbacks -> logger ->
trainer -> [MLflow run: fit -> test on the best checkpoint -> artifacts] -> summary line.

Everything a user can get wrong is checked before the MLflow run exists, so bad input never
leaves a half-made run behind; from then on the run's status is tracking/run.py's alone.
"""

import time
import warnings
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from fmnist_exp import checks
from fmnist_exp.paths import check_writable
from fmnist_exp.tracking import claims, resume, run, search, store
from fmnist_exp.training import callbacks, distill, module
from fmnist_exp.training.trainer import make_trainer


def train(cfg: DictConfig, extra_callbacks: list[L.Callback] = ()) -> dict[str, float]:
    """One run; returns its results (test/acc, val/acc_best, ...). extra_callbacks join the
    configured ones (tests and the benchmark use it). The run's claims (one writer per run and per
    config: tracking/claims.py) are held until it returns."""
    with claims.session():
        started = time.perf_counter()
        checks.check(cfg)  # every rule on the config, each one paragraph naming the key
        check_writable(Path(cfg.paths.output_dir), "paths.output_dir (hydra.run.dir)")
        # the store next: a bad URI, a corrupt or read-only file, an unreachable server fail here,
        # in seconds, before anything is read or recorded (and a brand-new store is made once)
        experiment_id = store.ensure_store(cfg.logger.tracking_uri, cfg.logger.experiment)
        # what the data files hold is part of the run's identity (skip_finished, resume=last)
        data_digest = instantiate(cfg.data).fingerprint()
        cfg, previous = resume.prepare(cfg, data_digest)  # resumed: the run's own config and folder
        if previous is not None and previous.status == "FINISHED":  # skip_finished=true
            return resume.skipped(cfg, previous)
        cfg.module.steps_per_call = checks.steps_per_call(cfg)  # auto -> the number it makes
        L.seed_everything(cfg.seed, workers=True)

        # Data first: its training statistics go into the model's normalisation layer, and the
        # teachers (checked before the data loads) label its training images.
        distill_cfg = cfg.module.distill
        teachers = distill.load_teachers(cfg.logger.tracking_uri, distill_cfg.teachers, cfg.data)
        datamodule = instantiate(cfg.data, steps_per_call=cfg.module.steps_per_call)
        datamodule.prepare_data()
        datamodule.setup("fit")
        datamodule.soft_targets = distill.soft_targets(
            teachers, datamodule.train[0], distill_cfg.temperature
        )

        model = module.classifier(cfg, datamodule)
        state = callbacks.RunState()  # run id, training seconds, random states: in checkpoints
        stop = callbacks.StopOnSignal(Path(cfg.paths.output_dir) / "checkpoints")
        shown = [
            cfg.trainer.get(f"enable_{what}", True) for what in ("progress_bar", "model_summary")
        ]
        chosen = callbacks.from_config(cfg.callbacks, *shown)
        if cfg.get("search"):  # a trial of hparams_search=optuna: report val/acc, maybe be pruned
            page = store.run_page(cfg.logger.tracking_uri, experiment_id, "{run_id}")
            chosen.append(callbacks.PruneHopeless(search.trial_of(cfg.search), page))
        logger = run.make_logger(cfg, previous)
        trainer = make_trainer(cfg.trainer, [*chosen, *extra_callbacks, state, stop], logger)

        with run.lifecycle(cfg, logger, stop, state, previous) as recorded:
            recorded.start(datamodule, model, trainer.strategy.root_device)
            with warnings.catch_warnings():
                if previous:  # its folder holds its own checkpoints: expected, not worth a warning
                    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* not empty")
                trainer.fit(
                    model,
                    datamodule=datamodule,
                    ckpt_path=previous.last_checkpoint if previous else None,
                )
            best = getattr(trainer.checkpoint_callback, "best_model_path", "")
            tested = trainer.test(
                model, datamodule=datamodule, ckpt_path="best" if best else None, verbose=False
            )
            results = recorded.finish(trainer, model, datamodule, tested[0], started)
        if trainer.global_rank == 0:
            print(run.summary(cfg, recorded.id, results, model))
        return results
