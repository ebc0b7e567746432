"""The metrics that can decide promotion to champion (``register.metric``), and where each sits in metrics.json.

Its own small module, free of torch and MLflow, because ``tasks.params`` validates
``register.metric`` against it and every stage loads the params: the gate's logic
(:mod:`tasks.promotion`) can change without making the training stages stale.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GateMetric:
    """A metric of the evaluate stage's metrics.json that can decide promotion.

    Attributes:
        name: the metric's tag on a model version, and its name in ``register.metric``.
        key: where the student's value sits in metrics.json.
        title: how messages name it.
        higher_is_better: False for a metric to minimize (uniformity).
    """

    name: str
    key: tuple[str, ...]
    title: str
    higher_is_better: bool = True

    def value(self, metrics: Mapping[str, Any]) -> float | None:
        """The metric in an evaluation's ``metrics``, or None if that evaluation has none."""
        node: Any = metrics
        for part in self.key:
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return float(node)


GATE_METRICS: dict[str, GateMetric] = {
    metric.name: metric
    for metric in (
        GateMetric("knn_top1", ("student", "top1"), "kNN top-1"),
        GateMetric("linear_top1", ("student", "linear_top1"), "linear-probe top-1"),
        GateMetric("rankme", ("student", "rankme"), "RankMe"),
        # Not the default: on the CPU benchmark it ordered 82 % of checkpoint pairs as kNN
        # did, RankMe 45 %, but it ranks a random init last (docs/evaluation.md).
        GateMetric("uniformity", ("student", "uniformity"), "uniformity", higher_is_better=False),
    )
}
AUTO = "auto"  # kNN top-1 when the evaluation had labels, RankMe when it had none
GATE_CHOICES = (AUTO, *GATE_METRICS)
