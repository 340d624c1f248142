"""`python -m fmnist_exp.report [sweep=ID|latest] [filter=EXPR] [out=DIR]` (options: conf/report.yaml)

Reads runs from MLflow into pandas and writes table.csv and table.md (one row per run, ours beside
the published number: the `reference_acc` tag); seeds.csv and seeds.md (runs whose logged configs
differ only in the seed or the k-fold fold, folded into one row: validation and test accuracy
mean +- std); and params_vs_accuracy.png (one point per folded row), for the runs on one data
(dataset=auto: the newest run's; the others are counted and left out). With a sweep (the default: the latest) the files are also logged as
artifacts of the sweep's parent run under report/. Partial runs (tag partial=true: they tested
on part of their test split) are no results and are left out unless partial=true.
"""

from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig

from fmnist_exp import checks
from fmnist_exp.app import hydra_app
from fmnist_exp.errors import UserError
from fmnist_exp.paths import check_writable, project_root


def report(cfg: DictConfig) -> Path:
    checks.check_flag("report", "partial", cfg.partial)
    if cfg.out:  # a file, or a place that cannot be written: said before any query
        check_writable(Path(cfg.out), "report's out=")
    import mlflow  # the work's imports, once the options passed (app.py)
    import pandas as pd

    from fmnist_exp import run_tables as tables
    from fmnist_exp import sweep_chart

    uri, where = cfg.tracking_uri, str(cfg.filter or "")
    sweep = "" if cfg.sweep is None or (where and cfg.sweep == "latest") else str(cfg.sweep)
    runs, parent_id = tables.select_runs(uri, cfg.experiment_name, sweep, where)
    partial = runs.get("tags.partial", pd.Series("false", index=runs.index)) == "true"
    if not cfg.partial and partial.any():
        print(f"left out {int(partial.sum())} partial run(s) (tested on part of the test split; "
              f"partial=true lists them)")  # fmt: skip
        runs = runs[~partial]
        if runs.empty:
            raise UserError(
                "report: every matching run is partial (it tested on part of its test split, e.g. "
                "with trainer.limit_test_batches): there is no result to report. Train without "
                "the limit, or pass partial=true to list them anyway."
            )
    runs, data = tables.on_one_data(runs, cfg.dataset)
    table = tables.build_table(runs)
    stamp = parent_id or datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = Path(cfg.out or project_root() / "outputs" / "reports" / stamp)
    check_writable(out, "report's out=")
    seeds = tables.fold_seeds(table, runs)
    command = None
    if parent_id:  # the one command that trained them all
        command = mlflow.MlflowClient(uri).get_run(parent_id).data.tags.get("command")
    source, left_out = tables.provenance(runs, data, command), tables.untested(table)
    for name, frame, notes in (("table", table, source), ("seeds", seeds, source + left_out)):
        frame.to_csv(out / f"{name}.csv", index=False)
        (out / f"{name}.md").write_text(tables.to_markdown(frame) + "\n" + notes)
    sweep_chart.plot(seeds, out / "params_vs_accuracy.png", command)
    if parent_id:
        client = mlflow.MlflowClient(uri)
        for name in ("table.csv", "table.md", "seeds.csv", "seeds.md", "params_vs_accuracy.png"):
            client.log_artifact(parent_id, str(out / name), artifact_path="report")
    print(tables.to_markdown(table), end="")
    if (seeds.runs > 1).any():  # some configuration ran with several seeds or folds
        print("\nover seeds and folds:\n" + tables.to_markdown(seeds) + left_out, end="")
    print("\n" + source, end="")
    print(
        f"{len(table)} run{'s' * (len(table) != 1)} on {data.name} (data_digest {data.digest}) -> {out}"
        + (f" (also on parent run {parent_id}, report/)" if parent_id else "")
    )
    return out


main = hydra_app("report", report)

if __name__ == "__main__":
    raise SystemExit(main())
