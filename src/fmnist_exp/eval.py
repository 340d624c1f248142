"""`python -m fmnist_exp.eval [model_uri=best]` (options: conf/eval.yaml): a trained model's test
accuracy, measured again.

The model is loaded the way predict and serve load it (inference.py: a logged model, a registry
version or a checkpoint) and scored on the test split of the data its run was tested on: the run's
logged data.split, data.split_seed and data.val_size (and the folder it read, unless data.data_dir
is given) win over the composed `data` config, so a run trained on the 80/10/10 split is tested on
its own 10%. When the files found there are not the ones the run read (its tag data_digest), eval
says so instead of scoring the model on other data.
The run is found from the URI, the registry version, or the MLflow run id every checkpoint carries.
For a run tested on its whole test split the figure is the test/acc it logged.
"""

from __future__ import annotations  # the work's types are imported only to check them (app.py)

from dataclasses import dataclass
from typing import TYPE_CHECKING

import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fmnist_exp import checks
from fmnist_exp.app import hydra_app
from fmnist_exp.errors import DataError, UserError, one_paragraph

if TYPE_CHECKING:
    import mlflow
    import torch

    from fmnist_exp.inference import LoadedModel

FROM_THE_RUN = ("split", "split_seed", "val_size")  # which images are the test split


@dataclass
class Evaluation:
    accuracy: float  # share of test images whose most probable class is their label
    n_images: int
    model_uri: str
    run: mlflow.entities.Run | None  # the run that trained the model, when it can be found


def run_of(model: LoadedModel, tracking_uri: str) -> mlflow.entities.Run | None:
    """The MLflow run behind the model (inference.load found its id from the logged model, the
    registry version or alias, or the checkpoint), or None (a checkpoint of a run whose store is
    elsewhere)."""
    import mlflow

    try:
        return mlflow.MlflowClient(tracking_uri).get_run(model.run_id) if model.run_id else None
    except mlflow.exceptions.MlflowException:
        return None


def none_as_null(value: str | None) -> str | None:
    """A logged param: MLflow writes a null as 'None'."""
    return None if value in (None, "None") else value


def test_split(data: DictConfig, run: mlflow.entities.Run | None) -> tuple[torch.Tensor, ...]:
    """(uint8 images [N, 1, 28, 28], labels [N], class names) of the run's test split."""
    data = OmegaConf.to_container(data, resolve=True)
    params = run.data.params if run else {}
    for key in FROM_THE_RUN:
        if f"data.{key}" in params:
            data[key] = yaml.safe_load(params[f"data.{key}"])  # as logged: 5000 or 0.0833...
    if data["data_dir"] is None:  # the folder the run read, wherever it found it
        data["data_dir"] = params.get("data/source") or none_as_null(params.get("data.data_dir"))
    checks.check_data(data)
    datamodule = instantiate(data)
    expected = run.data.tags.get("data_digest") if run else None
    try:
        found = datamodule.fingerprint()
    except DataError as exc:
        if not expected:
            raise
        found, now = None, f"no data is found there ({one_paragraph(exc)[:200]})"
    else:
        now = f"{data['data_dir'] or 'the default folders'} now hold other files (digest {found})"
    if expected and found != expected:
        raise UserError(
            f"eval: run {run.info.run_id} read the data in {params.get('data/source')} (digest "
            f"{expected}), but {now}, so its test split is not here. Point data.data_dir at a copy "
            f"of the data the run read."
        )
    datamodule.setup("test")
    return (*datamodule.test, datamodule.class_names)


def evaluate(cfg: DictConfig) -> Evaluation:
    checks.check_data(OmegaConf.to_container(cfg.data, resolve=True))  # before the model loads
    from fmnist_exp import inference

    model = inference.load(str(cfg.model_uri), cfg.tracking_uri, cfg.experiment_name, cfg.dataset)
    run = run_of(model, cfg.tracking_uri)
    images, labels, class_names = test_split(cfg.data, run)
    if tuple(class_names) != tuple(model.class_names):
        raise UserError(
            f"eval: the model's classes ({', '.join(model.class_names)}) are not the data's "
            f"({', '.join(class_names)}): point data.data_dir at the data its run trained on."
        )
    batch = cfg.data.eval_batch_size
    correct = sum(
        int((model.probabilities(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum())
        for i in range(0, len(labels), batch)
    )
    return Evaluation(correct / len(labels), len(labels), model.uri, run)


def run(cfg: DictConfig) -> int:
    found = evaluate(cfg)
    metrics = found.run.data.metrics if found.run else {}
    said = ""
    if "test/acc" in metrics:
        scored = int(metrics.get("test/n_images", found.n_images))
        part = "" if scored == found.n_images else f" on {scored} of them: a partial run"
        said = f"  (its run logged test/acc={metrics['test/acc']:.4f}{part})"
    print(
        f"test/acc={found.accuracy:.4f} on {found.n_images} test images{said}\nmodel {found.model_uri}"
    )
    return 0


main = hydra_app("eval", run)

if __name__ == "__main__":
    raise SystemExit(main())
