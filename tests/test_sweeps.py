"""--multirun sweeps: nesting in MLflow, launchers, DDP, the seed table, reports. The joblib and
submitit launchers, DDP and the channel sweep run in subprocesses; sweeps whose jobs run in the
sweep's own process (the basic launcher, also under Optuna's sweeper) need only the entry point and
run in the test process (run_main), sparing a process start each."""

import os
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from conftest import made_once, run_cli
from test_models import PARAMETER_COUNTS

from fmnist_exp.models import LeNet, count_parameters

pytestmark = pytest.mark.slow
TINY = ["trainer=fast", "++trainer.limit_train_batches=2", "++trainer.limit_val_batches=1",
        "++trainer.limit_test_batches=1", "logger.log_model=false"]  # fmt: skip
PUBLISHED = [
    0.745,
    0.872,
    0.8824,
    0.896,
    0.913,
    0.914,
    0.925,
    0.94,
]  # blog rows, PARAMETER_COUNTS order


def store_args(tmp: Path, data_dir: Path) -> list[str]:
    return [f"data.data_dir={data_dir}", f"logger.tracking_uri=sqlite:///{tmp}/mlflow.db",
            f"hydra.sweep.dir={tmp}/sweep"]  # fmt: skip


def runs_by_experiment(tmp: Path) -> dict[str, list]:
    client = mlflow.MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    return {e.name: client.search_runs([e.experiment_id]) for e in client.search_experiments()}


def parent_and_children(tmp: Path):
    runs = runs_by_experiment(tmp)
    assert runs.get("Default", []) == []  # nothing lands outside the experiment
    (parent,) = [r for r in runs["fashion-mnist"] if r.data.tags.get("sweep") == "parent"]
    children = [
        r
        for r in runs["fashion-mnist"]
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    ]
    assert len(children) == len(runs["fashion-mnist"]) - 1  # every other run is nested
    return parent, sorted(children, key=lambda r: int(r.data.tags["sweep.job_num"]))


@pytest.fixture(scope="module")
def channel_sweep(tmp_path_factory, real_data_dir):
    """One sweep for the session (made_once): its two tests often land on different workers."""

    def sweep(tmp: Path) -> None:
        # job 1 tests on one batch (a partial run: never ranked), job 0 on the whole test split
        done = run_cli("--multirun", "model=lenet_bn", "model.channels=4,8", "+logger.tags.gpu=${fmnist.job_gpu:2}",
                       *TINY, "++trainer.limit_test_batches=null,1", *store_args(tmp, real_data_dir))  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        (tmp / "stdout.txt").write_text(done.stdout)

    tmp = made_once(tmp_path_factory, "channel_sweep", sweep)
    return tmp, (tmp / "stdout.txt").read_text()


def test_channel_sweep_nests_one_child_per_job(channel_sweep):
    tmp, stdout = channel_sweep
    parent, children = parent_and_children(tmp)
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/jobs"] == 4
    assert parent.data.metrics["sweep/finished"] == 4 and parent.data.metrics["sweep/partial"] == 2
    full = [c for c in children if c.data.tags["partial"] == "false"]
    assert parent.data.tags["best_run_id"] in {c.info.run_id for c in full}  # partial never best
    for child in children:
        tested = child.data.metrics["test/n_images"]
        assert tested == (10000 if child.data.tags["partial"] == "false" else 1000)
    assert len({c.info.run_name for c in children}) == 4  # each job's name tells it apart
    for child, channels in zip(children, (4, 4, 8, 8), strict=True):
        assert child.info.status == "FINISHED"
        job = int(child.data.tags["sweep.job_num"])
        assert int(child.data.tags["gpu"]) == job % 2  # job k -> device k mod 2
        assert child.info.run_name.startswith(f"#{job} lenet_bn model=lenet_bn model.channels=")
        assert child.data.tags["overrides"].startswith(f"model=lenet_bn model.channels={channels} ")
        expected = count_parameters(LeNet(channels=channels, activation="relu", batch_norm=True))[0]
        assert child.data.metrics["model/params_total"] == expected
    assert sorted(p.name for p in (tmp / "sweep").iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    assert f"sweep {parent.info.run_id}: 4 jobs: 4 trained, 2 partial" in stdout


def test_report_on_a_sweep(channel_sweep, tmp_path, capsys):
    tmp, _ = channel_sweep
    from fmnist_exp.report import main

    assert main([f"tracking_uri=sqlite:///{tmp}/mlflow.db", f"out={tmp_path}"]) == 0  # latest sweep
    assert "left out 2 partial run(s)" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "table.csv")
    parent, children = parent_and_children(tmp)
    children = [c for c in children if c.data.tags["partial"] == "false"]
    assert sorted(table.run_id) == sorted(c.info.run_id for c in children)
    assert sorted(table.params) == sorted(
        int(c.data.metrics["model/params_total"]) for c in children
    )
    assert list(table.overrides) == ["model.channels=4", "model.channels=8"]  # only what varies
    assert (tmp_path / "params_vs_accuracy.png").stat().st_size > 10_000
    assert "| model.channels=4 |" in (tmp_path / "table.md").read_text()
    client = mlflow.MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert logged == {f"report/{name}" for name in
                      ("table.csv", "table.md", "seeds.csv", "seeds.md", "params_vs_accuracy.png")}  # fmt: skip
    assert (
        main([f"tracking_uri=sqlite:///{tmp}/mlflow.db", f"out={tmp_path / 'all'}", "partial=true"])
        == 0
    )
    assert len(pd.read_csv(tmp_path / "all" / "table.csv")) == 4  # asked for: partial runs listed
    assert main([f"tracking_uri=sqlite:///{tmp}/mlflow.db", "bogus=1"]) == 2
    capsys.readouterr()
    assert main([f"tracking_uri=sqlite:///{tmp}/mlflow.db", "filter=tags.model LIKE"]) == 2
    said = capsys.readouterr().err  # one paragraph naming the filter and the syntax, no traceback
    assert "filter='tags.model LIKE' is not an MLflow search filter" in said
    assert "Traceback" not in said
    mine = tmp_path / "notes.txt"  # out= naming a file: one paragraph, the file kept
    mine.write_text("my notes")
    assert main([f"tracking_uri=sqlite:///{tmp}/mlflow.db", f"out={mine}"]) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert f"The output folder {mine} cannot be written" in said and "report's out=" in said
    assert mine.read_text() == "my notes"


def test_submitit_local_launcher(tmp_path, real_data_dir):
    done = run_cli("--multirun", "hydra/launcher=submitit_local", "model.channels=4,6", *TINY,
                   *store_args(tmp_path, real_data_dir))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    _, children = parent_and_children(tmp_path)
    assert [c.info.status for c in children] == ["FINISHED"] * 2


def test_blog_table_composes_eight_jobs_with_the_exact_counts(run_main, tmp_path, real_data_dir):
    done = run_main("--multirun", "experiment=glob(blog_*)", "trainer.max_epochs=1", *TINY,
                   *store_args(tmp_path, real_data_dir))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    _, children = parent_and_children(tmp_path)
    assert len(children) == 8
    counts = sorted(int(c.data.metrics["model/params_total"]) for c in children)
    assert counts == sorted(expected for overrides, expected in PARAMETER_COUNTS)
    references = sorted(float(c.data.tags["reference_acc"]) for c in children)
    assert references == PUBLISHED


def test_recipes_train_each_rows_network_unchanged(run_main, tmp_path, real_data_dir):
    done = run_main("--multirun", "experiment=glob(recipe_*)", "trainer.max_epochs=1", *TINY,
                   *store_args(tmp_path, real_data_dir))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    _, children = parent_and_children(tmp_path)
    recipes = sorted(
        p.stem for p in (Path(__file__).parents[1] / "conf/experiment").glob("recipe_*.yaml")
    )
    assert len(children) == len(recipes) >= 5
    published = dict(zip(PUBLISHED, (count for _, count in PARAMETER_COUNTS), strict=True))
    for child in children:  # the seed row's parameter count and published number; a new recipe
        reference = float(child.data.tags["reference_acc"])
        assert child.data.metrics["model/params_total"] == published[reference]
        assert child.data.params["optimizer._target_"] == "torch.optim.AdamW"
        assert (
            child.data.params["module.tta_hflip"] == "True"
            and child.data.params["data.augment.hflip"] == "True"
        )


def test_report_folds_runs_that_differ_only_in_the_seed():
    from fmnist_exp.run_tables import fold_seeds, untested

    overrides = ["experiment=a seed=1", "experiment=a seed=2", "experiment=a seed=3", "experiment=a seed=4",
                 "experiment=b seed=1", "experiment=a seed=5"]  # fmt: skip
    table = pd.DataFrame({"run_id": list("pqrstu"), "run": list("pqrstu"), "model": "m", "overrides": overrides, "params": 10,
                          "best_val_acc": [0.91, 0.93, 0.95, 0.5, 0.8, 0.99],
                          "test_acc": [0.90, 0.92, 0.94, 0.5, 0.8, None], "reference_acc": 0.9, "epochs": 3,
                          "status": ["FINISHED"] * 5 + ["KILLED"]})  # fmt: skip
    runs = pd.DataFrame({  # run s: same overrides as p, q, r, but its config file had another lr then
        "run_id": list("pqrstu"), "params.optimizer.lr": ["1e-3", "1e-3", "1e-3", "0.1", "1e-3", "1e-3"],
        "params.model.hidden": ["[8]"] * 4 + ["[16]", "[8]"], "params.seed": list("123415"),
        "params.data.shuffle_seed": list("123415"), "params.output_dir": list("vwxyzo"),
        "params.trainer.enable_progress_bar": ["True", "False", "True", "True", "True", "True"],
        "params.data/source": ["/a", "/b", "/c", "/a", "/a", "/a"],  # where the data was read: not config
        "params.model.feature_dropout": ["0.0"] * 6,
        "params.module.distill.teachers": ["[]"] * 6,
    })  # fmt: skip
    seeds = fold_seeds(table, runs)
    assert list(seeds.overrides) == ["experiment=a", "experiment=a", "experiment=b"]
    first = seeds.iloc[0]  # u, stopped before its test, is not among p, q, r: not even its val/acc
    assert first.runs == 3 and first.test_acc_mean == pytest.approx(0.92) and pd.isna(first.folds)
    assert first.val_acc_mean == pytest.approx(0.93) and first.run_ids == "p q r"
    assert first.test_acc_std == pytest.approx(0.02) and first.delta_pp == pytest.approx(2.0)
    assert (first.test_acc_min, first.test_acc_max) == (0.90, 0.94)
    assert seeds.iloc[1].runs == 1 and pd.isna(seeds.iloc[1].test_acc_std)
    assert untested(table) == "- left out, no test accuracy (table.md lists them): u (KILLED)\n"
    assert untested(table[table.test_acc.notna()]) == ""


def test_report_plot_labels_every_row_and_stacks_near_neighbours(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from fmnist_exp.sweep_chart import plot

    labels = []
    monkeypatch.setattr(
        Axes, "annotate", lambda ax, text, xy, **kw: labels.append((text, xy[0], kw["xytext"]))
    )
    seeds = pd.DataFrame({  # params as the report reads them: nullable Int64
        "model": ["a", "b", "c", "d"], "overrides": "", "params": pd.array([100, 100, 120, 1000], "Int64"),
        "runs": 3, "test_acc_mean": [0.90, 0.91, 0.92, 0.80], "test_acc_min": 0.7, "test_acc_max": 0.95,
        "reference_acc": 0.85, "epochs": 3,
    })  # fmt: skip
    assert plot(seeds, tmp_path / "p.png").is_file()
    # a, b and c (within 1.4x) share one stack right of c (the largest), best first, one line
    # each; d stands alone
    assert labels == [
        ("c (x3)", 120, (7, 2)),
        ("b (x3)", 120, (7, -7)),
        ("a (x3)", 120, (7, -16)),
        ("d (x3)", 1000, (7, 2)),
    ]


def test_report_chart_of_a_search_keys_its_points_and_rounds_its_numbers(tmp_path, monkeypatch):
    """A search's configurations differ in long float overrides: each point gets a number, a key
    under the chart names them best first (floats to 3 digits, the trial number first), what every
    run shares is said once, and matplotlib has nothing to warn about (it warned that the layout
    collapsed when the names sat beside the points)."""
    import warnings

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from fmnist_exp.sweep_chart import names, plot

    n = 14
    seeds = pd.DataFrame({
        "model": "lenet_bn", "params": pd.array([45326 if i % 2 else 85918 for i in range(n)], "Int64"),
        "overrides": [f"optimizer.lr={0.0034336287120210677 + i / 1e5} model.channels={8 if i % 2 else 16} "
                      f"trainer.max_epochs=3 +search.storage=x +search.trial={i}" for i in range(n)],
        "runs": 1, "test_acc_mean": [0.80 + i / 100 for i in range(n)], "test_acc_min": 0.7,
        "test_acc_max": 0.95, "reference_acc": None, "epochs": 3,
    })  # fmt: skip
    named, common = names(seeds)
    assert (
        named[0] == "trial 0 optimizer.lr=0.00343 model.channels=16"
        and common == "trainer.max_epochs=3"
    )
    annotated, texts = [], []
    monkeypatch.setattr(Axes, "annotate", lambda ax, text, xy, **kw: annotated.append(text))
    real_text = Figure.text
    monkeypatch.setattr(
        Figure,
        "text",
        lambda fig, *a, **kw: texts.append((a[2], kw.get("family"))) or real_text(fig, *a, **kw),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plot(seeds, tmp_path / "search.png").is_file()
    assert annotated == [str(i) for i in range(1, n + 1)]
    (key,) = [text for text, family in texts if family == "monospace"]
    assert (
        key.splitlines()[0] == "  1  93.00%  45,326  trial 13 optimizer.lr=0.00356 model.channels=8"
    )


def test_an_empty_sweep_range_is_refused_before_anything_is_made(run_main, tmp_path, real_data_dir):
    done = run_main("--multirun", "seed=range(1,1)", *TINY, *store_args(tmp_path, real_data_dir))
    assert done.returncode == 2 and "seed=range(1,1): an empty range" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()  # no store, no parent run


def test_a_failed_job_does_not_sink_the_sweep(run_main, tmp_path, real_data_dir):
    done = run_main(
        "--multirun", "model.kernel_size=3,29,5", *TINY, *store_args(tmp_path, real_data_dir)
    )
    assert done.returncode == 1
    assert "1 job(s) failed:" in done.stderr and "job 1 [model.kernel_size=29" in done.stderr
    parent, children = parent_and_children(tmp_path)
    assert [c.info.status for c in children] == ["FINISHED", "FAILED", "FINISHED"]
    assert "conv 2 has kernel 29" in children[1].data.tags["error"]
    assert parent.info.status == "FAILED" and parent.data.metrics["sweep/failed"] == 1


def test_ddp_on_cpu_writes_one_run_once(tmp_path, real_data_dir):
    done = run_cli("trainer=ddp", "trainer.accelerator=cpu", "trainer.max_epochs=2", *TINY[1:],
                   f"data.data_dir={real_data_dir}", f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                   f"hydra.run.dir={tmp_path}/run", "trainer.enable_progress_bar=false")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = runs_by_experiment(tmp_path)["fashion-mnist"]
    assert run.info.status == "FINISHED"
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert (
        len(history) == 2 and len({h.step for h in history}) == 2
    )  # once per epoch, not per process
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in done.stderr + done.stdout
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [
        ".claims",  # the store's run claims (claims.py)
        "artifacts",
        "run",
    ]  # one run dir
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.is_dir()) == [
        ".hydra",
        "checkpoints",
    ]
    assert sum(1 for line in done.stdout.splitlines() if line.startswith("run ")) == 1


SEARCH = ["hparams_search=optuna", "hydra.sweeper.sampler=random", "hydra.sweeper.seed=0",
          "hydra.sweeper.warmup_epochs=2", "trainer=fast", "trainer.max_epochs=3",
          "++trainer.limit_train_batches=10", "++trainer.limit_val_batches=2",
          "++trainer.limit_test_batches=1", "logger.log_model=false"]  # fmt: skip


def search_space(lr: str) -> str:
    """The whole space (the file's own keys replaced): the learning rate alone varies."""
    return ("hydra.sweeper.params={optimizer.lr: '" + lr + "', data.batch_size: 'choice(64)', "
            "model.channels: 'choice(6)', module.label_smoothing: 'choice(0.0)'}")  # fmt: skip


def trials(tmp: Path) -> dict[int, object]:
    """The search's MLflow runs by trial number."""
    runs = runs_by_experiment(tmp)["fashion-mnist"]
    return {int(r.data.tags["search.trial"]): r for r in runs if "search.trial" in r.data.tags}


def test_a_search_continues_its_study_and_prunes_a_hopeless_trial(
    run_main, tmp_path, real_data_dir
):
    """Two good trials, then the same command with a hopeless space (a learning rate that cannot
    learn in three epochs): the study goes on at trial 2, and the median pruner stops it after the
    warm-up epoch; its run is KILLED and tagged PRUNED, with its curves; the sweep succeeds."""
    import optuna

    args = [*SEARCH, *store_args(tmp_path, real_data_dir)]
    first = run_main("--multirun", *args, "hydra.sweeper.n_trials=2",
                     search_space("tag(log, interval(3e-3, 1e-2))"))  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_main("--multirun", *args, "hydra.sweeper.n_trials=3",
                      search_space("tag(log, interval(1e-9, 1e-8))"),
                      f"hydra.sweep.dir={tmp_path}/sweep2")  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    assert "2 trials so far, 3 wanted" in second.stdout and "trial 2: PRUNED" in second.stdout
    study = optuna.load_study(study_name="fmnist", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    by_trial = trials(tmp_path)
    pruned = by_trial[2]
    assert pruned.info.status == "KILLED" and pruned.data.tags["search.state"] == "PRUNED"
    assert "pruned after 2 epochs" in pruned.data.tags["search.pruned"]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert len(client.get_metric_history(pruned.info.run_id, "val/acc")) == 2  # its curves, kept
    # one record: the study names its objective, each trial its run, at the steps MLflow uses
    assert study.metric_names == ["val/acc_best"]
    for trial in study.trials:
        run_id = by_trial[trial.number].info.run_id
        assert trial.user_attrs["mlflow_run_id"] == run_id
        assert trial.user_attrs["mlflow_run"].endswith(f"/runs/{run_id}")
        logged = client.get_metric_history(run_id, "val/acc")
        assert trial.intermediate_values == {m.step: pytest.approx(m.value) for m in logged}
    assert all(by_trial[n].info.status == "FINISHED" for n in (0, 1))
    parents = [r for r in runs_by_experiment(tmp_path)["fashion-mnist"]
               if r.data.tags.get("sweep") == "parent"]  # fmt: skip
    latest = max(parents, key=lambda r: r.info.start_time)
    assert latest.info.status == "FINISHED" and latest.data.metrics["sweep/pruned"] == 1
    assert latest.data.tags["search.study"] == "fmnist"
    assert latest.data.tags["search.best_trial"] == str(study.best_trial.number)
    assert latest.data.metrics["search/best_value"] == pytest.approx(study.best_value)
    from fmnist_exp.report import main as report

    assert (
        report([f"tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"out={tmp_path / 'report'}"]) == 0
    )
    assert list(pd.read_csv(tmp_path / "report" / "table.csv").status) == ["PRUNED"]

    # the study already holds n_trials: said, nothing run, no empty parent to shadow the sweep
    again = run_main("--multirun", *args, "hydra.sweeper.n_trials=3",
                     search_space("tag(log, interval(1e-9, 1e-8))"), f"hydra.sweep.dir={tmp_path}/sweep3")  # fmt: skip
    assert again.returncode == 0 and "already holds 3 finished trials" in again.stdout
    # a changed set of choices: one paragraph before any run (Optuna's own error came mid-sweep)
    changed = run_main("--multirun", *args, "hydra.sweeper.n_trials=4",
                       search_space("tag(log, interval(1e-3, 1e-2))").replace("choice(6)", "choice(8, 16)"),
                       f"hydra.sweep.dir={tmp_path}/sweep4")  # fmt: skip
    said = " ".join(changed.stderr.split())
    assert changed.returncode == 2 and "the study searched model.channels over choice(6)" in said
    assert (
        "this search gives choice(8, 16)" in said and "hydra.sweeper.study_name=<new name>" in said
    )
    assert len([r for r in runs_by_experiment(tmp_path)["fashion-mnist"]
                if r.data.tags.get("sweep") == "parent"]) == len(parents)  # fmt: skip
    assert (
        len(
            optuna.load_study(study_name="fmnist", storage=f"sqlite:///{tmp_path}/optuna.db").trials
        )
        == 3
    )


def test_a_search_waits_for_a_busy_study_storage(tmp_path):
    """Another writer holding optuna.db's lock for 7 s (sqlite gives up after 5 s by default) is
    waited for, as the tracking store's writers are."""
    import sqlite3
    import threading
    import time

    import optuna

    from fmnist_exp.tracking import search

    url = f"sqlite:///{tmp_path}/optuna.db"
    search.open_study(
        "s", url, "maximize", optuna.samplers.RandomSampler(), optuna.pruners.NopPruner()
    )
    locked = threading.Event()

    def hold_the_lock():
        connection = sqlite3.connect(tmp_path / "optuna.db", isolation_level=None)
        connection.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(7)
        connection.execute("COMMIT")
        connection.close()

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    locked.wait()
    started = time.monotonic()
    study = search.open_study("s", url, "maximize", optuna.samplers.RandomSampler(),
                              optuna.pruners.NopPruner())  # fmt: skip
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study.tell(trial, 0.5)
    holder.join()
    assert time.monotonic() - started > 5 and len(study.trials) == 1


def test_two_searches_at_once_share_one_study(tmp_path, real_data_dir):
    """Two sweep processes on one storage draw their trials from one study: distinct trial
    numbers, every trial told, none run twice."""
    import subprocess
    import sys

    from conftest import REPO

    args = [*SEARCH, f"data.data_dir={real_data_dir}", f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            "hydra.sweeper.n_trials=4", search_space("tag(log, interval(1e-3, 1e-2))"),
            "hydra.sweeper.pruner=none", "hydra.sweeper.seed=null"]  # fmt: skip
    import optuna

    optuna.create_study(study_name="fmnist", storage=f"sqlite:///{tmp_path}/optuna.db",
                        direction="maximize")  # made once, before the workers  # fmt: skip
    processes = [
        subprocess.Popen([sys.executable, "-m", "fmnist_exp", "--multirun", *args,
                          f"hydra.sweep.dir={tmp_path}/sweep{i}"], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]  # fmt: skip
    outs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    study = optuna.load_study(study_name="fmnist", storage=f"sqlite:///{tmp_path}/optuna.db")
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers)) and 4 <= len(numbers) <= 5  # each worker stops at 4
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    assert sorted(trials(tmp_path)) == sorted(numbers)  # one MLflow run per trial


@pytest.mark.parametrize(
    "override, said",
    [
        ("+hydra.sweeper.params.nosuch='choice(1, 2)'", "nosuch is not a key of the training config"),
        ("hydra.sweeper.params=null", "empty search space"),
        ("hydra.sweeper.storage=sqlite:////nonexistent/dir/optuna.db", "the Optuna storage could not be opened"),
        ("hydra.sweeper.pruner=sometimes", "hydra.sweeper.pruner='sometimes' must be median or none"),
    ],
)  # fmt: skip
def test_bad_search_input_is_one_paragraph_before_anything_is_made(run_main, tmp_path,
                                                                   real_data_dir, override, said):  # fmt: skip
    done = run_main("--multirun", *SEARCH, *store_args(tmp_path, real_data_dir), override)
    assert done.returncode == 2 and said in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    runs = (
        runs_by_experiment(tmp_path).get("fashion-mnist", [])
        if (tmp_path / "mlflow.db").exists()
        else []
    )
    assert runs == []  # no parent run, no trial


def test_a_sweep_over_two_data_names_no_best(run_main, tmp_path, real_data_dir, real_data):
    """A sweep whose jobs read different data ranks none against the others: no best run."""
    from test_data import write_csv

    from fmnist_exp.data import dataset

    small = tmp_path / "small"
    small.mkdir()
    write_csv(small / dataset.CSV_FILES["train"], real_data.train_images[:1200],
              real_data.train_labels[:1200])  # fmt: skip
    write_csv(small / dataset.CSV_FILES["test"], real_data.test_images[:300],
              real_data.test_labels[:300])  # fmt: skip
    done = run_main("--multirun", f"data.data_dir={real_data_dir},{small}", *TINY,
                    "++trainer.limit_test_batches=null", *store_args(tmp_path, real_data_dir)[1:])  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the jobs read 2 different data (small (data_digest" in done.stdout
    assert "fashion-mnist (data_digest" in done.stdout and "no best across them" in done.stdout
    parent, children = parent_and_children(tmp_path)
    assert len(children) == 2 and "best_run_id" not in parent.data.tags
    assert {c.data.tags["data.name"] for c in children} == {"fashion-mnist", "small"}


def test_a_k_fold_sweep_is_one_row_of_the_report(run_main, tmp_path, real_data_dir):
    """--multirun data.folds=3 'data.fold=range(3)': three runs, each validating on its own third
    of the training split, folded by the report into one row (folds=3) with the cross-validation
    estimate (validation accuracy mean +- std) beside the test accuracy's."""
    from fmnist_exp.report import main as report

    done = run_main("--multirun", "data.folds=3", "data.fold=range(3)", *TINY,
                    "++trainer.limit_test_batches=null", *store_args(tmp_path, real_data_dir))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    parent, children = parent_and_children(tmp_path)
    assert [c.data.params["data.fold"] for c in children] == ["0", "1", "2"]
    assert {c.data.params["data/n_val"] for c in children} == {"20000"}
    assert {c.data.params["data/n_train"] for c in children} == {"40000"}
    out = tmp_path / "report"
    assert report([f"tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"out={out}"]) == 0
    (row,) = pd.read_csv(out / "seeds.csv").itertuples()
    assert (row.runs, row.folds) == (3, 3) and pd.isna(row.overrides)  # nothing else varies
    vals = [c.data.metrics["val/acc_best"] for c in children]
    assert row.val_acc_mean == pytest.approx(sum(vals) / 3)
    assert row.val_acc_std == pytest.approx(pd.Series(vals).std())
    assert row.run_ids == " ".join(c.info.run_id[:8] for c in children)
    said = (out / "seeds.md").read_text()  # where the figures come from, under the table
    assert "- command: `python -m fmnist_exp --multirun data.folds=3 data.fold=range(3)" in said
    assert f"- hardware: {os.cpu_count()}-core " in said and f"torch {torch.__version__}" in said
    assert f"- commit: {children[0].data.tags['git_commit'][:7]}" in said
    assert "- data: fashion-mnist (data_digest " in said


def test_pruning_never_stops_a_trial_on_its_last_epoch():
    """A trial behind the study after its last epoch has nothing left to save: it completes (its
    run FINISHED, its value told) instead of ending KILLED with its result thrown away."""
    from types import SimpleNamespace

    import torch

    from fmnist_exp.training.callbacks import PruneHopeless, TrialPruned

    reported = []
    trial = SimpleNamespace(number=7, should_prune=lambda: True,
                            report=lambda value, step: reported.append(step))  # fmt: skip
    prune = PruneHopeless(trial, "{run_id}")
    trainer = SimpleNamespace(sanity_checking=False, max_epochs=2, current_epoch=0,
                              callback_metrics={"val/acc": torch.tensor(0.1)})  # fmt: skip
    with pytest.raises(TrialPruned, match="pruned after 1 epochs"):
        prune.on_validation_end(trainer, None)
    trainer.current_epoch = 1  # the last epoch
    prune.on_validation_end(trainer, None)
    assert reported == [1, 2]  # steps = epochs trained, as MLflow records them
