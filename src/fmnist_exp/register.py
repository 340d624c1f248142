"""`python -m fmnist_exp.register model_uri=best name=fmnist`: put a run's model in the MLflow
model registry, so predict and serve can load it as models:/<name>/<version>.
(At training time: mlflow.register_model=<name>.)"""

from fmnist_exp import cli, inference
from fmnist_exp.errors import UserError
from fmnist_exp.paths import default_tracking_uri
from fmnist_exp.tracking import store

OPTIONS = {
    "model_uri": "best",  # best | runs:/<run_id>/model
    "name": "",  # registered model name (created on first use)
    "experiment": "fashion-mnist",  # where model_uri=best looks
    "tracking_uri": "",  # default: $MLFLOW_TRACKING_URI, else the project's sqlite store
}


def run(argv: list[str]) -> str:
    options = cli.parse("register", argv, OPTIONS, "model_uri=best name=fmnist")
    if not options["name"]:
        raise UserError(
            "register: name= is required, e.g. name=fmnist (the registry entry to add to)."
        )
    uri = options["tracking_uri"] or default_tracking_uri()
    model_uri = options["model_uri"]
    if model_uri == "best":
        model_uri = inference.best_run_uri(uri, options["experiment"])
    if not model_uri.startswith("runs:/"):
        raise UserError(
            f"register: model_uri={model_uri} must be best or runs:/<run_id>/model (a logged model)."
        )
    inference.load(model_uri, uri)  # fails clearly before the registry is touched
    registered = store.register_model(uri, model_uri, options["name"])
    print(f"registered {model_uri} as {registered}")
    return registered


def main(argv: list[str] | None = None) -> int:
    return cli.run(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
