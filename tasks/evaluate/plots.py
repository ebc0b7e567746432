"""evaluation.png: the label-free picture of each model, and kNN per class where there are labels."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from matplotlib.figure import Figure


def plot_evaluation(
    spectra: Mapping[str, torch.Tensor],
    label_free: Mapping[str, Mapping[str, float]],
    per_class: Mapping[str, Mapping] | None,
    class_names: list[str],
    k: int,
    path: Path,
) -> Path:
    """Top: singular-value spectrum (RankMe) and the alignment-uniformity plane; bottom, with labels: kNN per class.

    Args:
        spectra: each model's singular values, largest first.
        label_free: each model's ``rankme``, ``alignment`` and ``uniformity``.
        per_class: each model's ``top1`` and ``per_class_top1``; None without labels.
    """
    rows = 1 if per_class is None else 2
    width = max(10.0, 0.7 * len(class_names) + 2) if per_class is not None else 10.0
    fig = Figure(figsize=(width, 4.2 * rows))  # no pyplot: no global state
    grid = fig.add_gridspec(rows, 2)
    _plot_spectra(fig.add_subplot(grid[0, 0]), spectra, label_free)
    _plot_alignment_uniformity(fig.add_subplot(grid[0, 1]), label_free)
    if per_class is not None:
        _plot_knn_per_class(fig.add_subplot(grid[1, :]), per_class, class_names, k)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _plot_spectra(ax, spectra: Mapping[str, torch.Tensor], label_free: Mapping[str, Mapping[str, float]]) -> None:
    for name, singular in spectra.items():
        normalized = (singular / singular[0].clamp_min(1e-12)).clamp_min(1e-12).cpu().numpy()
        ax.plot(range(1, len(normalized) + 1), normalized, label=f"{name}: RankMe {label_free[name]['rankme']:.1f}")
    ax.set(
        yscale="log",
        xlabel="singular value index",
        ylabel="singular value / largest",
        title="Embedding spectrum (flatter = higher rank)",
    )
    ax.legend(loc="lower left")


def _plot_alignment_uniformity(ax, label_free: Mapping[str, Mapping[str, float]]) -> None:
    for i, (name, scores) in enumerate(label_free.items()):
        point = (scores["uniformity"], scores["alignment"])
        ax.scatter(*point, s=60, label=name)
        # Offset per model, so that equal points (an untrained student) keep readable labels.
        ax.annotate(name, point, xytext=(6, 6 - 14 * i), textcoords="offset points")
    ax.set(
        xlabel="uniformity (lower is better)",
        ylabel="alignment (lower is better)",
        title="Alignment and uniformity (Wang & Isola 2020)",
    )
    ax.margins(0.3)
    ax.legend(loc="upper right")


def _plot_knn_per_class(ax, per_class: Mapping[str, Mapping], class_names: list[str], k: int) -> None:
    width = 0.8 / max(1, len(per_class))
    for i, (name, result) in enumerate(per_class.items()):
        positions = [c + (i - (len(per_class) - 1) / 2) * width for c in range(len(class_names))]
        ax.bar(positions, result["per_class_top1"], width, label=f"{name}: top-1 {result['top1']:.3f}")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set(ylabel="kNN top-1", ylim=(0, 1), title=f"kNN accuracy per class (k={k}) on the labeled images")
    ax.legend(loc="upper right")
