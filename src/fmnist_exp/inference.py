"""A trained model from any `model_uri`, as one function: raw pixels -> class probabilities.

model_uri is one of
  best                      the FINISHED run with the highest test/acc in the experiment
  runs:/<run_id>/model      the model a training run logged (torch.export, MLflow's pytorch flavour)
  models:/<name>/<version>  a version in the MLflow model registry (see `register`)
  path/to/file.ckpt         a Lightning checkpoint written by a run (loaded with weights_only)
"""

from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from mlflow.exceptions import MlflowException

from fmnist_exp.errors import UserError, one_paragraph

URI_HELP = (
    "Use best (the highest test/acc in the experiment), runs:/<run_id>/model, "
    "models:/<name>/<version>, or the path of a .ckpt file written by a run "
    "(outputs/runs/<time>/checkpoints/)."
)


@dataclass
class LoadedModel:
    module: torch.nn.Module  # float32 [N, 1, 28, 28] in 0..255 -> probabilities [N, 10]
    uri: str  # what was loaded: `best` resolved to its runs:/ URI

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or float images [N, 1, 28, 28] (raw 0..255 pixels) -> probabilities [N, 10]."""
        return self.module(images.float()).float()


def best_run_uri(tracking_uri: str, experiment: str) -> str:
    """runs:/<id>/model of the FINISHED run with the highest test/acc that logged a model."""
    client = mlflow.MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    runs = (
        client.search_runs(
            [found.experiment_id],
            "attributes.status = 'FINISHED'",
            order_by=["metrics.`test/acc` DESC"],
            max_results=20,
        )
        if found
        else []
    )
    for run in runs:
        if "test/acc" in run.data.metrics and run.data.params.get("mlflow.log_model") == "True":
            return f"runs:/{run.info.run_id}/model"
    raise UserError(
        f"model_uri=best: no finished run with a logged model and a test/acc in experiment "
        f"{experiment!r} of {tracking_uri}. Train one first (`make train`), or name the model: "
        f"{URI_HELP}"
    )


def load(model_uri: str, tracking_uri: str, experiment: str = "fashion-mnist") -> LoadedModel:
    """The model behind model_uri, on the CPU in eval mode. Every way it can fail is a UserError."""
    if model_uri == "best":
        model_uri = best_run_uri(tracking_uri, experiment)
    if model_uri.startswith(("runs:/", "models:/")):
        mlflow.set_tracking_uri(tracking_uri)
        try:
            module = mlflow.pytorch.load_model(model_uri, map_location="cpu")
        except (MlflowException, OSError) as exc:
            raise UserError(
                f"model_uri={model_uri}: MLflow could not load it from {tracking_uri} "
                f"({one_paragraph(exc)[:300]}). Check the run id or registry name and version in "
                f"the MLflow UI (`make ui`), and that MLFLOW_TRACKING_URI points at the right store."
            ) from exc
        return LoadedModel(module, model_uri)  # torch.export's module: inference only already
    path = Path(model_uri).expanduser()
    if not path.is_file():
        raise UserError(f"model_uri={model_uri}: not a model URI and no such file. {URI_HELP}")
    return LoadedModel(load_checkpoint(path), str(path.resolve()))


def load_checkpoint(path: Path) -> torch.nn.Module:
    hint = "Pass a .ckpt from a run's checkpoints/ folder, or a runs:/<run_id>/model URI."
    return load_classifier(path, f"model_uri={path}", hint).probabilities_module()


def load_classifier(path: Path, source: str, hint: str):
    """The Classifier in a checkpoint, on the CPU, in eval mode. A file that is not one of ours is a
    UserError that starts with `source` (the key it came from) and ends with `hint`."""
    from fmnist_exp.classifier import Classifier  # Lightning is a heavy import: only when needed

    try:
        classifier = Classifier.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except (
        Exception
    ) as exc:  # pickle, zip, key and shape errors all mean: not one of our checkpoints
        raise UserError(
            f"{source}: not a checkpoint this version of fmnist-exp can load "
            f"({type(exc).__name__}: {one_paragraph(exc).split('. ')[0][:200]}). {hint}"
        ) from exc
    return classifier.eval()
