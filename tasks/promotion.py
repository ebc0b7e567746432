"""The champion gate: which metric decides whether a new version becomes champion, and the decision.

A version is promoted when its value of the gate metric beats the champion's value
of the *same* metric by ``register.champion_margin`` (higher, or lower for
uniformity). Every registered version carries a tag for each gate metric its
evaluation produced (``knn_top1``, ``linear_top1``, ``rankme``, ``uniformity``),
so a champion trained with labels can be compared with a version trained without
them on RankMe. Values of different metrics are never compared: when the champion
has no value of the gate metric, the new version is not promoted and the reason
says so.

Registrations at the same time
------------------------------
MLflow has no compare-and-set on an alias, so "read the champion, decide, move
the alias" races: two pipelines registering into one registry can both read the
old champion, and the worse version, written last, would stay champion. The
alias is therefore settled by a rule that converges, whatever the order:

1. A registration tags its version with its gate metric and value, then tags it
   ``promotion_peers``: the versions still being registered when it starts, i.e.
   not yet tagged ``promotion_settled`` and created within the hour before it.
   Peers link versions; the versions linked to it, directly or through others,
   are the ones *registered at the same time* (its candidates: those of its gate
   metric).
2. It reads the champion and the versions, and computes the target: if the
   champion is itself a candidate, the best candidate (between versions
   registered together the better wins, margin or not); otherwise the best
   candidate if it beats the champion by the margin (:func:`decide`), else the
   champion. "Best" is a total order: the better value, then the older version.
3. If the target is not the champion it moves the alias and goes back to 2; when
   a read finds the champion on target, it tags its version ``promotion_settled``.

Why this converges: every registration reads the champion again after each of
its writes, so the last of all these reads comes after every write: it reads the
final champion. Every registration that ran at the same time as the one making
that read is linked to it (of two that overlap, the one that started second saw
the other unsettled), and tagged its version before writing anything, so the
last reader sees all their tags; and it left the alias on its target, which
depends on the tags and not on the order the writes came in. A registration
that had read the champion before another one wrote, and writes after it, is
caught the same way: its own next read, or a later one's, moves the alias back.
Hence: the best version registered at the same time, if it beats the champion it
replaces by the margin; never a worse one that happened to write last. One
registration alone behaves exactly as before (its peers are itself).

Limits: a registration that dies while deciding stays unsettled, and takes part
in those of the next hour (one that dies before deciding is never promoted by
another). Registrations at the same time on *different* gate metrics judge each
other's versions only through :func:`decide`, and could disagree; a registration
gives up after a few rounds and logs a warning. Moving the alias back by hand
holds: a settled version is no later registration's peer, so none brings back
the version it replaced (unless registrations kept overlapping ever since).

The metrics themselves are defined in :mod:`tasks.gate_metrics`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tasks.gate_metrics import AUTO, GATE_METRICS, GateMetric

# Tag naming the metric that decided a version's promotion.
GATE_TAG = "gate_metric"
# Versions registered before the gate had a choice were decided on kNN top-1.
LEGACY_GATE = "knn_top1"
# The versions still being registered when this one started deciding ("2,5,6").
PEERS_TAG = "promotion_peers"
# Set once a registration has seen the champion on target: it no longer counts as being registered.
SETTLED_TAG = "promotion_settled"
# A version still unsettled an hour after its creation is a registration that died: registering
# takes seconds from the version's creation to its decision, an hour leaves room for a slow server.
UNSETTLED_FOR_MS = 3_600_000
# Rounds of "read, move" a registration makes before giving up: registrations on one gate metric agree
# on the target, so a round per write that came in between suffices; only different metrics can disagree.
PROMOTION_ROUNDS = 10


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
    return {name: tag_value(value) for name, value in values.items() if value is not None}


def tag_value(value: float) -> str:
    """A metric value as a version tag holds it."""
    return f"{value:.6f}"


def gate_of(tags: Mapping[str, str]) -> str:
    """The gate metric a version was decided on, from its tags."""
    return tags.get(GATE_TAG, LEGACY_GATE)


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
    """Whether a version with ``value`` of ``metric`` replaces the champion (``champion_version`` None: none yet).

    ``value`` is compared as its tag holds it (6 decimals), as the champion's is: the
    same model registered again ties, whatever the rounding of its float32 score.
    """
    value = float(tag_value(value))
    if champion_version is None:
        return Decision(True, "first version: no champion yet")
    champion = f"champion v{champion_version}"
    champion_gate = gate_of(champion_tags)
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


# --- registrations at the same time (the module docstring says why this converges) ---------


@dataclass(frozen=True)
class RegisteredVersion:
    """What promotion reads of a registered version: its number, tags and creation time (ms, the server's clock)."""

    version: str
    tags: Mapping[str, str]
    created_ms: int

    @classmethod
    def of(cls, model_version: Any) -> RegisteredVersion:
        """From an MLflow ``ModelVersion`` (whose ``version`` is an int or a str, depending on the call)."""
        return cls(str(model_version.version), dict(model_version.tags), int(model_version.creation_timestamp))

    @property
    def peers(self) -> list[str]:
        """The versions it saw being registered when it started deciding; empty if it never started."""
        return [peer for peer in self.tags.get(PEERS_TAG, "").split(",") if peer]


def peers_in_progress(versions: Iterable[RegisteredVersion], own: RegisteredVersion) -> str:
    """The ``promotion_peers`` tag of ``own``: versions not settled, created within the hour before it, and itself."""
    since = own.created_ms - UNSETTLED_FOR_MS
    in_progress = [v for v in versions if SETTLED_TAG not in v.tags and v.created_ms >= since]
    return ",".join(sorted({own.version, *(v.version for v in in_progress)}, key=int))


def registered_together(versions: Iterable[RegisteredVersion], own: str) -> list[RegisteredVersion]:
    """The versions linked to ``own`` by ``promotion_peers``, directly or through others (``own`` too).

    Only versions that started deciding (tagged their peers) are linked: a version
    that died before deciding never becomes champion by someone else's hand.
    """
    started = {v.version: v for v in versions if v.peers}
    links: dict[str, set[str]] = {version: set() for version in started}
    for version in started.values():
        for peer in version.peers:
            if peer in started and peer != version.version:
                links[version.version].add(peer)
                links[peer].add(version.version)
    if own not in started:
        return []
    together, queue = {own}, deque([own])
    while queue:
        for peer in links[queue.popleft()] - together:
            together.add(peer)
            queue.append(peer)
    return [started[version] for version in sorted(together, key=int)]


def rank(metric: GateMetric, version: RegisteredVersion) -> tuple[float, int]:
    """A total order on versions tagged with ``metric``: the better value first, then the older version."""
    value = float(version.tags[metric.name])
    return (value if metric.higher_is_better else -value, -int(version.version))


def champion_target(
    metric: GateMetric,
    margin: float,
    champion: RegisteredVersion | None,
    together: Iterable[RegisteredVersion],
) -> str | None:
    """The version the champion alias should point at, seen by a registration on ``metric``.

    ``together``: the versions registered at the same time as it (:func:`registered_together`);
    its candidates are those decided on ``metric``. If ``champion`` is one of them,
    the best candidate, margin or not; otherwise the best candidate if it beats the
    champion by ``margin`` under :func:`decide`; otherwise the champion (None: none).
    """
    current = None if champion is None else champion.version
    candidates = [v for v in together if gate_of(v.tags) == metric.name and metric.name in v.tags]
    if not candidates:
        return current
    best = max(candidates, key=lambda v: rank(metric, v))
    if current in {v.version for v in candidates}:
        return best.version
    champion_tags = {} if champion is None else champion.tags
    beats = decide(metric, float(best.tags[metric.name]), current, champion_tags, margin).promote
    return best.version if beats else current


def outcome(
    metric: GateMetric, version: str, decision: Decision, champion: RegisteredVersion | None, held: bool
) -> tuple[bool, str]:
    """Whether ``version`` ended champion, and why.

    Args:
        decision: ``version`` against the champion it first read.
        champion: the champion its registration left.
        held: whether that registration saw ``version`` champion at some point.
    """
    if champion is not None and champion.version == version:
        if decision.promote:
            return True, decision.reason
        return True, f"{decision.reason}; promoted as the best of the versions registered at the same time"
    if not decision.promote:
        return False, decision.reason
    final = "no version" if champion is None else f"v{champion.version}"
    if champion is not None and metric.name in champion.tags:
        final += f" ({metric.title} {float(champion.tags[metric.name]):.4f})"
    if held:
        return False, f"{decision.reason}: promoted, then superseded by {final}, registered at the same time"
    return False, f"{decision.reason}; but {final}, registered at the same time, is champion instead"
