"""Shared fixtures: the real dataset, composed configs with fast settings, a private MLflow store."""

import atexit
import functools
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning  # noqa: F401  (see below)
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from fmnist_exp.data import dataset
from fmnist_exp.paths import config_dir, register_resolvers

REPO = Path(__file__).resolve().parents[1]
# `import lightning` gives its logger a console handler on sys.stderr as it is at that moment. Here
# that is pytest's stream for the whole session; imported first inside a test (run_main, when only
# test_cli.py runs), it was that test's capsys stream, closed afterwards: every later test's
# "Seed set to 42" then printed a "--- Logging error ---" traceback into its stderr.
register_resolvers()


def share_the_cores() -> None:
    """Under pytest-xdist (`make test` runs 2 workers) each worker, and every process it starts,
    gets its share of the cores: torch's default, one thread per core in each worker, would
    oversubscribe them. An OMP_NUM_THREADS set by the caller wins."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


share_the_cores()


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The official IDX files; `make test` installs them (Debian package or download)."""
    for candidate in (
        os.environ.get("FMNIST_DATA_DIR"),
        REPO / "data" / "fashion-mnist",
        dataset.DEBIAN_DIR,
    ):
        if candidate and dataset.detect_format(Path(candidate)) == "idx":
            return Path(candidate)
    pytest.fail("Fashion-MNIST IDX files not found: run `make setup` (it installs them)")


@pytest.fixture(scope="session")
def real_data(real_data_dir: Path) -> dataset.Splits:
    return dataset.load([real_data_dir])


@functools.cache
def migrated_empty_store() -> Path:
    """An empty sqlite tracking store with MLflow's schema in place, made once per test process."""
    import mlflow

    folder = Path(tempfile.mkdtemp(prefix="fmnist-store-"))
    # removed when the process ends: the tests' copies of it are made by then
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    db = folder / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()  # runs the migrations
    return db


def ready_store(folder: Path) -> str:
    """sqlite:///<folder>/mlflow.db, made as a copy of the migrated empty store (a new one spends
    ~2 s in MLflow's schema migrations). The tests about making a store (the sweeps "on a fresh
    sqlite store", the CLI runs) start from nothing instead."""
    db = folder / "mlflow.db"
    if not db.exists():  # a test composes several configs on one store
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(migrated_empty_store(), db)
    return f"sqlite:///{db}"


def compose_config(overrides: list[str], tmp_path: Path, data_dir: Path) -> DictConfig:
    """The real config, made fast and private: its own output dir and sqlite store under tmp_path."""
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(
            "train",
            overrides=[
                "trainer=fast",
                f"data.data_dir={data_dir}",
                f"logger.tracking_uri={ready_store(tmp_path / 'mlruns')}",
                *overrides,
            ],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)  # as under `python -m fmnist_exp`: choices, overrides
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        del cfg.hydra
    return cfg


@pytest.fixture
def make_config(tmp_path: Path, real_data_dir: Path):
    return lambda *overrides: compose_config(list(overrides), tmp_path, real_data_dir)


def with_scratch_dirs(args: tuple[str, ...]) -> tuple[str, ...]:
    """Hydra's folders go to a fresh temporary directory unless ARGS name them, so no test writes
    into the checkout's outputs/."""
    if any(a.startswith(("hydra.run.dir=", "hydra.sweep.dir=")) for a in args):
        return args
    scratch = tempfile.mkdtemp(prefix="fmnist-cli-")
    return (*args, f"hydra.run.dir={scratch}/run", f"hydra.sweep.dir={scratch}/sweep")


def run_cli(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: int = 300):
    """`python -m fmnist_exp ARGS` in a subprocess, as a user would type it: for what only a real
    process shows (its exit status and stderr, signals, the environment, parallel workers)."""
    return subprocess.run(
        [sys.executable, "-m", "fmnist_exp", *with_scratch_dirs(args)],
        cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture
def run_main(monkeypatch, capsys):
    """`python -m fmnist_exp ARGS` inside the test process: the same Hydra entry point, command-line
    parsing and error handling (SystemExit's code is the exit status), without the ~8 s a new
    process spends importing Lightning and MLflow. For runs that stop at bad input or train a few
    steps, and for --multirun sweeps with the basic launcher (jobs run in this process too);
    `env` is set for the call only. Returns a CompletedProcess like run_cli."""
    from fmnist_exp.__main__ import main

    def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        args = with_scratch_dirs(args)
        capsys.readouterr()  # only this call's output
        handlers, level = logging.root.handlers[:], logging.root.level  # Hydra sets up its own
        with monkeypatch.context() as scoped:
            scoped.setattr(sys, "argv", ["fmnist_exp", *args])
            for key, value in (env or {}).items():
                scoped.setenv(key, value)
            try:
                main()
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            finally:
                logging.root.handlers[:], logging.root.level = handlers, level
                HydraConfig.instance().cfg = None  # a later test is not a job of this sweep
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["fmnist_exp", *args], code, out, err)

    return run


def wait_until_it_answers(url: str, process: subprocess.Popen, timeout_s: float = 120) -> None:
    """Poll `url` until it answers 200 while `process` (a server starting up) stays alive. Refused
    connections and slow answers (a server busy starting its workers on a loaded machine) both
    mean "not yet"; only the deadline (which kills the process) or the process's exit end the wait."""
    import requests

    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, process.stdout.read()[-3000:]
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{url} did not answer in {timeout_s:.0f} s")
        try:
            if requests.get(url, timeout=2).ok:
                return
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.5)


def made_once(tmp_path_factory: pytest.TempPathFactory, name: str, make) -> Path:
    """`make(folder)` once per test session instead of once per pytest-xdist worker (which is what
    a module- or session-scoped fixture gives): the workers share the parent of their temporary
    folders, and a file lock holds the second worker until the first has finished. For fixtures
    that only write their own folder and that the tests then only read."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    folder = root / name
    with FileLock(f"{folder}.lock"):
        if not (folder / ".made").exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed first attempt left
            folder.mkdir()
            make(folder)
            (folder / ".made").touch()
    return folder


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, real_data_dir):
    """One short LeNet+BN run (150 batches, ~80% test accuracy, tested on the whole test split, so
    it is a result) with its model logged and registered as models:/fmnist/1, in a private store:
    what predict and serve load."""
    from fmnist_exp.train import train

    tmp = tmp_path_factory.mktemp("model")
    cfg = compose_config(
        ["trainer.limit_train_batches=150", "trainer.limit_test_batches=null",
         "logger.register_model=fmnist"], tmp, real_data_dir,
    )  # fmt: skip
    results = train(cfg)
    run = mlflow_runs(cfg.logger.tracking_uri)[0]
    checkpoint = next((tmp / "run" / "checkpoints").glob("epoch*.ckpt"))
    return {
        "tracking_uri": cfg.logger.tracking_uri,
        "run_id": run.info.run_id,
        "checkpoint": checkpoint,
        "test_acc": results["test/acc"],
    }


def mlflow_runs(tracking_uri: str, experiment: str = "fashion-mnist"):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests (subprocesses, real training) first, each group in file order: the xdist workers
    then share out the long ones early and finish together on the short ones."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
