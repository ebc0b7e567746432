"""Figures people would rather look at than read: training curves and kNN results."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ssl_core.engine import TrainHistory  # noqa: E402


def plot_training_history(history: TrainHistory, path: Path, title: str) -> Path:
    """Loss and embedding spread per epoch, side by side."""
    epochs = [e.epoch for e in history.epochs]
    fig, (ax_loss, ax_std) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [e.loss for e in history.epochs], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="training loss")
    ax_std.plot(epochs, [e.embedding_std for e in history.epochs], marker="o", color="tab:green")
    ax_std.set(xlabel="epoch", ylabel="per-dim std of normalized features", title="embedding spread (collapse -> 0)")
    ax_std.set_ylim(bottom=0)
    for ax in (ax_loss, ax_std):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_knn(results: dict[str, dict], class_names: list[str], path: Path, k: int) -> Path:
    """Per-class kNN top-1 of each model, with the overall accuracy in the legend."""
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(class_names) + 2), 4))
    width = 0.8 / max(1, len(results))
    for i, (name, result) in enumerate(results.items()):
        positions = [c + (i - (len(results) - 1) / 2) * width for c in range(len(class_names))]
        ax.bar(positions, result["per_class_top1"], width, label=f"{name}: top-1 {result['top1']:.3f}")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set(ylabel="kNN top-1", ylim=(0, 1), title=f"kNN accuracy per class (k={k})")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
