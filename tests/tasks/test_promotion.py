"""The champion gate: the metric that decides, and a decision that never compares different metrics."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.gate_metrics import GATE_METRICS
from tasks.promotion import (
    GateMetricMissingError,
    RegisteredVersion,
    champion_target,
    choose_gate_metric,
    decide,
    metric_tags,
    outcome,
    peers_in_progress,
    registered_together,
)

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


def test_the_same_score_registered_again_ties_whatever_its_float32_rounding() -> None:
    for score in (0.1, 0.13, 0.3312):
        stored = metric_tags({"student": {"top1": float(np.float32(score))}})["knn_top1"]
        decision = decide(KNN, float(np.float32(score)), "1", {"knn_top1": stored}, margin=0.0)
        assert not decision.promote, decision.reason


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


# --- registrations at the same time ---------------------------------------------------------------------

HOUR_MS = 3_600_000


def registered(
    version: int, top1: float | None = None, created_ms: int = 10 * HOUR_MS, **tags: str
) -> RegisteredVersion:
    knn = {} if top1 is None else {"knn_top1": f"{top1:.6f}", "gate_metric": "knn_top1"}
    return RegisteredVersion(str(version), {**knn, **tags}, created_ms)


def test_peers_are_the_versions_not_settled_and_less_than_an_hour_older() -> None:
    own = registered(7, created_ms=10 * HOUR_MS)
    versions = [
        registered(2, created_ms=8 * HOUR_MS),  # unsettled for two hours: a registration that died
        registered(4, created_ms=9 * HOUR_MS + 1),
        registered(5, created_ms=9 * HOUR_MS + 2, promotion_settled="true"),
        registered(8, created_ms=10 * HOUR_MS + 5),  # created after it, still registering
        own,
    ]
    assert peers_in_progress(versions, own) == "4,7,8"
    assert peers_in_progress([], own) == "7"


def test_versions_registered_together_are_linked_through_others() -> None:
    # 3 saw 1 and 2; 5 started after 1 and 2 settled, while 3 was still deciding; 6 never started deciding.
    versions = [
        registered(1, promotion_peers="1"),
        registered(2, promotion_peers="1,2"),
        registered(3, promotion_peers="1,2,3"),
        registered(4, promotion_peers="4"),
        registered(5, promotion_peers="3,5,6"),
        registered(6),
    ]
    together = {version: [v.version for v in registered_together(versions, version)] for version in "12345"}
    assert together == {"1": ["1", "2", "3", "5"], "2": ["1", "2", "3", "5"], "3": ["1", "2", "3", "5"]} | {
        "4": ["4"],
        "5": ["1", "2", "3", "5"],
    }
    assert registered_together(versions, "6") == []  # not deciding: it links nothing


def test_the_target_is_the_best_candidate_with_the_margin_only_against_an_outsider() -> None:
    incumbent = registered(1, 0.50)
    a, b, c = registered(2, 0.600), registered(3, 0.605), registered(4, 0.505)
    # The incumbent is not among them: the best replaces it only if it beats it by the margin.
    assert champion_target(KNN, 0.01, incumbent, [a, b, c]) == "3"
    assert champion_target(KNN, 0.01, incumbent, [c]) == "1"
    assert champion_target(KNN, 0.01, None, [c]) == "4"  # no champion yet
    assert champion_target(KNN, 0.01, incumbent, []) == "1"
    # A champion registered together with them: the best wins, margin or not (b is 0.005 better than a).
    assert champion_target(KNN, 0.01, a, [a, b, c]) == "3"
    assert champion_target(KNN, 0.01, b, [a, b, c]) == "3"
    # A total order: equal values, the older version wins.
    twin = registered(5, 0.605)
    assert champion_target(KNN, 0.01, twin, [a, b, twin]) == "3"
    assert champion_target(KNN, 0.01, incumbent, [twin, b]) == "3"


def test_the_target_never_compares_different_metrics() -> None:
    rankme_only = RegisteredVersion("1", {"rankme": "150.0", "gate_metric": "rankme"}, 0)
    assert champion_target(KNN, 0.0, rankme_only, [registered(2, 0.9)]) == "1"  # it has no kNN: it stays
    # A version decided on RankMe is not a kNN candidate, even with a kNN value.
    on_rankme = RegisteredVersion("3", {"knn_top1": "0.95", "rankme": "99", "gate_metric": "rankme"}, 0)
    assert champion_target(KNN, 0.0, registered(1, 0.5), [registered(2, 0.6), on_rankme]) == "2"

    # Lower is better for uniformity; the margin still applies against an outsider.
    def uniform(version: int, value: float) -> RegisteredVersion:
        return RegisteredVersion(str(version), {"uniformity": str(value), "gate_metric": "uniformity"}, 0)

    candidates = [uniform(2, -1.30), uniform(3, -1.25)]
    assert champion_target(UNIFORMITY, 0.1, uniform(1, -1.10), candidates) == "2"
    assert champion_target(UNIFORMITY, 0.25, uniform(1, -1.10), candidates) == "1"


def test_the_outcome_says_what_registrations_at_the_same_time_changed() -> None:
    beat = decide(KNN, 0.6, "1", {"knn_top1": "0.5"}, 0.01)
    within = decide(KNN, 0.505, "2", {"knn_top1": "0.5"}, 0.01)
    mine, other = registered(3, 0.6), registered(4, 0.7)
    assert outcome(KNN, "3", beat, mine, held=True) == (True, beat.reason)
    assert outcome(KNN, "3", within, mine, held=True) == (
        True,
        f"{within.reason}; promoted as the best of the versions registered at the same time",
    )
    assert outcome(KNN, "3", within, other, held=False) == (False, within.reason)
    promoted, reason = outcome(KNN, "3", beat, other, held=True)
    assert not promoted
    assert reason == f"{beat.reason}: promoted, then superseded by v4 (kNN top-1 0.7000), registered at the same time"
    assert outcome(KNN, "3", beat, other, held=False)[1].endswith(
        "v4 (kNN top-1 0.7000), registered at the same time, is champion instead"
    )
