"""The report's chart (params_vs_accuracy.png): one point per configuration (run_tables.fold_seeds),
its mean test accuracy against its parameter count, a bar from the worst to the best seed, and a
grey line to the published number where the run carries one.

Points are named after what their runs were told to do: the overrides that differ between them
(what every run shares is said once, in the heading with the sweep's command), floats to 3
significant digits, a search's `+search.trial=N` as `trial N`, and without those that change
nothing a run trains (skip_finished=true, logger.*). Short names sit beside their points; when a name is long or there
are many points (a search), each point gets a number and a key under the chart lists them, best
first.
"""

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from fmnist_exp import checks  # noqa: E402
from fmnist_exp.run_tables import rounded  # noqa: E402
from fmnist_exp.tracking import resume  # noqa: E402

BESIDE = (12, 32)  # at most this many points, names at most this long: names beside the points
KEY_WIDTH = 140  # characters per line of the key and the heading (7-point monospace, 9 inches)


def names(done: pd.DataFrame) -> tuple[pd.Series, str]:
    """(a short name per row, the overrides every row shares)."""
    tokens = done.overrides.fillna("").map(lambda o: rounded(o, 3).split())
    shared = set.intersection(*map(set, tokens)) if len(done) > 1 else set()

    def name(row_tokens: list[str], model: str) -> str:
        kept = [t.replace("experiment=", "") for t in row_tokens if t not in shared]
        trial = [t.split("=", 1)[1] for t in kept if t.startswith("+search.trial=")]
        kept = [t for t in kept if not shows_nothing(t)]
        return " ".join([f"trial {t}" for t in trial] + kept) or model

    named = pd.Series(
        [name(t, m) for t, m in zip(tokens, done.model, strict=True)], index=done.index
    )
    twice = named.duplicated(keep=False)  # one name, two configs (a file edited between runs)
    named = named.where(~twice, named + ", " + done.epochs.astype(str) + " epochs")
    named = named.where(done.runs < 2, named + " (x" + done.runs.astype(str) + ")")
    common = " ".join(t for t in tokens.iloc[0] if t in shared and not shows_nothing(t))
    return named, common


def shows_nothing(override: str) -> bool:
    """An override that does not change what a run trains (skip_finished=true, logger.*, the
    search's bookkeeping): left out of the names."""
    key = override.split("=", 1)[0].lstrip("+~")
    return checks.in_block(key, resume.NOT_PART_OF_THE_EXPERIMENT)


def draw_points(ax: plt.Axes, done: pd.DataFrame, named: pd.Series) -> list[str]:
    """The points, their names or numbers, and the published numbers; returns the key's lines
    (empty when the names sit beside the points)."""
    mean = done.test_acc_mean * 100
    ax.errorbar(done.params, mean, yerr=[mean - done.test_acc_min * 100, done.test_acc_max * 100 - mean],
                fmt="o", color="tab:blue", capsize=3, zorder=3,
                label="test accuracy, mean (bar: min to max over seeds)")  # fmt: skip
    published = done.dropna(subset=["reference_acc"])
    if not published.empty:
        ax.scatter(published.params, published.reference_acc * 100, facecolors="none", edgecolors="tab:red",
                   zorder=3, label="published")  # fmt: skip
        for _, row in published.iterrows():
            ax.plot([row.params] * 2, [row.reference_acc * 100, row.test_acc_mean * 100],
                    color="grey", lw=0.8)  # fmt: skip
    if len(done) <= BESIDE[0] and named.str.len().max() <= BESIDE[1]:
        label_beside(ax, done.assign(name=named))
        return []
    ranked = done.assign(name=named).sort_values("test_acc_mean", ascending=False)
    key, placed = [], []
    span = float(ranked.test_acc_mean.max() - ranked.test_acc_mean.min()) or 1.0
    for number, row in enumerate(ranked.itertuples(), start=1):
        # a number near others already placed goes right of them, not over them
        near = sum(abs(math.log(row.params / p)) < 0.1 and abs(row.test_acc_mean - a) < 0.04 * span
                   for p, a in placed)  # fmt: skip
        placed.append((row.params, row.test_acc_mean))
        ax.annotate(str(number), (row.params, row.test_acc_mean * 100), fontsize=7,
                    xytext=(4 + 10 * near, 3), textcoords="offset points")  # fmt: skip
        text = f"{number:>3}  {row.test_acc_mean * 100:.2f}%  {row.params:,}  {row.name}"
        key += textwrap.wrap(text, KEY_WIDTH, subsequent_indent=" " * 5)
    return key


def label_beside(ax: plt.Axes, labelled: pd.DataFrame) -> None:
    """Names beside the points. Points less than 1.4x apart in parameters and 1.5 points apart in
    accuracy would run into each other: such a stack lists its names top to bottom, one line each,
    right of its largest model, from its best accuracy down."""
    labelled = labelled.sort_values("params").reset_index(drop=True)
    params = labelled.params.astype(float)  # Int64 would make the first row's ratio <NA>, no group
    labelled["cluster"] = (params / params.shift() >= 1.4).cumsum()
    for _, column in labelled.groupby("cluster"):
        column = column.sort_values("test_acc_mean", ascending=False)
        acc = column.test_acc_mean * 100
        for _, stack in column.groupby((acc.shift() - acc > 1.5).cumsum()):
            right, top = float(stack.params.max()), stack.test_acc_mean.iloc[0] * 100
            for below, row in enumerate(stack.itertuples()):
                ax.annotate(row.name, (right, top), fontsize=7, xytext=(7, 2 - 9 * below),
                            textcoords="offset points")  # fmt: skip


def size_ticks(ax: plt.Axes, params: pd.Series) -> None:
    """Parameter counts written out (85,918, not 8.6 x 10^4); with few sizes, a tick at each one,
    leaving out one within 5% of the last (their labels would print over each other)."""
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    sizes = sorted(float(p) for p in params.unique())
    if len(sizes) <= 8:
        ticks = []
        for size in sizes:
            if not ticks or size > ticks[-1] * 1.05:
                ticks.append(size)
        ax.set_xticks(ticks)
        ax.tick_params(axis="x", labelrotation=30)


def plot(seeds: pd.DataFrame, path: Path, command: str | None = None) -> Path:
    """params_vs_accuracy.png for a folded table (run_tables.fold_seeds); `command`, the sweep's,
    heads the chart."""
    done = seeds.dropna(subset=["params", "test_acc_mean"])
    named, common = names(done) if not done.empty else (pd.Series(dtype=str), "")
    key = []
    fig = plt.figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.add_subplot()
    if done.empty:  # every run stopped, failed or was pruned before its test
        ax.text(0.5, 0.5, "no run with a test accuracy", ha="center", transform=ax.transAxes)
    else:
        key = draw_points(ax, done, named)
        ax.legend(loc="best", fontsize=8)
        ax.set_xscale("log")
        size_ticks(ax, done.params)
        ax.margins(x=0.25 if not key else 0.08)  # room for the names on the right
    ax.set(xlabel="parameters (log scale)", ylabel="test accuracy (%)")
    ax.set_title("Fashion-MNIST: parameters vs test accuracy", fontsize=11)
    heading = [f"sweep: {command}"] * bool(command) + [f"every run: {common}"] * bool(common)
    if heading:
        cut = [h if len(h) <= KEY_WIDTH else h[: KEY_WIDTH - 3] + "..." for h in heading]
        fig.suptitle("\n".join(cut), fontsize=7, x=0.01, ha="left", family="monospace")
    ax.grid(alpha=0.3, which="both")
    if key:
        fig.set_figheight(5.5 + 0.13 * len(key))  # 7-point lines, about 0.13 inch each
        below = (0.13 * len(key) + 0.15) / fig.get_figheight()  # the key's share, from the bottom
        fig.text(0.01, 0.01, "\n".join(key), family="monospace", fontsize=7, va="bottom")
        fig.get_layout_engine().set(rect=(0, below, 1, 1 - below))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
