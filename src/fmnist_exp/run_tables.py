"""Runs from MLflow as pandas tables for `python -m fmnist_exp.report` (report.py): one row per
run, runs that differ only in the seed or the k-fold fold folded into one (mean +- std), their
provenance and markdown. The chart is sweep_chart.py's."""

import re

import mlflow
import pandas as pd
import yaml

from fmnist_exp.errors import UserError
from fmnist_exp.tracking import resume, same_data
from fmnist_exp.tracking import sweep as sweep_runs

COLUMNS = ["run", "model", "overrides", "params", "best_val_acc", "test_acc", "reference_acc",
           "delta_pp", "epochs", "wall_s", "status", "commit", "date", "run_id"]  # fmt: skip
SEED_COLUMNS = ["model", "overrides", "params", "runs", "folds", "val_acc_mean", "val_acc_std",
                "test_acc_mean", "test_acc_std", "test_acc_min", "test_acc_max", "reference_acc",
                "delta_pp", "epochs", "run_ids"]  # fmt: skip
PERCENT = ("best_val_acc", "test_acc", "reference_acc", "val_acc_mean", "test_acc_mean",
           "test_acc_min", "test_acc_max")  # fmt: skip
STD = ("val_acc_std", "test_acc_std")  # in percentage points
FOLDED = ("seed=", "data.fold=")  # overrides that fold into one row: the seed and the k-fold fold


def select_runs(
    uri: str, experiment: str, sweep: str, filter_string: str
) -> tuple[pd.DataFrame, str | None]:
    """(runs, parent run id): a sweep's runs (the jobs it trained and the earlier FINISHED runs it
    reused with skip_finished=true), or with filter= and no sweep=, any runs."""
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise UserError(f"report: no experiment {experiment!r} in {uri} (experiments: {names}).")
    ids = [found.experiment_id]
    parent_id = None
    if sweep:
        if sweep == "latest":
            parents = client.search_runs(
                ids, "tags.sweep = 'parent'", order_by=["attributes.start_time DESC"], max_results=1
            )
            if not parents:
                raise UserError(
                    f"report: no sweep in experiment {experiment!r}; run one with --multirun, or pass filter=... to report on single runs."
                )
            parent_id = parents[0].info.run_id
        else:
            parent_id = sweep
    mlflow.set_tracking_uri(uri)  # mlflow.search_runs (the pandas one) reads the global store

    def search(clause: str) -> pd.DataFrame:
        try:
            return mlflow.search_runs(ids, filter_string=" and ".join(filter(None, [clause, filter_string])),
                                      output_format="pandas")  # fmt: skip
        except mlflow.exceptions.MlflowException as exc:
            if not filter_string or exc.error_code != "INVALID_PARAMETER_VALUE":
                raise  # not the user's filter: the store's own error
            raise UserError(
                f"report: filter={filter_string!r} is not an MLflow search filter ({exc.message}). "
                "Write it as in the MLflow UI's search box, with the value quoted, e.g. "
                'filter="tags.overrides LIKE \'experiment=recipe_%\'" or filter="metrics.`test/acc` > 0.9".'
            ) from exc

    if parent_id:  # the jobs it trained, plus the finished runs it reused (skip_finished=true)
        trained = search(sweep_runs.child_filter(parent_id))
        reused = search(sweep_runs.reused_filter(parent_id)).assign(status="FINISHED (reused)")
        runs = pd.concat(
            [f for f in (trained, reused) if not f.empty] or [trained], ignore_index=True
        )
    else:
        runs = search("")
    if "tags.sweep" in runs:
        runs = runs[runs["tags.sweep"] != "parent"]
    if runs.empty:
        raise UserError(
            f"report: no runs match (sweep={sweep or '-'}, filter={filter_string!r}) in experiment {experiment!r}. "
            "sweep= takes a sweep's parent run id (the id the sweep printed first, or the run named "
            "'sweep ...' in the UI) or latest; filter= alone reports on any runs it matches."
        )
    return runs, parent_id


def on_one_data(runs: pd.DataFrame, wanted: str) -> tuple[pd.DataFrame, same_data.Data]:
    """The runs on one data (tracking/same_data.py; dataset=auto: the newest run's), saying on
    stdout how many were left out because they read other data."""
    runs = runs.sort_values("start_time", ascending=False)
    keys = ("data_digest", "data.name")
    pairs = [
        same_data.tags_of({k: v for k in keys if isinstance(v := row.get(f"tags.{k}"), str)})
        for _, row in runs.iterrows()
    ]
    data, note = same_data.choose(pairs, wanted, "report")
    if note:
        print(note)
    return runs[[digest == data.digest for digest, _ in pairs]], data


def short_commit(commit: str) -> str:
    """0a9be44c...-dirty -> 0a9be44-dirty (the git_commit tag: HEAD, -dirty with local changes)."""
    sha, dirty, _ = commit.partition("-dirty")
    return sha[:7] + dirty


def build_table(runs: pd.DataFrame) -> pd.DataFrame:
    def col(name: str) -> pd.Series:
        return runs[name] if name in runs else pd.Series([None] * len(runs), index=runs.index)

    overrides = col("tags.overrides").fillna("")
    shared = (
        set.intersection(*(set(o.lower().split()) for o in overrides))
        if len(overrides) > 1
        else set()
    )
    table = pd.DataFrame({
        "run": col("run_id").str[:8],
        "model": col("tags.model"),
        "overrides": [" ".join(t for t in o.split() if t.lower() not in shared) for o in overrides],  # what varies
        "params": pd.to_numeric(col("metrics.model/params_total")).astype("Int64"),
        "best_val_acc": pd.to_numeric(col("metrics.val/acc_best")),
        "test_acc": pd.to_numeric(col("metrics.test/acc")),
        "reference_acc": pd.to_numeric(col("tags.reference_acc")),
        "epochs": pd.to_numeric(col("metrics.epochs")).astype("Int64"),
        "wall_s": pd.to_numeric(col("metrics.time/total_s")).round(1),
        # a pruned trial of hparams_search=optuna is KILLED in MLflow, PRUNED here
        "status": col("status").mask(col("tags.search.state") == "PRUNED", "PRUNED"),
        "commit": col("tags.git_commit").map(short_commit, na_action="ignore"),
        "date": pd.to_datetime(col("end_time"), utc=True).dt.strftime("%Y-%m-%d"),
        "run_id": col("run_id"),
    })  # fmt: skip
    table["delta_pp"] = ((table.test_acc - table.reference_acc) * 100).round(2)
    return (
        table[COLUMNS]
        .sort_values(["params", "best_val_acc"], na_position="last")
        .reset_index(drop=True)
    )


def logged_config(params: dict[str, str]) -> dict:
    """The nested config back from a run's flat MLflow params ('model.channels': '[16, 32]'), values
    parsed as YAML; the data summary (`data/source`, ...) and `output_dir` are not config."""
    config: dict = {}
    for name, text in params.items():
        if "/" in name or name == "output_dir" or pd.isna(text):
            continue
        *groups, key = name.split(".")
        node = config
        for group in groups:
            node = node.setdefault(group, {})
        try:
            node[key] = yaml.safe_load(text)
        except yaml.YAMLError:
            node[key] = text
    return config


def seedless_config(runs: pd.DataFrame) -> pd.Series:
    """Per run id: a hash of its logged config as config_hash sees it (resume.experiment_part: no
    where/how-to-run keys), without the seed and the k-fold fold."""
    params = [c for c in runs if c.startswith("params.")]

    def seedless(row: pd.Series) -> str:
        config = logged_config({c.removeprefix("params."): row[c] for c in params})
        config.pop("seed", None)
        for key in ("shuffle_seed", "fold"):
            config.get("data", {}).pop(key, None)
        return resume.hash_of(resume.experiment_part(config))

    return pd.Series([seedless(row) for _, row in runs.iterrows()], index=runs.run_id.values)


def fold_seeds(table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: runs whose logged configs differ only in the seed or, under
    k-fold (data.folds), the fold. Per row: how many runs have a test accuracy and over how many
    folds; the validation accuracy's mean and sample standard deviation (under k-fold, the
    cross-validation estimate); the test accuracy's mean, sample standard deviation (n-1; empty
    for one run), min and max, and the mean's delta to the published number in points. Only runs
    with a test accuracy are folded (untested() names the others): a run stopped, failed or
    pruned before its test has the best validation accuracy of some epochs, not a result."""
    table = table[table.test_acc.notna()]
    overrides = [
        " ".join(t for t in o.split() if not t.startswith(FOLDED)) for o in table.overrides
    ]
    params = runs.set_index("run_id")
    none = pd.Series(dtype=object)  # runs logged before k-fold existed have neither param
    k_fold = params.get("params.data.folds", none).fillna("None") != "None"
    fold = params.get("params.data.fold", none).where(k_fold)  # NaN: not a k-fold run
    key = table.run_id.map(seedless_config(runs))
    folded = table.assign(overrides=overrides, key=key, fold=table.run_id.map(fold))
    seeds = folded.groupby("key", sort=False).agg(
        model=("model", "first"), overrides=("overrides", "first"), params=("params", "first"),
        runs=("test_acc", "count"), folds=("fold", "nunique"),
        val_acc_mean=("best_val_acc", "mean"), val_acc_std=("best_val_acc", "std"),
        test_acc_mean=("test_acc", "mean"), test_acc_std=("test_acc", "std"),
        test_acc_min=("test_acc", "min"), test_acc_max=("test_acc", "max"),
        reference_acc=("reference_acc", "first"), epochs=("epochs", "max"),
        run_ids=("run", " ".join),
    ).reset_index(drop=True)  # fmt: skip
    seeds["delta_pp"] = ((seeds.test_acc_mean - seeds.reference_acc) * 100).round(2)
    seeds["folds"] = seeds.folds.astype("Int64").mask(seeds.folds == 0)  # blank: no k-fold
    return seeds[SEED_COLUMNS]


def untested(table: pd.DataFrame) -> str:
    """A Markdown line naming the runs fold_seeds leaves out (no test accuracy) and their status,
    or ''."""
    left = table[table.test_acc.isna()]
    if left.empty:
        return ""
    runs = ", ".join(f"{row.run} ({row.status})" for row in left.itertuples())
    return f"- left out, no test accuracy (table.md lists them): {runs}\n"


def provenance(runs: pd.DataFrame, data: same_data.Data, command: str | None) -> str:
    """Where the figures come from, as Markdown lines under each table: how many runs and when
    they ended, the commits, hardware and versions they ran on (env.* tags), the command, the data."""

    def distinct(name: str) -> str:
        values = runs[name].dropna().unique() if name in runs else []
        return "; ".join(sorted(map(str, values))) or "not recorded"

    ended = pd.to_datetime(runs["end_time"], utc=True).dropna()
    when = (
        f"{ended.min():%Y-%m-%d %H:%M} to {ended.max():%Y-%m-%d %H:%M} UTC" if len(ended) else "-"
    )
    commits = runs.get("tags.git_commit", pd.Series(dtype=object)).dropna().map(short_commit)
    return "\n".join([
        f"- runs: {len(runs)} (ids in the table), ended {when}",
        f"- commit: {'; '.join(sorted(set(commits))) or 'not recorded'}",
        f"- hardware: {distinct('tags.env.hardware')}",
        f"- versions: {distinct('tags.env.versions')}",
        f"- command: `{command}`" if command else f"- commands: {distinct('tags.command')}",
        f"- data: {data.name} (data_digest {data.digest})",
    ]) + "\n"  # fmt: skip


LONG_FLOAT = re.compile(r"(?<![\w.])-?\d+\.\d{5,}(?:e-?\d+)?")  # 0.0034336287120210677


def rounded(text: str, digits: int) -> str:
    """Overrides with long floats (an Optuna trial's values) cut to `digits` significant digits."""
    return LONG_FLOAT.sub(lambda m: f"{float(m.group()):.{digits}g}", str(text))


def to_markdown(table: pd.DataFrame) -> str:
    def cell(name: str, value) -> str:
        if pd.isna(value):
            return ""
        if name in PERCENT:
            return f"{value * 100:.2f}%"
        if name in STD:
            return f"{value * 100:.2f} pp"
        if name == "params":
            return f"{value:,}"
        if name == "delta_pp":
            return f"{value:+.2f}"
        if name == "overrides":  # the CSV keeps every digit
            value = rounded(value, 4)
        return str(value).replace("|", "\\|")

    columns = [c for c in table.columns if c != "run_id"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [
        "| " + " | ".join(cell(c, row[c]) for c in columns) + " |" for _, row in table.iterrows()
    ]
    return "\n".join(lines) + "\n"
