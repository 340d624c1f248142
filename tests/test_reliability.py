"""Nothing lost: kill -9 and resume, SIGTERM, a diverging job in a sweep, finishing a killed sweep,
many writers on one sqlite store. Real processes, real signals, the real dataset (the slow tests);
the errors that stop a run before it starts, and the diverging job's sweep (basic launcher), go
through the entry point in the test process."""

import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import torch
from conftest import REPO, run_cli, wait_until_it_answers
from omegaconf import OmegaConf

from fmnist_exp import run_tables
from fmnist_exp.models import LeNet, count_parameters
from fmnist_exp.tracking import resume
from fmnist_exp.tracking.sweep import PARENT_FILE, processes_under
from fmnist_exp.training.callbacks import FiniteLossGuard, NonFiniteLoss

SHORT = ["trainer=fast", "trainer.max_epochs=3", "trainer.limit_train_batches=40",
         "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "logger.log_model=false"]  # fmt: skip


def store(tmp: Path) -> str:
    return f"sqlite:///{tmp}/mlflow.db"


def runs(tmp: Path, experiment: str = "fashion-mnist") -> list:
    client = mlflow.MlflowClient(store(tmp))
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def history(tmp: Path, run_id: str, key: str) -> list[int]:
    return [m.step for m in mlflow.MlflowClient(store(tmp)).get_metric_history(run_id, key)]


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fmnist_exp", *args], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


@pytest.mark.slow
def test_kill_9_then_resume_gives_one_finished_run_with_every_epoch_once(tmp_path, real_data_dir):
    # epochs long enough (~2 s on a fast CPU) that the kill lands inside the second one
    common = [*SHORT, "trainer.limit_train_batches=150", f"data.data_dir={real_data_dir}",
              f"logger.tracking_uri={store(tmp_path)}"]  # fmt: skip
    process = start([*common, f"hydra.run.dir={tmp_path}/run"])
    wait_for(tmp_path / "run" / "checkpoints" / "last.ckpt", process)  # what resume starts from
    time.sleep(0.3)  # into the second epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    (killed,) = runs(tmp_path)
    assert killed.info.status == "RUNNING"  # what kill -9 leaves behind, until resumed
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    first_leg_s = last["fit_seconds"]  # training seconds up to the checkpoint resume starts from
    assert first_leg_s > 0

    done = run_cli(*common, "resume=last")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming run {killed.info.run_id}" in done.stdout
    (run,) = runs(tmp_path)
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    for key in ("train/loss", "val/acc"):
        steps = history(tmp_path, run.info.run_id, key)
        assert sorted(steps) == [1, 2, 3]  # each epoch exactly once, at step = epochs trained
    metrics = run.data.metrics  # the run's times cover both legs, not only the last
    assert metrics["time/fit_earlier_legs_s"] == pytest.approx(first_leg_s)
    assert metrics["time/total_s"] > metrics["time/fit_s"] > first_leg_s

    # That it then trains exactly like a run never stopped (weights bit for bit) is
    # test_a_resumed_run_ends_with_exactly_the_weights_of_one_never_stopped, in process.


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_marks_killed_and_resumes_by_id(tmp_path, real_data_dir):
    common = [*SHORT, f"data.data_dir={real_data_dir}", f"logger.tracking_uri={store(tmp_path)}"]
    process = start([*common, f"hydra.run.dir={tmp_path}/run"])
    # last.ckpt, not epoch000.ckpt: it is what resume starts from, and it is written just after the
    # epoch's own checkpoint (a SIGTERM between the two once left nothing to resume from)
    wait_for(tmp_path / "run" / "checkpoints" / "last.ckpt", process)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "interrupted: stopped by SIGTERM" in output
    (run,) = runs(tmp_path)
    assert run.info.status == "KILLED" and "SIGTERM" in run.data.tags["error"]
    assert (tmp_path / "run" / "checkpoints" / "interrupted.ckpt").is_file()

    done = run_cli(f"resume={run.info.run_id}", f"data.data_dir={real_data_dir}",
                   f"logger.tracking_uri={store(tmp_path)}")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = runs(tmp_path)
    assert run.info.status == "FINISHED" and len(history(tmp_path, run.info.run_id, "val/acc")) == 3
    assert "error" not in run.data.tags  # the first leg's; the run finished


def test_a_signal_during_a_store_write_waits_for_the_write(tmp_path):
    """A SIGTERM that landed as an MLflow write committed (here: at SQLAlchemy's commit event)
    left sqlite's write lock held while the stop was handled, so the run's own error tag and KILLED
    status could not be written (a suite run saw 60 s of "database is locked" and a RUNNING run).
    Now the write ends, the store stays writable, and the stop comes at the next batch."""
    import os

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from fmnist_exp.training.callbacks import RunInterrupted, StopOnSignal

    client = mlflow.MlflowClient(store(tmp_path))
    run_id = client.create_run(client.create_experiment("signals")).info.run_id
    fired = []

    def signal_at_commit(conn):
        if not fired:
            fired.append(conn)
            os.kill(os.getpid(), signal.SIGTERM)  # handled here, inside SQLAlchemy's frames

    event.listen(Engine, "commit", signal_at_commit)
    stopped = []
    try:
        with StopOnSignal(tmp_path / "checkpoints") as stop:
            try:
                client.set_tag(run_id, "written", "during the signal")
                stop.on_train_batch_start(None, None, None, 0)  # the next batch
            except RunInterrupted as exc:  # held while the stop is recorded, as lifecycle() does
                stopped.append(exc)
                client.set_terminated(run_id, "KILLED")  # was: database is locked
    finally:
        event.remove(Engine, "commit", signal_at_commit)
    assert fired and stopped and stop.received == "SIGTERM"
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["written"] == "during the signal"


@pytest.mark.slow
def test_sigterm_before_the_first_epoch_ends_says_to_start_again(tmp_path, real_data_dir):
    common = [*SHORT, "trainer.limit_train_batches=400", f"data.data_dir={real_data_dir}",
              f"logger.tracking_uri={store(tmp_path)}"]  # fmt: skip
    process = start([*common, f"hydra.run.dir={tmp_path}/run"])
    wait_for(tmp_path / "run" / "config.yaml", process)  # written once the signal handler is on
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "nothing to resume: run the same command again" in output
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    (run,) = runs(tmp_path)
    assert run.info.status == "KILLED"


def test_a_resumed_run_ends_with_exactly_the_weights_of_one_never_stopped(tmp_path, real_data_dir):
    """Stopped as SIGTERM stops it (RunInterrupted at the start of epoch 2) and resumed: the same
    batches in the same order (epoch 2's, not epoch 0's again, which resumed runs used to train
    on), the same dropout draws (the random states ride in the checkpoint), the optimizer, schedule
    and moving average restored: the last checkpoint is bit for bit the straight run's, raw weights
    and average alike."""
    import lightning as L
    from conftest import compose_config

    from fmnist_exp.train import train
    from fmnist_exp.training.callbacks import RunInterrupted

    class StopAtEpoch2(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                raise RunInterrupted("SIGTERM")

    common = ["trainer.max_epochs=3", "trainer.limit_train_batches=10", "logger.log_model=false",
              "callbacks.ema.decay=0.9", "data.augment.hflip=true", "model.dropout=0.2"]  # fmt: skip
    straight = compose_config(common, tmp_path / "straight", real_data_dir)
    train(straight)
    cut = compose_config(common, tmp_path / "cut", real_data_dir)
    with pytest.raises(RunInterrupted):
        train(cut, extra_callbacks=[StopAtEpoch2()])
    client = mlflow.MlflowClient(cut.logger.tracking_uri)
    (killed,) = client.search_runs([client.get_experiment_by_name("fashion-mnist").experiment_id])
    assert killed.info.status == "KILLED"
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        train(
            compose_config(
                [*common, f"resume={killed.info.run_id}"], tmp_path / "cut", real_data_dir
            )
        )
    # its own checkpoints in its own folder: Lightning's "exists and is not empty" is noise here
    assert not [w for w in warned if "is not empty" in str(w.message)]

    def last(folder):
        return torch.load(folder / "run/checkpoints/last.ckpt", weights_only=False)

    a, b = last(tmp_path / "straight"), last(tmp_path / "cut")
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"] == 30
    for weights in ("state_dict", "current_model_state"):  # the average, the raw weights
        for name, value in a[weights].items():
            assert torch.equal(value, b[weights][name]), (weights, name)


def test_resume_refuses_overrides_it_would_ignore_and_fills_keys_added_since(
    run_main, tmp_path, real_data_dir
):
    """resume=<id> continues with the run's saved config: a new value for a setting would be
    silently ignored, so it is refused, naming each key and the run's own value; settings of how a
    run shows are taken from the command. A saved config without a key this version reads (one
    added since) continues with the key's default, said once."""
    import lightning as L
    from conftest import compose_config

    from fmnist_exp.train import train
    from fmnist_exp.training.callbacks import RunInterrupted

    class StopAtEpoch1(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise RunInterrupted("SIGTERM")

    cut = compose_config(["trainer.max_epochs=2", "trainer.limit_train_batches=5",
                          "logger.log_model=false"], tmp_path, real_data_dir)  # fmt: skip
    with pytest.raises(RunInterrupted):
        train(cut, extra_callbacks=[StopAtEpoch1()])
    (killed,) = runs(tmp_path / "mlruns")
    where = [f"logger.tracking_uri={cut.logger.tracking_uri}"]
    done = run_main(
        *where, f"resume={killed.info.run_id}", "trainer.max_epochs=6", "optimizer.lr=0.1"
    )
    assert done.returncode == 2, done.stderr[-2000:]
    said = " ".join(done.stderr.split())
    assert "trainer.max_epochs=6 (the run has trainer.max_epochs=2)" in said
    assert "optimizer.lr=0.1 (the run has optimizer.lr=0.001)" in said
    assert "Resume with the same command without them, or start a new run" in said

    saved = tmp_path / "run" / "config.yaml"
    old = OmegaConf.load(saved)
    del old.module["steps_per_call"]  # as a run saved before the key existed
    OmegaConf.save(old, saved)
    done = run_main(*where, f"resume={killed.info.run_id}", "trainer.enable_progress_bar=false")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("saved config has no module.steps_per_call") == 1
    (run,) = runs(tmp_path / "mlruns")
    assert run.info.status == "FINISHED" and run.data.params["module.steps_per_call"] == "1"


def test_a_run_stopped_while_logging_its_model_resumes_without_doubles(tmp_path, real_data_dir,
                                                                     monkeypatch):  # fmt: skip
    """Stopped after its test, while its model was being logged (the logged model left PENDING):
    resumed, it logs each test figure once, marks the unfinished model FAILED and logs one that
    is READY."""
    from conftest import compose_config

    from fmnist_exp.tracking import store as tracking_store
    from fmnist_exp.train import train
    from fmnist_exp.training.callbacks import RunInterrupted

    def stopped_while_logging(uri, run_id, *args):
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.MlflowClient(uri).get_run(run_id).info.experiment_id
        mlflow.initialize_logged_model(name="model", source_run_id=run_id, experiment_id=experiment)
        raise RunInterrupted("SIGTERM")

    common = ["trainer.limit_train_batches=5"]
    with monkeypatch.context() as patched:
        patched.setattr(tracking_store, "log_model", stopped_while_logging)
        with pytest.raises(RunInterrupted):
            train(compose_config(common, tmp_path, real_data_dir))
    (killed,) = runs(tmp_path / "mlruns")
    assert killed.info.status == "KILLED" and "test/acc" in killed.data.metrics
    train(compose_config([*common, f"resume={killed.info.run_id}"], tmp_path, real_data_dir))
    (run,) = runs(tmp_path / "mlruns")
    assert run.info.status == "FINISHED"
    client = mlflow.MlflowClient(store(tmp_path / "mlruns"))
    for key in ("test/acc", "test/loss", "test/n_images"):
        assert len(client.get_metric_history(run.info.run_id, key)) == 1, key
    models = client.search_logged_models([run.info.experiment_id])
    assert sorted(str(m.status) for m in models) == ["FAILED", "READY"]


def test_resume_errors_are_clear(run_main, tmp_path, real_data_dir):
    common = [f"data.data_dir={real_data_dir}", f"logger.tracking_uri={store(tmp_path)}"]
    done = run_main(*common, "resume=0123456789abcdef")
    assert done.returncode == 2 and "resume=0123456789abcdef: no such run" in done.stderr
    done = run_main(*SHORT, *common, "resume=last")
    assert done.returncode == 2 and "resume=last: no unfinished run" in done.stderr
    done = run_main(*SHORT, *common, "skip_finished=flase")  # a typo: a string, truthy
    assert done.returncode == 2 and "skip_finished=flase: must be true or false" in done.stderr
    assert runs(tmp_path) == []  # refused before any run exists


@pytest.mark.slow
def test_a_diverging_job_fails_clearly_and_the_sweep_goes_on(run_main, tmp_path, real_data_dir):
    done = run_main("--multirun", "model=mlp", "optimizer=sgd", "optimizer.lr=0.01,10000", *SHORT,
                   f"data.data_dir={real_data_dir}", f"logger.tracking_uri={store(tmp_path)}",
                   f"hydra.sweep.dir={tmp_path}/sweep")  # fmt: skip
    assert done.returncode != 0
    children = [r for r in runs(tmp_path) if r.data.tags.get("sweep") != "parent"]
    jobs = {float(r.data.params["optimizer.lr"]): r for r in children}
    assert jobs[0.01].info.status == "FINISHED"
    assert jobs[10000].info.status == "FAILED"
    assert "NaN or infinite at optimizer step" in jobs[10000].data.tags["error"]
    assert "optimizer.lr=10000" in done.stderr and "1 job(s) failed" in done.stderr


def test_the_loss_guard_names_the_first_non_finite_step_once_per_window():
    guard = FiniteLossGuard(check_every=4)
    trainer = SimpleNamespace(global_step=0, current_epoch=1)
    sgd = {"lr": 3.0, "_target_": "torch.optim.SGD"}
    module = SimpleNamespace(hparams=SimpleNamespace(optimizer=sgd))
    for step, loss in enumerate([1.0, 0.5, 0.7, 0.2, 0.4], start=1):  # a finite window of 4: quiet
        trainer.global_step = step
        guard.on_train_batch_end(trainer, module, {"loss": torch.tensor(loss)}, None, step - 1)
    trainer.global_step = 6
    guard.on_train_batch_end(trainer, module, torch.tensor(float("inf")), None, 5)  # not looked at
    with pytest.raises(NonFiniteLoss, match=r"optimizer step 6 \(epoch 1\).*optimizer.lr=3.0, SGD"):
        guard.on_train_epoch_end(trainer, module)  # the epoch's end looks at a part-filled window
    guard.on_validation_start(trainer, module)  # nothing since the last look: nothing to raise
    for step, loss in enumerate([0.3, float("nan"), 0.2], start=7):
        trainer.global_step = step
        guard.on_train_batch_end(trainer, module, torch.tensor(loss), None, step - 1)
    trainer.global_step = 10
    with pytest.raises(NonFiniteLoss, match="optimizer step 8 "):  # a full window looks by itself
        guard.on_train_batch_end(trainer, module, torch.tensor(0.1), None, 9)
    trainer.global_step = 13  # module.steps_per_call=3: one call, three steps, three losses
    guard.on_train_batch_end(trainer, module, torch.tensor([0.1, float("nan"), 0.2]), None, 10)
    with pytest.raises(NonFiniteLoss, match="optimizer step 12 "):
        guard.on_train_epoch_end(trainer, module)


@pytest.mark.slow
def test_skip_finished_completes_a_killed_sweep(tmp_path, real_data_dir):
    sweep = ["--multirun", "model=lenet_bn", "model.channels=4,6", *SHORT, f"data.data_dir={real_data_dir}",
             f"logger.tracking_uri={store(tmp_path)}"]  # fmt: skip
    process = start([*sweep, f"hydra.sweep.dir={tmp_path}/first"])
    # job 1 under way, with something to resume from: last.ckpt is written just after epoch000.ckpt,
    # and a kill between the two leaves a run that must start again (the fresh clone at a3c3c91 hit it)
    wait_for(tmp_path / "first" / "1" / "checkpoints" / "last.ckpt", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = {
        r.data.params["model.channels"]: r
        for r in runs(tmp_path)
        if r.data.tags.get("sweep") != "parent"
    }
    assert before["4"].info.status == "FINISHED" and before["6"].info.status == "RUNNING"

    done = run_cli(*sweep, "skip_finished=true", f"hydra.sweep.dir={tmp_path}/second")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skipped: this config already FINISHED" in done.stdout
    assert (
        ": 2 jobs: 1 trained, 1 reused (FINISHED before; skip_finished=true), 2 partial"
        in done.stdout
    )
    children = [r for r in runs(tmp_path) if r.data.tags.get("sweep") != "parent"]
    assert len(children) == 2  # nothing trained twice (counted before keying by width)
    after = {r.data.params["model.channels"]: r for r in children}
    assert after["4"].info.run_id == before["4"].info.run_id
    assert (
        after["6"].info.run_id == before["6"].info.run_id and after["6"].info.status == "FINISHED"
    )
    assert len(history(tmp_path, after["6"].info.run_id, "val/acc")) == 3
    # The second sweep's report holds both jobs: the one it finished and the one it reused.
    second = (tmp_path / "second" / PARENT_FILE).read_text().strip()
    table = run_tables.build_table(
        run_tables.select_runs(store(tmp_path), "fashion-mnist", second, "")[0]
    )
    assert sorted(table.status) == ["FINISHED", "FINISHED (reused)"]
    assert set(table.run_id) == {after["4"].info.run_id, after["6"].info.run_id}


@pytest.mark.slow
def test_sigterm_to_a_joblib_sweep_stops_its_workers_and_marks_the_parent_killed(
    tmp_path, real_data_dir
):
    """`kill <sweep pid>` used to end only the sweep's own process: joblib's workers trained on as
    orphans and the parent run stayed RUNNING."""
    process = start(["--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model.channels=4,6",
                     *SHORT, "trainer.limit_train_batches=150", f"data.data_dir={real_data_dir}",
                     f"logger.tracking_uri={store(tmp_path)}", f"hydra.sweep.dir={tmp_path}/sweep"])  # fmt: skip
    for job in ("0", "1"):  # both jobs under way, with something to resume from
        wait_for(tmp_path / "sweep" / job / "checkpoints" / "last.ckpt", process)
    workers = processes_under(process.pid)
    assert workers  # joblib's worker processes
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "Finish it with the same command and skip_finished=true" in output
    (parent,) = [r for r in runs(tmp_path) if r.data.tags.get("sweep") == "parent"]
    assert parent.info.status == "KILLED" and "SIGTERM" in parent.data.tags["error"]
    jobs = [r for r in runs(tmp_path) if r.data.tags.get("sweep") != "parent"]
    assert len(jobs) == 2 and {r.info.status for r in jobs} <= {"KILLED", "FINISHED"}
    assert any(r.info.status == "KILLED" for r in jobs)  # each of the 2 had 2 epochs to go
    deadline = time.monotonic() + 30
    while (
        alive := [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    ) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive  # no worker trains on


@pytest.mark.slow
def test_four_jobs_at_once_on_a_fresh_sqlite_store(tmp_path, real_data_dir):
    """Four joblib workers start together on a store that does not exist yet: the store, the
    experiment and the parent run are made once, before any of them (they used to race on MLflow's
    schema migrations). Also the kernel sweep from the README, on 4 workers."""
    done = run_cli("--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "model.kernel_size=3,5",
                   "seed=1,2", "trainer=fast", "trainer.limit_train_batches=4", "trainer.limit_val_batches=1",
                   "trainer.limit_test_batches=1", "logger.log_model=false", f"data.data_dir={real_data_dir}",
                   f"logger.tracking_uri={store(tmp_path)}", f"hydra.sweep.dir={tmp_path}/sweep",
                   env={"OMP_NUM_THREADS": "1"}, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert runs(tmp_path, "Default") == []  # nothing lands outside the experiment
    children = [r for r in runs(tmp_path) if r.data.tags.get("sweep") != "parent"]
    jobs = sorted(
        (int(r.data.params["model.kernel_size"]), int(r.data.params["seed"])) for r in children
    )
    assert jobs == [(3, 1), (3, 2), (5, 1), (5, 2)]
    for run in children:
        assert run.info.status == "FINISHED"
        assert {"test/acc", "val/acc", "train/loss", "model/params_total", "time/total_s"} <= set(
            run.data.metrics
        )
        kernel = int(run.data.params["model.kernel_size"])
        expected = count_parameters(LeNet(kernel_size=kernel, batch_norm=True))[0]
        assert run.data.metrics["model/params_total"] == expected
    assert os.path.getsize(tmp_path / "mlflow.db") > 0


def test_an_unwritable_output_folder_fails_before_any_run(run_main, tmp_path, real_data_dir):
    (tmp_path / "a_file").write_text("not a folder")
    done = run_main("trainer=fast", f"data.data_dir={real_data_dir}", f"logger.tracking_uri={store(tmp_path)}",
                   f"hydra.run.dir={tmp_path}/a_file/run")  # fmt: skip
    assert (
        done.returncode == 2
        and "cannot be written" in done.stderr
        and "hydra.run.dir" in done.stderr
    )
    assert runs(tmp_path) == []


def test_a_full_disk_fails_the_run_and_says_how_to_resume(make_config, monkeypatch):
    import errno

    import lightning as L

    from fmnist_exp.errors import UserError
    from fmnist_exp.train import train

    cfg = make_config()

    def full(self, filepath, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(filepath))

    monkeypatch.setattr(L.Trainer, "save_checkpoint", full)
    with pytest.raises(UserError, match=r"No space left on device while writing .*resume="):
        train(cfg)
    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("fashion-mnist").experiment_id])
    assert run.info.status == "FAILED"


def test_an_unreachable_tracking_server_fails_fast(run_main, tmp_path, real_data_dir):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    done = run_main("trainer=fast", f"data.data_dir={real_data_dir}", f"hydra.run.dir={tmp_path}/run",
                    env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"})  # fmt: skip
    assert (
        done.returncode == 2
        and f"tracking server http://127.0.0.1:{port} does not answer" in done.stderr
    )
    assert time.monotonic() - started < 60  # no minutes of retries


POSTGRES = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


@pytest.mark.slow
@pytest.mark.skipif(
    not POSTGRES,
    reason="needs Debian's postgresql (`make setup` installs it where apt-get runs as root)",
)
def test_parallel_jobs_against_a_postgres_backed_tracking_server(real_data_dir):
    """Four jobs through `make tracking-server`'s server; then a run straight on its database
    (postgresql://, psycopg 3) and a login the database refuses, which fails in seconds naming it."""
    pytest.importorskip(
        "psycopg", reason="needs psycopg 3 (the `server` extra; make test-deps installs it)"
    )
    import shutil
    import socket
    import tempfile

    with socket.socket() as one, socket.socket() as two:  # both held at once: two different ports
        one.bind(("127.0.0.1", 0))  # (one at a time, the OS gave the same port twice in a fresh
        two.bind(("127.0.0.1", 0))  # clone: Postgres took it and MLflow could not bind)
        ports = [one.getsockname()[1], two.getsockname()[1]]
    home = Path(tempfile.mkdtemp(prefix="fmnist-server-", dir="/tmp"))
    home.chmod(0o755)  # the postgres user must reach its data folder
    env = {
        **os.environ,
        "DIR": str(home),
        "PORT": str(ports[0]),
        "PGPORT": str(ports[1]),
        "PY": sys.executable,
        "WORKERS": "2",  # still parallel, and two fewer processes to start than MLflow's default 4
    }
    server = subprocess.Popen([str(REPO / "scripts" / "tracking_server.sh")], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    uri = f"http://127.0.0.1:{ports[0]}"
    try:
        wait_until_it_answers(f"{uri}/health", server)
        done = run_cli("--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "seed=1,2,3,4",
                       "trainer=fast", "trainer.limit_train_batches=4", "trainer.limit_val_batches=1",
                       "trainer.limit_test_batches=1", f"data.data_dir={real_data_dir}",
                       f"hydra.sweep.dir={home}/sweep", env={"MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"},
                       timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        client = mlflow.MlflowClient(uri)
        experiment = client.get_experiment_by_name("fashion-mnist")
        children = [
            r
            for r in client.search_runs([experiment.experiment_id])
            if r.data.tags.get("sweep") != "parent"
        ]
        assert sorted(int(r.data.params["seed"]) for r in children) == [1, 2, 3, 4]
        for run in children:
            assert run.info.status == "FINISHED" and {"test/acc", "val/acc", "train/loss"} <= set(
                run.data.metrics
            )
            assert any(
                a.path == "config.yaml" for a in client.list_artifacts(run.info.run_id)
            )  # via the server
        database = f"127.0.0.1:{ports[1]}/mlflow"
        direct = run_cli("trainer=fast", "logger.log_model=false", "logger.experiment=direct",
                         f"data.data_dir={real_data_dir}", f"hydra.run.dir={home}/run",
                         env={"MLFLOW_TRACKING_URI": f"postgresql://mlflow@{database}"}, cwd=home)  # fmt: skip
        assert direct.returncode == 0, direct.stderr[-3000:]
        started = time.monotonic()
        refused = run_cli("trainer=fast", f"data.data_dir={real_data_dir}", cwd=home, timeout=120,
                          env={"MLFLOW_TRACKING_URI": f"postgresql://nobody:secret@{database}"})  # fmt: skip
        said = " ".join(refused.stderr.split())
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
        assert f"The tracking database 127.0.0.1:{ports[1]} " in said and "secret" not in said
        assert time.monotonic() - started < 60
    finally:
        server.terminate()
        server.wait(timeout=30)
        subprocess.run([str(REPO / "scripts" / "tracking_server.sh"), "stop"], env=env, timeout=60)
        shutil.rmtree(home, ignore_errors=True)


def test_numbers_hash_by_value(make_config):
    """`data.augment.erase_prob=0` (an int on the command line) is the config's 0.0: same hash, so
    skip_finished finds the run."""
    default = make_config("experiment=recipe_lenet_bn_c16_k53", "skip_finished=true")
    typed_int = make_config("experiment=recipe_lenet_bn_c16_k53", "data.augment.erase_prob=0")
    assert isinstance(default.data.augment.erase_prob, float)
    assert isinstance(typed_int.data.augment.erase_prob, int)
    assert resume.config_hash(typed_int, "d") == resume.config_hash(default, "d")
    other = make_config("experiment=recipe_lenet_bn_c16_k53", "data.augment.erase_prob=0.25")
    assert resume.config_hash(other, "d") != resume.config_hash(default, "d")
    kept = resume.integral_floats_as_ints({"a": [1.0, 1e-3, True, float("inf")]})["a"]
    assert [type(v) for v in kept] == [int, float, bool, float]  # 1 == 1.0: compare the types

    client = mlflow.MlflowClient(default.logger.tracking_uri)
    experiment = client.create_experiment(default.logger.experiment)
    tagged = client.create_run(experiment, tags={"config_hash": resume.config_hash(typed_int, "d")})
    client.set_terminated(tagged.info.run_id, "FINISHED")
    action, previous = resume.choose(default, resume.config_hash(default, "d"))
    assert (action, previous.run_id) == ("skip", tagged.info.run_id)


def test_a_store_that_stays_locked_fails_the_run_in_one_paragraph(make_config, monkeypatch):
    from mlflow.exceptions import MlflowException

    from fmnist_exp.errors import UserError
    from fmnist_exp.tracking.run import RunLogger
    from fmnist_exp.train import train

    cfg = make_config("logger.log_model=false")

    def locked(self, metrics, step=None):
        raise MlflowException("(sqlite3.OperationalError) database is locked")

    monkeypatch.setattr(RunLogger, "log_metrics", locked)
    with pytest.raises(UserError, match=r"stayed busy .* is FAILED; .* resume="):
        train(cfg)
    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("fashion-mnist").experiment_id])
    assert run.info.status == "FAILED" and "database is locked" in run.data.tags["error"]


def test_a_store_deleted_mid_run_is_one_paragraph_naming_the_checkpoints(make_config, caplog):
    """The sqlite file removed while a run trains: the next write fails, nothing more can be
    recorded, and the user reads one paragraph (the store, the run, where its checkpoints are, how
    to go on), not MLflow's logged tracebacks (~600 lines)."""
    import lightning as L

    from fmnist_exp.errors import UserError
    from fmnist_exp.tracking.store import sqlite_path
    from fmnist_exp.train import train

    cfg = make_config("trainer.max_epochs=3", "logger.log_model=false")
    db = sqlite_path(cfg.logger.tracking_uri)

    class DeleteTheStore(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                db.unlink()

    with pytest.raises(UserError) as raised:
        train(cfg, extra_callbacks=[DeleteTheStore()])
    said = str(raised.value)
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    assert f"its database file {db} no longer exists" in said and str(checkpoints) in said
    assert "resume=" in said and (checkpoints / "last.ckpt").is_file()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_checkpoint_save_that_fails_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    import errno

    from fmnist_exp.training import checkpoint_io

    target = tmp_path / "checkpoints" / "last.ckpt"
    io = checkpoint_io.AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1, "weights": torch.arange(1000)}, target)
    before = target.read_bytes()

    def disk_fills_up(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", disk_fills_up)
    with pytest.raises(OSError) as err:
        io.save_checkpoint({"epoch": 2}, target)
    assert err.value.filename == str(target)  # the checkpoint, not a temporary name
    assert target.read_bytes() == before and list(target.parent.iterdir()) == [target]


def test_resume_falls_back_to_the_newest_checkpoint_that_reads_whole(tmp_path, trained_model):
    import os

    from fmnist_exp.errors import UserError
    from fmnist_exp.tracking import resume

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    whole = trained_model["checkpoint"].read_bytes()
    for name, data, age in (("epoch000.ckpt", whole, 30), ("epoch001.ckpt", whole[:9000], 20),
                            ("last.ckpt", whole[:5000], 10)):  # fmt: skip
        (folder / name).write_bytes(data)
        os.utime(folder / name, (time.time() - age,) * 2)
    assert resume.last_checkpoint(tmp_path) == folder / "epoch000.ckpt"
    (folder / "epoch000.ckpt").unlink()
    assert resume.last_checkpoint(tmp_path) == folder / "last.ckpt"  # nothing whole: name it
    previous = resume.Previous("abc123", "KILLED", tmp_path)
    with pytest.raises(UserError, match=r"last\.ckpt is damaged .* left as it is"):
        resume.resumable(previous, "resume=abc123")


def test_a_run_being_trained_cannot_be_resumed_twice(make_config):
    import fcntl

    from fmnist_exp.errors import UserError
    from fmnist_exp.train import train

    cfg = make_config("logger.log_model=false")
    train(cfg)
    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("fashion-mnist").experiment_id])
    client.set_terminated(run.info.run_id, "KILLED")  # as if still going, elsewhere
    with open(Path(cfg.paths.output_dir) / ".train.lock", "a+") as alive:  # its process's claim
        fcntl.flock(alive, fcntl.LOCK_EX)
        for key in (run.info.run_id, "last"):
            with pytest.raises(UserError, match="is being trained right now by another process"):
                train(make_config("logger.log_model=false", f"resume={key}"))


@pytest.mark.slow
def test_two_skip_finished_commands_at_once_train_the_config_once(tmp_path, real_data_dir):
    args = ["trainer=fast", f"data.data_dir={real_data_dir}", "skip_finished=true",
            f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "logger.log_model=false"]  # fmt: skip
    processes = [
        subprocess.Popen([sys.executable, "-m", "fmnist_exp", *args, f"hydra.run.dir={tmp_path}/run{i}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    assert sum("skipped: this config already FINISHED" in out for out, _ in outs) == 1
    assert [r.info.status for r in runs(tmp_path)] == ["FINISHED"]


def test_parallel_runs_log_the_same_new_dataset(tmp_path):
    """MLflow adds a dataset to the experiment by reading, then inserting: parallel jobs that log
    the same new data at once collide on its unique key (about a third of them here, before the
    retry). Every run gets its datasets."""
    import threading

    from conftest import ready_store

    from fmnist_exp.tracking import store

    client = mlflow.MlflowClient(ready_store(tmp_path))
    experiment = client.create_experiment("fashion-mnist")
    failed, runs = [], []

    def start(digest: str) -> None:
        split = {"context": "training", "name": "fashion-mnist", "source": tmp_path,
                 "digest": digest, "n_images": 1, "classes": ["a"]}  # fmt: skip
        try:
            run_id = client.create_run(experiment).info.run_id
            store.log_datasets(client, run_id, [split])
            runs.append(run_id)
        except Exception as exc:  # noqa: BLE001 (any failure is the test's finding)
            failed.append(exc)

    for data in range(8):
        jobs = [threading.Thread(target=start, args=(f"digest{data}",)) for _ in range(6)]
        for job in jobs:
            job.start()
        for job in jobs:
            job.join()
    assert failed == [] and len(runs) == 48
    for run_id in runs:
        assert len(client.get_run(run_id).inputs.dataset_inputs) == 1
