"""`python -m fmnist_exp.register name=fmnist [model_uri=best] [alias=champion]` (options:
conf/register.yaml): put a run's logged model in the MLflow model registry, so predict, serve and
eval can load it as models:/<name>/<version>; with alias=, the alias points at the new version
(models:/<name>@<alias>), moved from any version it named before. (At training time:
logger.register_model=<name>.)"""

from omegaconf import DictConfig

from fmnist_exp import checks
from fmnist_exp.app import hydra_app
from fmnist_exp.errors import UserError


def run(cfg: DictConfig) -> int:
    name, uri, model_uri = cfg.name, cfg.tracking_uri, cfg.model_uri
    checks.check_register(cfg)  # name= given, alias= one MLflow accepts
    from fmnist_exp import inference  # the work's imports, once the options passed (app.py)
    from fmnist_exp.tracking import store

    if model_uri == "best":
        model_uri = inference.best_run_uri(uri, cfg.experiment_name, cfg.dataset)
    if not str(model_uri).startswith("runs:/"):
        raise UserError(
            f"register: model_uri={model_uri} must be best or runs:/<run_id>/model (a logged model)."
        )
    inference.load(model_uri, uri)  # fails clearly before the registry is touched
    registered = store.register_model(uri, model_uri, name, cfg.alias)
    alias = f", alias {cfg.alias}: models:/{name}@{cfg.alias}" if cfg.alias else ""
    print(f"registered {model_uri} as {registered}{alias}")
    return 0


main = hydra_app("register", run)

if __name__ == "__main__":
    raise SystemExit(main())
