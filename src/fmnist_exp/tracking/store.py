"""The MLflow store: checked and made ready before a run, written patiently, and the servable model.

The store is always passed explicitly (MLflow 3 refuses the bare ./mlruns file store). With a sqlite
store the artifacts live beside the database file, so one folder (mlruns/) holds everything.
"""

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock
from urllib.parse import quote

import mlflow
import numpy as np
import requests
import sqlalchemy
import torch
from mlflow.data.schema import TensorDatasetSchema
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.models import infer_signature
from mlflow.types import Schema, TensorSpec
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from fmnist_exp.errors import ConfigError, UserError

# MLflow logs every database error it meets, with its traceback and the SQL, before raising it; each
# one reaches a run as an exception that ends in one paragraph (tracking.run: the store, the run, its
# checkpoints), so its own copy is left out. A store that fails mid-run printed ~600 lines.
logging.getLogger("mlflow.store.db.utils").addFilter(lambda record: record.levelno < logging.ERROR)

DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")  # SQLAlchemy stores MLflow takes, beside sqlite
SQLITE_HEADER = b"SQLite format 3\x00"
# the experiment tag that makes MLflow 3's UI show an experiment's runs, not its GenAI overview
MACHINE_LEARNING = ("mlflow.experimentKind", "custom_model_development")


def artifact_location(tracking_uri: str) -> str | None:
    """sqlite:////abs/mlruns/mlflow.db -> file:///abs/mlruns/artifacts; servers choose their own."""
    db = sqlite_path(tracking_uri)
    return None if db is None else (db.resolve().parent / "artifacts").as_uri()


def sqlite_path(tracking_uri: str) -> Path | None:
    """sqlite:////abs/x.db -> /abs/x.db (four slashes: absolute); other stores -> None."""
    prefix = "sqlite:///"
    return Path(tracking_uri[len(prefix) :]) if tracking_uri.startswith(prefix) else None


def check_server(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, with the address, when a tracking server does not answer (MLflow's own client
    would retry with back-off for minutes)."""
    try:
        requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s).raise_for_status()
    except requests.RequestException as exc:
        raise UserError(
            f"The MLflow tracking server {tracking_uri} does not answer ({type(exc).__name__}: "
            f"{str(exc)[:200]}). Start the server, fix MLFLOW_TRACKING_URI / "
            f"logger.tracking_uri, or unset it to use the local sqlite store. Nothing was recorded."
        ) from exc


def check_database(tracking_uri: str, timeout_s: int = 5) -> None:
    """Fail fast, naming the server, when a database store cannot be reached, refuses the login or
    lacks its driver (MLflow's own engine retries for minutes, then prints a long traceback)."""
    url = sqlalchemy.engine.make_url(tracking_uri)
    shown = url.render_as_string(hide_password=True)
    options = (
        {"connect_timeout": timeout_s} if url.get_backend_name() in ("postgresql", "mysql") else {}
    )
    try:
        engine = sqlalchemy.create_engine(url, connect_args=options, poolclass=sqlalchemy.NullPool)
        with engine.connect():
            pass
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as exc:
        raise UserError(
            f"The tracking store {shown} needs a database driver that is not installed "
            f"({type(exc).__name__}: {str(exc)[:200]}). For PostgreSQL install the project's "
            f"`server` extra (pip install -e '.[server]', psycopg 3); postgresql:// and "
            f"postgresql+psycopg:// both use it. Nothing was recorded."
        ) from exc
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = " ".join(str(getattr(exc, "orig", exc)).split())[:300]
        raise UserError(
            f"The tracking database {url.host or ''}:{url.port or ''} ({shown}) refused the "
            f"connection: {reason}. Check the server, the user and password in "
            f"MLFLOW_TRACKING_URI / logger.tracking_uri, or unset it to use the local sqlite "
            f"store. Nothing was recorded."
        ) from exc


STORE_HELP = (
    "Use sqlite:////absolute/path/mlflow.db (the default: <root>/mlruns/mlflow.db), "
    "http(s)://host:port for a tracking server, or a database URI (postgresql://...); set it with "
    "logger.tracking_uri=... or MLFLOW_TRACKING_URI, or unset both for the default."
)


def check_store_uri(tracking_uri: str, experiment: str) -> None:
    """Refuse a tracking URI or experiment name that cannot work, before anything is read or made:
    an unknown scheme, a plain path (MLflow 3's retired file store), a relative sqlite path (it
    would depend on the working directory), a file that is not an SQLite database, a store that
    cannot be written, an empty experiment name."""
    if not isinstance(experiment, str) or not experiment.strip():
        raise ConfigError(
            f"logger.experiment={experiment!r} must be a name, e.g. logger.experiment=fashion-mnist."
        )
    if (
        tracking_uri.startswith(("http://", "https://"))
        or tracking_uri.split(":")[0].split("+")[0] in DATABASE_SCHEMES
    ):
        return
    db = sqlite_path(tracking_uri)
    if db is None:
        raise ConfigError(
            f"logger.tracking_uri={tracking_uri!r} is not a tracking store this project can use. {STORE_HELP}"
        )
    if not db.is_absolute():
        raise ConfigError(
            f"logger.tracking_uri={tracking_uri}: {db} is a relative path (it would change with the "
            f"working directory); write it absolute, with four slashes: sqlite:///{db.resolve()}."
        )
    if db.is_file():
        with open(db, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
        if header and header != SQLITE_HEADER:
            raise UserError(
                f"{db} (logger.tracking_uri) is not an SQLite database: it is corrupt or another "
                f"kind of file. It was left as it is; move it aside or point logger.tracking_uri "
                f"elsewhere. {STORE_HELP}"
            )
    folder = db.parent if db.parent.exists() else next(p for p in db.parents if p.exists())
    writable = os.access(db, os.W_OK) if db.exists() else os.access(folder, os.W_OK)
    if not (writable and os.access(folder, os.W_OK)):
        raise UserError(
            f"The tracking store {db} (logger.tracking_uri) cannot be written (read-only file or "
            f"folder): fix its permissions, or point logger.tracking_uri at a writable place. "
            f"Nothing was recorded."
        )


UI_ADDRESS = "http://127.0.0.1:5000"  # where `make ui` serves a database store (conf/ui.yaml)
RUNS_ORDER = "workflowType=machine_learning&orderByKey=" + quote("metrics.`val/acc_best`", safe="")


def ui_base(tracking_uri: str, served_at: str = UI_ADDRESS) -> str:
    """The MLflow UI's address: the tracking server itself, or where `make ui` serves the store."""
    return tracking_uri if tracking_uri.startswith(("http://", "https://")) else served_at


def runs_page(base: str, experiment_id: str) -> str:
    """The UI page of an experiment's runs table, sorted by val/acc_best, best first."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{RUNS_ORDER}&orderByAsc=false"


def run_page(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the MLflow UI."""
    return f"{ui_base(tracking_uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def compare_where(tracking_uri: str) -> str:
    """Where runs are compared: the tracking server, or the UI `make ui` starts."""
    return ui_base(tracking_uri, "make ui  (or: python -m fmnist_exp.ui)")


def ensure_store(tracking_uri: str, experiment: str) -> str:
    """Create the store's schema and the experiment if needed; return the experiment id.

    Done once, up front, under a file lock beside a sqlite store, so that processes starting on a
    brand-new store at once never race on its schema. Every way the store can refuse is a UserError.
    """
    check_store_uri(tracking_uri, experiment)
    if tracking_uri.startswith(("http://", "https://")):
        check_server(tracking_uri)
    elif tracking_uri.split(":")[0].split("+")[0] in DATABASE_SCHEMES:
        check_database(tracking_uri)
    db = sqlite_path(tracking_uri)
    try:
        if db is None:
            return _ensure_experiment(tracking_uri, experiment)
        db.parent.mkdir(parents=True, exist_ok=True)
        with open(db.parent / f".{db.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            return _ensure_experiment(tracking_uri, experiment)
    except (mlflow.exceptions.MlflowException, OSError) as exc:
        raise UserError(
            f"The tracking store {tracking_uri} could not be opened ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:300]}). It was left as it is. {STORE_HELP}"
        ) from exc


def _ensure_experiment(tracking_uri: str, experiment: str) -> str:
    client = mlflow.MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(
            experiment,
            artifact_location=artifact_location(tracking_uri),
            tags=dict([MACHINE_LEARNING]),
        )
    except mlflow.exceptions.MlflowException:  # another process created it meanwhile
        return client.get_experiment_by_name(experiment).experiment_id


def is_busy(exc: BaseException) -> bool:
    """A store that refused a write because another process holds it (sqlite's "database is
    locked"), looking through the chain of causes."""
    while exc is not None:
        if isinstance(exc, (mlflow.exceptions.MlflowException, OSError)) and any(
            word in str(exc).lower() for word in ("database is locked", "database is busy")
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def failure(exc: BaseException, tracking_uri: str) -> str | None:
    """Why the store itself failed, when `exc` (or its causes) is the store refusing or gone: a
    sqlite file deleted, a database error that is not a busy lock, a server that stopped answering.
    None for anything else."""
    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():
        return f"its database file {db} no longer exists"
    if is_busy(exc):
        return None
    while exc is not None:
        if isinstance(exc, (sqlalchemy.exc.DBAPIError, requests.ConnectionError)):
            return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        exc = exc.__cause__ or exc.__context__
    return None


def is_duplicate(exc: BaseException) -> bool:
    """A write refused by a unique key because another process made the same row first."""
    said = str(exc).lower()
    return "duplicate key" in said or "unique constraint" in said


def patiently(
    write: Callable[[], object],
    seconds: float = 60.0,
    retryable: Callable[[BaseException], bool] = is_busy,
) -> object:
    """A write that must land (a run's final status and error tag): retried for up to `seconds`
    while the store is busy (another process holding sqlite's write lock), so a failure we can see
    never leaves a run RUNNING only because the store was briefly locked; `retryable` names other
    refusals worth a second try."""
    deadline = time.monotonic() + seconds
    delay = 0.5
    while True:
        try:
            return write()
        except (mlflow.exceptions.MlflowException, OSError) as exc:
            if not retryable(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """MLflow draws a progress bar for every artifact it copies, several for one model load; a
    model is about a megabyte, so loads stay quiet."""
    with mock.patch.dict(os.environ, {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}):
        yield


def log_model(
    tracking_uri: str,
    run_id: str,
    model: torch.nn.Module,
    example: torch.Tensor,
    class_names: tuple[str, ...],
) -> None:
    """Log the servable model: raw pixels float32 [N, 1, 28, 28] -> probabilities [N, classes].

    MLflow 3 saves it with torch.export, which needs an input example with batch >= 2 so the batch
    dimension is exported as dynamic, plus a signature and explicit requirements (no env inference).
    The class names ride in the MLmodel file's metadata, so predict and serve name the outputs.
    """
    example = example[:2].float().cpu().numpy().astype(np.float32)
    model = model.cpu().eval().to(memory_format=torch.contiguous_format)  # undo channels_last
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        mlflow.pytorch.log_model(
            model,
            name="model",
            signature=infer_signature(example, output),
            input_example=example,
            metadata={"class_names": list(class_names)},
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}",
                f"mlflow=={mlflow.__version__}",
            ],
        )


def all_runs(
    client: mlflow.MlflowClient, experiment_ids: list[str], query: str
) -> list[mlflow.entities.Run]:
    """Every run matching the MLflow search filter, newest first (MLflow returns pages)."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, query, max_results=1000, page_token=token,
                                  order_by=["attributes.start_time DESC"])  # fmt: skip
        runs += page
        if not (token := page.token):
            return runs


def log_datasets(client: mlflow.MlflowClient, run_id: str, splits: list[dict]) -> None:
    """The run's training, validation and test data as MLflow datasets (the UI's Dataset column;
    search filters such as dataset.name = 'fashion-mnist' and dataset.context = 'test'): per split
    its content digest, the folder it came from, its size, class names and tensor schema."""
    schema = TensorDatasetSchema(
        features=Schema([TensorSpec(np.dtype(np.uint8), (-1, 1, 28, 28), "image")]),
        targets=Schema([TensorSpec(np.dtype(np.int64), (-1,), "label")]),
    )
    inputs = [
        DatasetInput(
            Dataset(
                name=split["name"],
                digest=split["digest"],
                source_type="local",
                source=json.dumps({"uri": Path(split["source"]).as_uri()}),
                schema=json.dumps(schema.to_dict()),
                profile=json.dumps({"num_images": split["n_images"], "classes": split["classes"]}),
            ),
            tags=[InputTag(MLFLOW_DATASET_CONTEXT, split["context"])],
        )  # fmt: skip
        for split in splits
    ]
    # MLflow adds a dataset to the experiment on first use, reading and then inserting: two runs
    # logging the same new dataset at once (parallel jobs) can both insert, and one is refused by
    # the unique key. Tried again, it finds the dataset the other run added.
    patiently(
        lambda: client.log_inputs(run_id, datasets=inputs),
        seconds=10,
        retryable=lambda exc: is_duplicate(exc) or is_busy(exc),
    )


def register_model(tracking_uri: str, model_uri: str, name: str, alias: str | None = None) -> str:
    """Add model_uri (runs:/<id>/model) to the registry under `name`, and point `alias` (moved
    from any version it named) at the new version; returns models:/<name>/<version>."""
    mlflow.set_tracking_uri(tracking_uri)
    version = mlflow.register_model(model_uri, name)
    if alias:
        mlflow.MlflowClient(tracking_uri).set_registered_model_alias(name, alias, version.version)
    return f"models:/{name}/{version.version}"
