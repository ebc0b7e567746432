"""The champion gate: the metric that decides, and a decision that never compares different metrics."""

from __future__ import annotations

import pytest

from tasks.gate_metrics import GATE_METRICS
from tasks.promotion import GateMetricMissingError, choose_gate_metric, decide, metric_tags

WITH_LABELS = {"student": {"top1": 0.41, "linear_top1": 0.45, "rankme": 180.5, "uniformity": -1.1}, "k": 200}
WITHOUT_LABELS = {"student": {"rankme": 150.25, "alignment": 0.5}, "labels": {"skipped": "no labels"}}
KNN, RANKME, UNIFORMITY = GATE_METRICS["knn_top1"], GATE_METRICS["rankme"], GATE_METRICS["uniformity"]


def test_auto_is_knn_with_labels_and_rankme_without() -> None:
    assert choose_gate_metric("auto", WITH_LABELS) is KNN
    assert choose_gate_metric("auto", WITHOUT_LABELS) is RANKME
    assert choose_gate_metric("linear_top1", WITH_LABELS).value(WITH_LABELS) == 0.45
    with pytest.raises(GateMetricMissingError, match="register.metric = 'knn_top1'.*it has rankme"):
        choose_gate_metric("knn_top1", WITHOUT_LABELS)


def test_every_metric_the_evaluation_has_becomes_a_tag() -> None:
    assert metric_tags(WITH_LABELS) == {
        "knn_top1": "0.410000",
        "linear_top1": "0.450000",
        "rankme": "180.500000",
        "uniformity": "-1.100000",
    }
    assert metric_tags(WITHOUT_LABELS) == {"rankme": "150.250000"}


def test_promotion_compares_the_same_metric_with_a_margin() -> None:
    assert decide(KNN, 0.4, None, {}, 0.0).promote
    better = decide(KNN, 0.42, "3", {"knn_top1": "0.40", "gate_metric": "knn_top1"}, margin=0.01)
    assert better.promote and better.champion_value == 0.40 and "champion v3" in better.reason
    within_margin = decide(KNN, 0.405, "3", {"knn_top1": "0.40"}, margin=0.01)
    assert not within_margin.promote and "<=" in within_margin.reason


def test_a_change_of_metric_is_reported_and_never_mixed() -> None:
    # A champion promoted on kNN also carries its RankMe: a label-free version is compared on RankMe, and told so.
    switched = decide(RANKME, 200.0, "2", {"knn_top1": "0.41", "rankme": "180.5", "gate_metric": "knn_top1"}, 0.0)
    assert switched.promote and switched.champion_value == 180.5
    assert "promoted on knn_top1" in switched.reason
    # A champion without RankMe (registered before label-free metrics): kNN 0.41 is not compared with RankMe 200.
    old = decide(RANKME, 200.0, "1", {"knn_top1": "0.41"}, 0.0)
    assert not old.promote and old.champion_value is None
    assert "has no RankMe" in old.reason and "never compared" in old.reason


def test_uniformity_promotes_the_lower_value() -> None:
    tags = {"uniformity": "-1.10", "gate_metric": "uniformity"}
    lower = decide(UNIFORMITY, -1.25, "4", tags, margin=0.1)
    assert lower.promote and "uniformity -1.2500 < champion v4 -1.1000 - margin 0.1" == lower.reason
    within_margin = decide(UNIFORMITY, -1.15, "4", tags, margin=0.1)
    assert not within_margin.promote and ">=" in within_margin.reason
    assert not decide(UNIFORMITY, -0.5, "4", tags, margin=0.0).promote
