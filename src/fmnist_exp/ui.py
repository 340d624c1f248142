"""`python -m fmnist_exp.ui [port=5000]` (or `make ui`; options: conf/ui.yaml): the MLflow UI over the
project's store, opening on the experiment's runs table, best val/acc_best first (runs are chosen
on validation; test/acc is reported beside it).

MLflow 3 opens an experiment on its GenAI overview unless the address names the runs tab, and marks
an experiment for machine learning by its `mlflow.experimentKind` tag: both are set here. The server
runs light, for one user: `workers` processes (1) and MLflow's GenAI job runners off.
"""

import os
import sys

from omegaconf import DictConfig

from fmnist_exp import checks
from fmnist_exp.app import hydra_app


def run(cfg: DictConfig) -> int:
    checks.check_whole("ui", "port", cfg.port, 1, 65535)
    checks.check_whole("ui", "workers", cfg.workers, 1)
    import mlflow  # the work's imports, once the options passed (app.py)

    from fmnist_exp.tracking import store

    uri = cfg.tracking_uri
    experiment_id = store.ensure_store(uri, cfg.experiment_name)
    mlflow.MlflowClient(uri).set_experiment_tag(experiment_id, *store.MACHINE_LEARNING)
    base = store.ui_base(uri, f"http://{cfg.host}:{cfg.port}")
    print(f"MLflow UI: {store.runs_page(base, experiment_id)}", flush=True)
    if base == uri:  # a tracking server already serves the UI
        return 0
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
               "--host", str(cfg.host), "--port", str(cfg.port), "--workers", str(cfg.workers)]  # fmt: skip
    os.execve(
        sys.executable, command, {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    )


main = hydra_app("ui", run)

if __name__ == "__main__":
    raise SystemExit(main())
