"""The run's pictures: curves.png (loss and accuracy per epoch) and confusion.png (the best validation's)."""
from __future__ import annotations

import os

import numpy as np

from toolkit.artifacts import atomic_path


def save_plots(run_dir: str, history: list, confusion: list | None, labels: list, top1: float) -> None:
    """curves.png from the history; confusion.png from the best validation's confusion matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if history:
        fig = _curves(plt, history)
        _save_fig(fig, os.path.join(run_dir, "curves.png"))
        plt.close(fig)
    if confusion is not None:
        fig = confusion_figure(plt, confusion, labels, f"validation confusion (top-1 {top1:.1f}%)")
        _save_fig(fig, os.path.join(run_dir, "confusion.png"))
        plt.close(fig)


def _curves(plt, history: list):
    epochs = [h["epoch"] for h in history]
    evaluated = [h for h in history if h["val_top1"] is not None]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot([h["epoch"] for h in evaluated], [h["val_loss"] for h in evaluated], "o-", label="val")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax1.legend()
    ax2.plot(epochs, [h["train_top1"] for h in history], "o-", label="train top-1")
    ax2.plot([h["epoch"] for h in evaluated], [h["val_top1"] for h in evaluated], "o-", label="val top-1")
    ax2.plot([h["epoch"] for h in evaluated], [h["val_top5"] for h in evaluated], "--", label="val top-5")
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax2.legend()
    fig.tight_layout()
    return fig


def confusion_figure(plt, confusion, labels: list, title: str):
    """The confusion matrix (rows: true, columns: predicted) as a matplotlib figure, counts in the cells."""
    matrix = np.asarray(confusion)
    size = min(20, 3 + 0.35 * len(labels))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    if len(labels) <= 30:
        ax.set_xticks(range(len(labels)), labels, rotation=90)
        ax.set_yticks(range(len(labels)), labels)
        for (i, j), v in np.ndenumerate(matrix):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                        color="white" if v > matrix.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    return fig


def _save_fig(fig, path: str) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
