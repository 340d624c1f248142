"""A trained model from any `model_uri`, as one function: raw pixels -> class probabilities.

model_uri is one of
  best                      the FINISHED run with the highest val/acc_best in the experiment (the
                            validation accuracy of the checkpoint it tested), among runs that
                            tested on their whole test split and read the same data (dataset=);
                            chosen on validation, never on test
  runs:/<run_id>/model      the model a training run logged (torch.export, MLflow's pytorch flavour)
  models:/<name>/<version>  a version in the MLflow model registry (see `register`); also
                            models:/<name>@<alias> and models:/<name>/latest
  path/to/file.ckpt         a Lightning checkpoint written by a run (loaded with weights_only)
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException

from fmnist_exp.data.dataset import CLASS_NAMES
from fmnist_exp.errors import UserError, one_paragraph
from fmnist_exp.tracking import same_data, store
from fmnist_exp.training.module import load_classifier

URI_HELP = (
    "Use best (the highest val/acc_best in the experiment), runs:/<run_id>/model, "
    "models:/<name>/<version>, or the path of a .ckpt file written by a run "
    "(outputs/runs/<time>/checkpoints/)."
)


@dataclass
class LoadedModel:
    module: torch.nn.Module  # float32 [N, 1, 28, 28] in 0..255 -> probabilities [N, classes]
    uri: str  # what was loaded: `best` resolved to its runs:/ URI
    class_names: tuple[str, ...] = CLASS_NAMES  # output index -> class name
    run_id: str | None = None  # the MLflow run that trained it (logged model, registry, checkpoint)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or float images [N, 1, 28, 28] (raw 0..255 pixels) -> probabilities [N, classes]."""
        return self.module(images.float()).float()


def best_run_uri(tracking_uri: str, experiment: str, dataset: str = "auto") -> str:
    """runs:/<id>/model of the FINISHED, non-partial run with the highest val/acc_best (the best
    epoch's validation accuracy: the checkpoint the run tested and logged) that logged a model,
    among the runs on one data (tracking/same_data.py: dataset=auto is the newest such run's). The
    choice is made on validation: test/acc is reported, never used to choose. A partial run (tag
    partial=true: it tested on part of its test split) is no result; nor is one that never
    validated. Runs left out because they read other data are named on stderr."""
    client = mlflow.MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    query = (
        "attributes.status = 'FINISHED' and tags.partial = 'false' and "
        "params.`logger.log_model` = 'True' and metrics.`val/acc_best` >= 0"
    )
    runs = store.all_runs(client, [found.experiment_id], query) if found else []
    if not runs:
        raise UserError(
            f"model_uri=best: no finished run that validated, tested on its whole test split and "
            f"logged a model in experiment {experiment!r} of {tracking_uri} (partial runs, such as "
            f"those with trainer.limit_test_batches, are never ranked). Train one first (`make "
            f"train`), or name the model: {URI_HELP}"
        )
    data, note = same_data.choose(
        [same_data.tags_of(r.data.tags) for r in runs], dataset, "model_uri=best"
    )
    on_data = [r for r in runs if same_data.tags_of(r.data.tags)[0] == data.digest]
    best = max(on_data, key=lambda r: (r.data.metrics["val/acc_best"], r.info.start_time))
    if note:
        print(f"model_uri=best: {note}", file=sys.stderr)
    return f"runs:/{best.info.run_id}/model"


def logged_details(model_uri: str) -> tuple[tuple[str, ...], str | None]:
    """(the class names a logged model carries in its MLmodel metadata (tracking.log_model), the
    run that logged it), for any runs:/ or models:/ URI MLflow resolves (versions, aliases,
    latest)."""
    info = mlflow.models.get_model_info(model_uri)
    return tuple((info.metadata or {}).get("class_names", CLASS_NAMES)), info.run_id


def load(
    model_uri: str, tracking_uri: str, experiment: str = "fashion-mnist", dataset: str = "auto"
) -> LoadedModel:
    """The model behind model_uri, on the CPU in eval mode (best: among runs on `dataset`, see
    best_run_uri). Every way it can fail is a UserError."""
    if model_uri == "best":
        model_uri = best_run_uri(tracking_uri, experiment, dataset)
    if model_uri.startswith(("runs:/", "models:/")):
        mlflow.set_tracking_uri(tracking_uri)
        try:
            with store.no_progress_bars():
                module = mlflow.pytorch.load_model(model_uri, map_location="cpu")
                names, run_id = logged_details(model_uri)
        except (MlflowException, OSError) as exc:
            raise UserError(
                f"model_uri={model_uri}: MLflow could not load it from {tracking_uri} "
                f"({one_paragraph(exc)[:300]}). Check the run id or registry name and version in "
                f"the MLflow UI (`make ui`), and that MLFLOW_TRACKING_URI points at the right store."
            ) from exc
        return LoadedModel(
            module, model_uri, names, run_id
        )  # torch.export's module: inference only
    path = Path(model_uri).expanduser()
    if not path.is_file():
        raise UserError(f"model_uri={model_uri}: not a model URI and no such file. {URI_HELP}")
    hint = "Pass a .ckpt from a run's checkpoints/ folder, or a runs:/<run_id>/model URI."
    classifier = load_classifier(path, f"model_uri={path}", hint)
    return LoadedModel(
        classifier.probabilities_module(), str(path.resolve()), classifier.class_names,
        classifier.run_id,
    )  # fmt: skip


def predict_table(model: LoadedModel, names, images: np.ndarray, labels, batch_size: int):
    """One row per image: input, label, class_name, probability, top3 (and true_label when the
    inputs carry labels)."""
    probs = torch.cat([
        model.probabilities(torch.from_numpy(images[i : i + batch_size]))
        for i in range(0, len(images), batch_size)
    ])  # fmt: skip
    top_p, top_k = probs.topk(min(3, probs.shape[1]), dim=1)
    classes = model.class_names
    table = pd.DataFrame({
        "input": names,
        "label": top_k[:, 0].numpy(),
        "class_name": [classes[k] for k in top_k[:, 0].tolist()],
        "probability": top_p[:, 0].numpy().round(4),
        "top3": [", ".join(f"{classes[k]} {p:.2f}" for k, p in zip(ks, ps, strict=True))
                 for ks, ps in zip(top_k.tolist(), top_p.tolist(), strict=True)],
    })  # fmt: skip
    if labels is not None:
        table["true_label"] = labels
    return table


def accuracy(table: pd.DataFrame) -> tuple[float, int] | None:
    """(share of labelled rows whose label is right, how many are labelled), or None."""
    if "true_label" not in table:
        return None
    known = table[table.true_label >= 0]
    return float((known.label == known.true_label).mean()), len(known)
