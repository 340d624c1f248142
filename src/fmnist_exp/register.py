"""`python -m fmnist_exp.register name=fmnist [model_uri=best]` (options: conf/register.yaml): put a
run's logged model in the MLflow model registry, so predict, serve and eval can load it as
models:/<name>/<version>. (At training time: logger.register_model=<name>.)"""

from omegaconf import DictConfig

from fmnist_exp import inference
from fmnist_exp.app import hydra_app
from fmnist_exp.errors import UserError
from fmnist_exp.tracking import store


def run(cfg: DictConfig) -> int:
    name, uri, model_uri = cfg.name, cfg.tracking_uri, cfg.model_uri
    if not isinstance(name, str) or not name.strip():
        raise UserError(
            "register: name= is required, e.g. name=fmnist (the registry entry to add to)."
        )
    if model_uri == "best":
        model_uri = inference.best_run_uri(uri, cfg.experiment, cfg.dataset)
    if not str(model_uri).startswith("runs:/"):
        raise UserError(
            f"register: model_uri={model_uri} must be best or runs:/<run_id>/model (a logged model)."
        )
    inference.load(model_uri, uri)  # fails clearly before the registry is touched
    registered = store.register_model(uri, model_uri, name)
    print(f"registered {model_uri} as {registered}")
    return 0


main = hydra_app("register", run)

if __name__ == "__main__":
    raise SystemExit(main())
