"""Knowledge distillation: a run can also learn the mean predictions of earlier runs (its teachers).

`module.distill.teachers` names FINISHED runs in the same tracking store. Before the student's MLflow run
starts, each teacher's best checkpoint predicts every training image once (in eval mode, with its
own flip averaging), and the mean of their temperature-softened probabilities becomes a soft target
per image: [N_train, 10], carried beside the labels in every training batch. The student's loss is

    (1 - weight) * cross_entropy(labels) + weight * T^2 * KL(teachers_T || student_T)

(Hinton et al. 2015). Targets are computed on the un-augmented images: a mirrored image keeps its
target (flip-averaged teachers give both the same), an erased one keeps the whole image's.

A teacher must not have trained on images the student validates or tests on, so the data split is
checked against each teacher's logged params before anything is computed.
"""

import os
from pathlib import Path
from unittest import mock

import mlflow
import torch

from fmnist_exp.data.datamodule import validation_count
from fmnist_exp.errors import ConfigError
from fmnist_exp.training.module import load_classifier

SPLIT_KEYS = ("data.split", "data.split_seed")  # must match the student's: same test images
FOLDS = {"folds": None, "fold": 0}  # k-fold keys and their defaults (runs logged before them)
CHUNK = 500  # images per teacher forward pass (larger chunks only add allocator time on a CPU)


def _best_checkpoint(tracking_uri: str, run_id: str) -> Path:
    """The run's logged best checkpoint (train.py logs one, as checkpoints/epochNNN.ckpt)."""
    client = mlflow.MlflowClient(tracking_uri)
    found = [
        a.path for a in client.list_artifacts(run_id, "checkpoints") if a.path.endswith(".ckpt")
    ]
    if not found:
        raise ConfigError(
            f"module.distill.teachers: run {run_id} has no checkpoints/*.ckpt artifact (it was recorded "
            f"before checkpoints were logged, or it failed before its first validation). Pick a "
            f"FINISHED run whose Artifacts tab shows checkpoints/."
        )
    # a copy (about 1 MB), local store or tracking server alike; no progress bar per teacher
    with mock.patch.dict(os.environ, {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}):
        return Path(client.download_artifacts(run_id, sorted(found)[-1]))


def _check_split(run, data: dict) -> None:
    """The teacher trained only on images that are training images for the student."""
    params, run_id = run.data.params, run.info.run_id
    if "data.split" not in params:
        raise ConfigError(
            f"module.distill.teachers: run {run_id} did not train a model (it has no data.* params: a "
            f"sweep's parent run?). Pass the ids of training runs, e.g. the sweep's child runs."
        )
    for key in SPLIT_KEYS:
        theirs, ours = params.get(key), str(data[key.split(".", 1)[1]])
        if theirs != ours:
            raise ConfigError(
                f"module.distill.teachers: run {run_id} used {key}={theirs}, this run uses {key}={ours}. "
                f"A teacher from another split has trained on images this run tests on. Use teachers "
                f"trained with the same data split, or change {key} to theirs."
            )
    theirs = {key: params.get(f"data.{key}", str(default)) for key, default in FOLDS.items()}
    if data.get("folds") or theirs["folds"] != "None":  # k-fold: the same folds, the same fold
        for key, value in theirs.items():
            if value != str(data.get(key)):
                raise ConfigError(
                    f"module.distill.teachers: run {run_id} used data.{key}={value}, this run "
                    f"uses data.{key}={data.get(key)}: the teacher has trained on images this run "
                    f"validates on. Under k-fold use teachers trained on the same data.folds and "
                    f"data.fold."
                )
        return
    if data["split"] != "official":
        return
    # the teacher held out the first n_theirs images of the same permutation (split_seed), so it
    # never trained on our validation images when n_theirs >= ours, counted on its training split
    n_theirs = int(params.get("data/n_val", -1))
    n = n_theirs + int(params.get("data/n_train", 0))
    ours = validation_count(data["val_size"], n, params.get("data/source"))
    if n_theirs < ours:
        raise ConfigError(
            f"module.distill.teachers: run {run_id} held out {n_theirs} images for validation "
            f"(data.val_size={params.get('data.val_size')}), this run holds out {ours} "
            f"(data.val_size={data['val_size']}): the teacher trained on images this run "
            f"validates on. Use teachers that held out at least as many images."
        )


def load_teachers(tracking_uri: str, run_ids, data) -> list[torch.nn.Module]:
    """Each teacher run's best network (eval mode, CPU), after checking that the run exists, is
    FINISHED and trained on our split. No teachers: the store is not opened (a run that fails its
    config checks leaves no tracking DB behind)."""
    if not run_ids:
        return []
    client = mlflow.MlflowClient(tracking_uri)
    teachers = []
    for run_id in map(str, run_ids):
        try:
            run = client.get_run(run_id)
        except mlflow.exceptions.MlflowException as exc:
            raise ConfigError(
                f"module.distill.teachers: no run {run_id!r} in {tracking_uri}. Teachers are full run ids "
                f"from this store (MLflow UI, or the 'run <id>' summary line of a finished run)."
            ) from exc
        if run.info.status != "FINISHED":
            raise ConfigError(
                f"module.distill.teachers: run {run_id} is {run.info.status}, not FINISHED. Finish it "
                f"(resume={run_id}) or pick another teacher."
            )
        _check_split(run, data)
        path = _best_checkpoint(tracking_uri, run_id)
        hint = "Pick a teacher trained by this version of fmnist-exp, or train that config again."
        teachers.append(
            load_classifier(path, f"module.distill.teachers: run {run_id}'s {path.name}", hint)
        )
    return teachers


@torch.no_grad()
def soft_targets(
    teachers: list[torch.nn.Module], images: torch.Tensor, temperature: float
) -> torch.Tensor | None:
    """uint8 images [N, 1, 28, 28] -> mean softened teacher probabilities [N, classes] (float32,
    on the CPU), or None without teachers. The forward passes run on the GPU when there is one
    (seconds, not minutes)."""
    if not teachers:
        return None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    total = 0
    for teacher in teachers:
        teacher = teacher.to(device)
        probs = [
            (teacher(images[i : i + CHUNK].to(device)) / temperature).softmax(1).cpu()
            for i in range(0, len(images), CHUNK)
        ]
        total = total + torch.cat(probs)
    return total / len(teachers)
