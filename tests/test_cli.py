"""The command line as users type it: success, the store it writes, and errors. The tests marked
slow start `python -m fmnist_exp` in a subprocess; the others call the same entry point in the test
process (`run_main`), which is how most bad-input cases stay fast."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import REPO, run_cli


def fast(tmp_path: Path, data_dir: Path) -> list[str]:
    return ["trainer=fast", f"data.data_dir={data_dir}", f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            f"hydra.run.dir={tmp_path}/run"]  # fmt: skip


def runs_in(uri: str) -> list:
    client = mlflow.MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.slow
def test_train_command_prints_the_summary(tmp_path, real_data_dir):
    done = run_cli("model=lenet_bn", *fast(tmp_path, real_data_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = next(line for line in done.stdout.splitlines() if line.startswith("run "))
    assert "test/acc=" in summary and "params=44,470" in summary and "wall=" in summary
    assert "compare runs: make ui  (or: python -m fmnist_exp.ui)" in done.stdout
    (run,) = runs_in(f"sqlite:///{tmp_path}/mlflow.db")
    assert run.info.status == "FINISHED" and run.data.tags["overrides"].startswith("model=lenet_bn")
    assert (tmp_path / "run" / "checkpoints").is_dir()


@pytest.mark.slow
def test_a_piped_sweep_prints_a_line_per_epoch_and_no_banners(tmp_path, real_data_dir):
    """Piped (as under a scheduler or `| tee`), the progress bar is off and each epoch is one line
    on the console and in each job's train.log; Lightning's lines that say nothing are not printed,
    in the second job of a sweep either (each job sets up logging again); `compare runs` once."""
    args = [a for a in fast(tmp_path, real_data_dir) if not a.startswith("hydra.run.dir")]
    # the model logged, as by default: once MLflow's pytorch flavour has imported pytorch_lightning,
    # the second job's lines come through pytorch_lightning.utilities.rank_zero
    done = run_cli("--multirun", *args, "seed=1,2", "trainer.max_epochs=2",
                   "trainer.enable_progress_bar=true", "trainer.enable_model_summary=true",
                   f"hydra.sweep.dir={tmp_path}/sweep")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    console = done.stdout + done.stderr
    logs = [(tmp_path / "sweep" / job / "train.log").read_text() for job in ("0", "1")]
    for log, epochs in (
        (console, 2 * ["epoch 1/2", "epoch 2/2"]),
        *((t, ["epoch 1/2", "epoch 2/2"]) for t in logs),
    ):
        lines = [line.split(" - ")[-1] for line in log.splitlines() if " epoch " in f" {line}"]
        assert [line.split("  ")[0] for line in lines] == epochs, log[-2000:]
        assert all(" train loss " in line and " val loss " in line for line in lines), lines
        assert all(line.endswith(" s") and "acc " in line for line in lines), lines
    for noise in ("GPU available: False", "TPU available", "v_num", "Tip:", "Loading `train_dataloader`",
                  "Trainer already configured", "━━"):  # fmt: skip
        assert noise not in console, noise
    assert console.count("compare runs:") == 1


def test_mlflow_tracking_uri_env_wins(run_main, tmp_path, real_data_dir):
    args = [a for a in fast(tmp_path, real_data_dir) if not a.startswith("logger.tracking_uri")]
    env_store = f"sqlite:///{tmp_path}/from_env.db"
    done = run_main(*args, "logger.log_model=false", env={"MLFLOW_TRACKING_URI": env_store})
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(runs_in(env_store)) == 1


@pytest.mark.parametrize(
    "override,expected",
    [
        (
            "data.data_dir=/nonexistent/fmnist",
            "No dataset found. Searched: /nonexistent/fmnist (no such directory)",
        ),
        ("model.kernel_size=[5,20]", "model.kernel_size=[5, 20]: conv 2 has kernel 20"),
        ("model.channels=0", "model.channels=0 must be a positive int"),
        ("data.split=by_class", "data.split='by_class' is not one of"),
        ("++trainer.no_such_arg=1", "unexpected keyword argument 'no_such_arg'"),
        ("data.batch_size=abc", "data.batch_size='abc' must be a positive number"),
        ("seed=abc", "seed='abc' must be an int from 0 to 4294967295"),
        ("optimizer.lr=-1", "refused the optimizer settings (optimizer.lr=-1"),
        ("callbacks.ema.decay=1.5", "callbacks.ema.decay=1.5 must be a number between 0 and 1"),
        (
            "callbacks.ema=0.999",
            "callbacks.ema=0.999 sets a whole block of settings to one value; set its keys instead (callbacks.ema.decay;",
        ),
        ("module.label_smoothing=2", "module.label_smoothing=2 must be a number in [0, 1)"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 must be a whole number of passes"),
        (
            "logger.register_model=team/fmnist",
            "logger.register_model='team/fmnist' is not a registry name",
        ),
        ("trainer.max_epochs=1.5", "trainer.max_epochs=1.5 must be a whole number of passes"),
        ("model.channels=16.0", "model.channels=16.0 must be a positive int"),
        ("model.kernel_size=true", "model.kernel_size=True must be a positive int"),
        ("trainer.max_epochs=-1", "trainer.max_epochs=-1 (no limit) leaves the learning-rate"),
        ("trainer.max_epochs=-5", "trainer.max_epochs=-5 must be a whole number of passes"),
        # a key the run does not read, added with + or ++: refused, not recorded as if it acted
        ("+module.label_smothing=0.1", "+module.label_smothing=0.1: the run reads no module.label_smothing, so it would be recorded in MLflow and change nothing; did you mean module.label_smoothing?"),
        ("++module.label_smothing=0.1", "did you mean module.label_smoothing?"),
        ("+logger.register_models=fm", "did you mean logger.register_model?"),
        ("+skip_finish=true", "+skip_finish=true: the run reads no skip_finish"),
        ("+scheduler.warmup=100", "did you mean scheduler.warmup_steps?"),
        ("+data.val_sise=100", "did you mean data.val_size?"),
        ("~module.tta_hflip", "~module.tta_hflip: the run reads module.tta_hflip"),
        ("scheduler=one_cycle scheduler.pct_start=1.5", "refused the scheduler settings (scheduler.pct_start=1.5"),
    ],
)  # fmt: skip
def test_bad_input_is_one_paragraph_and_leaves_no_run(
    run_main, tmp_path, real_data_dir, override, expected
):
    done = run_main(*fast(tmp_path, real_data_dir), *override.split())
    assert_one_paragraph_error(done, expected)
    assert not (tmp_path / "mlflow.db").exists() or runs_in(f"sqlite:///{tmp_path}/mlflow.db") == []


def test_added_keys_take_effect_where_a_constructor_checks_them(run_main, tmp_path, real_data_dir):
    """++ on a key the files have is a plain change; a Lightning argument added under trainer.
    reaches the Trainer (its constructor refuses typos: the case above); an added key in a sweep is
    refused before the sweep's parent run exists."""
    from fmnist_exp import checks

    args = ["++module.label_smoothing=0.1", "++trainer.limit_val_batches=3", "+logger.tags.team=a"]
    checks.check_added_keys(args)  # nothing raised
    done = run_main(
        "--multirun",
        *fast(tmp_path, real_data_dir),
        "+module.label_smothing=0.1,0.2",
        f"hydra.sweep.dir={tmp_path}/sweep",
    )
    assert_one_paragraph_error(done, "did you mean module.label_smoothing?")
    assert not (tmp_path / "mlflow.db").exists() or runs_in(f"sqlite:///{tmp_path}/mlflow.db") == []


def assert_one_paragraph_error(done, expected: str) -> None:
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    error_lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and expected in error_lines[0], done.stderr[-2000:]


@pytest.mark.parametrize(
    "args, said",
    [
        (["colour=blue"], "colour=blue: training has no setting colour; `python -m fmnist_exp --help`"),
        (["trainer.max_epoch=3"], "training has no setting trainer.max_epoch; did you mean trainer.max_epochs?"),
        (["model.chanels=3"], "did you mean model.channels?"),
        (["model=resnet", "model.width=[8]"], "did you mean model.widths?"),
        (["modle=mlp"], "did you mean module or model?"),
        (["model=lenet_nb"], "model=lenet_nb: there is no conf/model/lenet_nb.yaml. Did you mean model=lenet_bn or model=lenet? The choices are lenet, lenet_bn,"),
        (["experiment=blog_mlpp"], "Did you mean experiment=blog_mlp?"),
        (["model.channels=[1,"], "the command line cannot be read: no viable alternative at input '[1,'. Each argument is KEY=VALUE"),
    ],
)  # fmt: skip
def test_a_command_line_hydra_refuses_names_the_closest_real_key(run_main, args, said):
    """Hydra's own text suggests `+key=` for a typo (which the run then refuses as a key it never
    reads); ours names the key or option meant, in one paragraph, exit 2 like any bad input."""
    assert_one_paragraph_error(run_main(*args), said)


def test_help_with_an_option_that_does_not_exist_is_one_paragraph(run_main):
    done = run_main("model=nosuch", "--help")
    assert_one_paragraph_error(done, "model=nosuch: there is no conf/model/nosuch.yaml")


def test_training_help_shows_every_setting_with_its_comment(capsys):
    from fmnist_exp.command_line import training_help

    out = training_help(["model=mlp"])
    assert out.startswith("python -m fmnist_exp [OVERRIDES]")
    assert "model=mlp  # " in out and "options: lenet, lenet_bn, lenet_relu, mlp, resnet" in out
    lines = out.splitlines()
    (epochs,) = [line for line in lines if line.strip().startswith("max_epochs:")]
    assert epochs.endswith("# passes over the training split")
    (seed,) = [line for line in lines if line.startswith("seed:")]
    assert "# seed_everything" in seed
    (auto,) = [line for line in lines if "steps_per_call:" in line]  # a comment on two lines
    assert "auto = 16" in auto
    assert "hidden:" in out and "channels:" not in out  # the composed mlp, not lenet_bn's keys


@pytest.mark.slow
def test_bad_input_in_a_real_process_exits_2_without_a_traceback(tmp_path, real_data_dir):
    """The cases above in the test process; one through `python -m fmnist_exp`, as users meet it."""
    done = run_cli(*fast(tmp_path, real_data_dir), "model.channels=0")
    assert_one_paragraph_error(done, "model.channels=0 must be a positive int")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without a GPU")
def test_gpu_without_a_gpu_is_lightnings_clear_error(run_main, tmp_path, real_data_dir):
    done = run_main(*fast(tmp_path, real_data_dir), "trainer.accelerator=gpu")
    assert_one_paragraph_error(done, "GPU")
    if torch.version.cuda is None:  # a CPU-only build: say so, whatever the machine has
        assert f"This torch ({torch.__version__}) is a CPU-only build" in done.stderr
        assert "make setup TORCH_INDEX=cu126" in done.stderr


def test_any_trainer_argument_can_be_set(run_main, tmp_path, real_data_dir):
    done = run_main(
        *fast(tmp_path, real_data_dir), "++trainer.max_steps=2", "logger.log_model=false"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = runs_in(f"sqlite:///{tmp_path}/mlflow.db")
    assert run.data.params["trainer.max_steps"] == "2"


@pytest.mark.slow
def test_built_wheel_finds_its_config_from_any_directory(tmp_path):
    """`pip install .` then `python -m fmnist_exp --cfg job` elsewhere: conf/ ships in the wheel."""
    wheels, site, elsewhere = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, REPO],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("fmnist_exp-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", site, wheel], check=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import fmnist_exp.paths as p; print(p.config_dir(), p.project_root())"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert where == [str(site / "fmnist_exp" / "conf"), str(elsewhere)]
    assert (site / "fmnist_exp" / "serve_page.html").is_file()  # the web app's page ships too
    done = subprocess.run([sys.executable, "-m", "fmnist_exp", "--cfg", "job", "model=lenet"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "fmnist_exp.models.LeNet" in done.stdout and "activation: tanh" in done.stdout


@pytest.mark.parametrize(
    "uri,expected",
    [
        ("foo://somewhere", "logger.tracking_uri='foo://somewhere' is not a tracking store"),
        ("{tmp}/plain", "is not a tracking store this project can use"),
        ("sqlite:///relative/mlflow.db", "is a relative path"),
        (
            "sqlite:///{tmp}/corrupt.db",
            "corrupt.db (logger.tracking_uri) is not an SQLite database",
        ),
    ],
    ids=["unknown-scheme", "plain-path", "relative-sqlite", "corrupt-db"],
)
def test_a_bad_tracking_store_is_one_paragraph_before_the_data_loads(
    run_main, tmp_path, real_data_dir, monkeypatch, uri, expected
):
    from fmnist_exp.data.datamodule import FashionMNISTDataModule

    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"not a database at all" * 100)
    monkeypatch.setattr(FashionMNISTDataModule, "setup", lambda *a: pytest.fail("data loaded"))
    done = run_main(
        *fast(tmp_path, real_data_dir), f"logger.tracking_uri={uri.format(tmp=tmp_path)}"
    )
    assert_one_paragraph_error(done, expected)
    assert corrupt.read_bytes() == b"not a database at all" * 100  # left as it was


def test_an_empty_experiment_name_is_one_paragraph(run_main, tmp_path, real_data_dir):
    done = run_main(*fast(tmp_path, real_data_dir), "logger.experiment=''")
    assert_one_paragraph_error(done, "logger.experiment='' must be a name")


def test_final_status_writes_wait_for_a_busy_store_and_nothing_else(monkeypatch):
    from mlflow.exceptions import MlflowException

    from fmnist_exp.tracking import store

    monkeypatch.setattr(store.time, "sleep", lambda s: None)
    calls = []

    def busy_twice():
        calls.append(1)
        if len(calls) < 3:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return "written"

    assert store.patiently(busy_twice) == "written" and len(calls) == 3
    calls.clear()

    def gone():
        calls.append(1)
        raise MlflowException("Run 'abc' not found")

    with pytest.raises(MlflowException, match="not found"):
        store.patiently(gone)
    assert len(calls) == 1  # not a busy store: no waiting


@pytest.mark.slow
def test_two_runs_starting_at_once_on_a_brand_new_store_both_finish(tmp_path, real_data_dir):
    store = f"logger.tracking_uri=sqlite:///{tmp_path}/new/mlflow.db"
    args = ["trainer=fast", f"data.data_dir={real_data_dir}", store, "logger.log_model=false"]
    processes = [
        subprocess.Popen([sys.executable, "-m", "fmnist_exp", *args, f"hydra.run.dir={tmp_path}/run{i}"],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]  # fmt: skip
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
    runs = runs_in(f"sqlite:///{tmp_path}/new/mlflow.db")
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
