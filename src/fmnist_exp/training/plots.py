"""The two PNGs every run logs: training curves and the test confusion matrix."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def training_curves(history: list[dict[str, float]], path: Path) -> Path:
    """history: one dict per epoch with train/loss, train/acc, val/loss, val/acc."""
    epochs = range(1, len(history) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, metric in zip(axes, ("loss", "acc"), strict=True):
        for split, style in (("train", "o-"), ("val", "s--")):
            ax.plot(
                epochs,
                [h.get(f"{split}/{metric}", float("nan")) for h in history],
                style,
                label=split,
            )
        ax.set(xlabel="epoch", ylabel=metric, title=f"{metric}: train vs val")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion_matrix(matrix: torch.Tensor, class_names: tuple[str, ...], path: Path) -> Path:
    """matrix: [classes, classes] counts, rows = true class, columns = predicted class."""
    counts = matrix.cpu().numpy()
    fig, ax = plt.subplots(figsize=(8, 7), constrained_layout=True)
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set(
        xlabel="predicted", ylabel="true", title=f"test confusion matrix (n={int(counts.sum())})"
    )
    threshold = counts.max() / 2
    for (i, j), n in zip(
        ((i, j) for i in range(len(counts)) for j in range(len(counts))), counts.flat, strict=True
    ):
        ax.text(
            j,
            i,
            int(n),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if n > threshold else "black",
        )
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
