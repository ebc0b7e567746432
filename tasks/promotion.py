"""The champion gate: which metric decides whether a new version becomes champion, and the decision.

A version is promoted when its value of the gate metric beats the champion's value
of the *same* metric by ``register.champion_margin`` (higher, or lower for
uniformity). Every registered version carries a tag for each gate metric its
evaluation produced (``knn_top1``, ``linear_top1``, ``rankme``, ``uniformity``),
so a champion trained with labels can be compared with a version trained without
them on RankMe. Values of different metrics are never compared: when the champion
has no value of the gate metric, the new version is not promoted and the reason
says so.

The metrics themselves are defined in :mod:`tasks.gate_metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tasks.gate_metrics import AUTO, GATE_METRICS, GateMetric

# Tag naming the metric that decided a version's promotion.
GATE_TAG = "gate_metric"


class GateMetricMissingError(ValueError):
    """``register.metric`` names a metric the evaluation did not produce."""


def choose_gate_metric(choice: str, metrics: Mapping[str, Any]) -> GateMetric:
    """The metric named by ``register.metric``; for ``auto``, kNN top-1 if the evaluation has it, else RankMe.

    Raises:
        GateMetricMissingError: if the named metric is not in ``metrics``.
    """
    if choice == AUTO:
        knn = GATE_METRICS["knn_top1"]
        return knn if knn.value(metrics) is not None else GATE_METRICS["rankme"]
    metric = GATE_METRICS[choice]
    if metric.value(metrics) is None:
        available = [name for name, m in GATE_METRICS.items() if m.value(metrics) is not None]
        raise GateMetricMissingError(
            f"register.metric = {choice!r}, but the evaluation has no {metric.title} "
            f"(it needs labeled images); it has {', '.join(available) or 'none'}: use one of those or 'auto'."
        )
    return metric


def metric_tags(metrics: Mapping[str, Any]) -> dict[str, str]:
    """A tag per gate metric the evaluation produced, e.g. ``{"knn_top1": "0.331200", "rankme": "212.4"}``."""
    values = {name: metric.value(metrics) for name, metric in GATE_METRICS.items()}
    return {name: f"{value:.6f}" for name, value in values.items() if value is not None}


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    champion_value: float | None = None


def decide(
    metric: GateMetric,
    value: float,
    champion_version: str | None,
    champion_tags: Mapping[str, str],
    margin: float,
) -> Decision:
    """Whether a version with ``value`` of ``metric`` replaces the champion (``champion_version`` None: none yet)."""
    if champion_version is None:
        return Decision(True, "first version: no champion yet")
    champion = f"champion v{champion_version}"
    # Versions registered before the gate had a choice were decided on kNN top-1.
    champion_gate = champion_tags.get(GATE_TAG, "knn_top1")
    if metric.name not in champion_tags:
        return Decision(
            False,
            f"{champion} has no {metric.title} (it was promoted on {champion_gate}), and values of different "
            f"metrics are never compared: champion kept; move the alias by hand if this version is better",
        )
    champion_value = float(champion_tags[metric.name])
    switched = f"; the champion was promoted on {champion_gate}" if champion_gate != metric.name else ""
    if metric.higher_is_better:
        better, comparison = value > champion_value + margin, f"{champion} {champion_value:.4f} + margin {margin}"
        symbol = ">" if better else "<="
    else:
        better, comparison = value < champion_value - margin, f"{champion} {champion_value:.4f} - margin {margin}"
        symbol = "<" if better else ">="
    return Decision(better, f"{metric.title} {value:.4f} {symbol} {comparison}{switched}", champion_value)
