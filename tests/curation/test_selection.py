"""Selection strategies and subset metrics, against naive references and on clustered data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans

from ssl_core.curation.selection import STRATEGIES, kcenter_greedy, select, subset_metrics, typiclust

CLUSTER_SIZES = (90, 80, 70, 60, 50, 40, 35, 30, 25, 20)  # unequal, so a random pick misses small ones


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def clusters() -> tuple[np.ndarray, np.ndarray]:
    """(N, 16) unit vectors in 10 well-separated clusters of CLUSTER_SIZES, and each one's cluster."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(CLUSTER_SIZES)), CLUSTER_SIZES)
    x = unit(unit(rng.normal(size=(len(CLUSTER_SIZES), 16)))[labels] + 0.05 * rng.normal(size=(len(labels), 16)))
    distance = 1.0 - x.astype(np.float64) @ x.T
    same = labels[:, None] == labels[None, :]
    assert distance[same].max() < distance[~same].min()  # every cluster farther from the others than it is wide
    return x, labels


def naive_farthest_points(x: np.ndarray, size: int, start: int) -> list[int]:
    """Gonzalez's traversal: from ``start``, repeatedly the point whose nearest pick is farthest (cosine distance)."""
    distance = 1.0 - x.astype(np.float64) @ x.T.astype(np.float64)  # (N, N)
    picked = [start]
    while len(picked) < size:
        picked.append(int(np.argmax(distance[:, picked].min(axis=1))))
    return picked


def test_kcenter_equals_farthest_point_traversal():
    x = unit(np.random.default_rng(1).normal(size=(200, 8)))
    for seed in range(3):
        start = int(np.random.default_rng(seed).integers(len(x)))  # the seeded random start
        picks = kcenter_greedy(x, 30, seed)
        assert picks.tolist() == naive_farthest_points(x, 30, start)


def naive_typiclust(x: np.ndarray, size: int, seed: int, neighbors: int) -> list[int]:
    """TypiClust from the paper: per k-means cluster, largest first, the member with the smallest mean
    cosine distance to its ``neighbors`` nearest other members."""
    assignment = KMeans(n_clusters=size, init="k-means++", n_init=1, random_state=seed).fit_predict(x)
    counts = {c: int(np.sum(assignment == c)) for c in np.unique(assignment)}
    picks = []
    for cluster in sorted(counts, key=lambda c: (-counts[c], c)):
        members = np.flatnonzero(assignment == cluster)
        mean_distance = []
        for i in members:
            others = sorted(1.0 - float(x[i] @ x[j]) for j in members if j != i)
            mean_distance.append(np.mean(others[:neighbors]) if others else 0.0)
        picks.append(int(members[int(np.argmin(mean_distance))]))
    return picks


def test_typicality_picks_each_clusters_most_typical_image(clusters):
    x, _ = clusters
    assert typiclust(x, 10, seed=0, neighbors=20).tolist() == naive_typiclust(x, 10, seed=0, neighbors=20)


def test_kcenter_covers_every_cluster_and_beats_random(clusters):
    x, labels = clusters
    for seed in range(5):
        picks = select(x, 10, "kcenter", seed=seed)
        assert sorted(labels[picks]) == list(range(10))  # exactly one per cluster
        random = select(x, 10, "random", seed=seed)
        assert subset_metrics(x, picks).coverage_mean_distance < subset_metrics(x, random).coverage_mean_distance


def test_typicality_beats_random(clusters):
    x, labels = clusters
    for seed in range(5):
        picks = select(x, 10, "typicality", seed=seed)
        assert len(set(picks.tolist())) == 10 and len(set(labels[picks])) >= 7
        random = select(x, 10, "random", seed=seed)
        assert subset_metrics(x, picks).coverage_mean_distance < subset_metrics(x, random).coverage_mean_distance


def test_typicality_covers_every_cluster(clusters):
    x, labels = clusters
    assert all(len(set(labels[select(x, 10, "typicality", seed=seed)])) == 10 for seed in range(10))


def brute_force_metrics(x: np.ndarray, subset: np.ndarray) -> tuple[float, float, float]:
    distance = 1.0 - x.astype(np.float64) @ x[subset].T.astype(np.float64)  # (N, picks)
    within = distance[subset]
    np.fill_diagonal(within, np.inf)  # a pick's nearest other pick is not itself
    coverage = distance.min(axis=1)
    return within.min(axis=1).mean(), coverage.mean(), coverage.max()


@pytest.mark.parametrize("size", [2, 7, 40])
def test_subset_metrics_equal_brute_force(clusters, size):
    x, _ = clusters
    subset = np.random.default_rng(size).choice(len(x), size=size, replace=False)
    metrics = subset_metrics(x, subset)
    expected = brute_force_metrics(x, subset)
    got = (metrics.mean_nn_distance, metrics.coverage_mean_distance, metrics.coverage_max_distance)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_subset_metrics_of_a_single_pick(clusters):
    x, _ = clusters
    metrics = subset_metrics(x, np.array([3]))
    assert metrics.mean_nn_distance == 0.0
    assert metrics.coverage_mean_distance == pytest.approx(np.mean(1.0 - x.astype(np.float64) @ x[3]), abs=1e-4)


@pytest.mark.parametrize("size", [0, -1, 11])
def test_select_rejects_sizes_outside_one_to_n(size):
    x = unit(np.random.default_rng(2).normal(size=(10, 4)))
    with pytest.raises(ValueError, match=rf"size {size} must be between 1 and .*, 10"):
        select(x, size, "kcenter")


def test_select_rejects_unknown_strategies_naming_the_valid_ones():
    x = unit(np.random.default_rng(2).normal(size=(10, 4)))
    with pytest.raises(ValueError, match="coreset") as error:
        select(x, 3, "coreset")
    assert all(strategy in str(error.value) for strategy in ("kcenter", "typicality", "random"))
    assert set(STRATEGIES) == {"kcenter", "typicality", "random"}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_select_returns_distinct_images_in_range(clusters, strategy):
    x, _ = clusters
    picks = select(x, 25, strategy, seed=3)
    assert picks.shape == (25,) and len(set(picks.tolist())) == 25
    assert picks.min() >= 0 and picks.max() < len(x)


def test_kcenter_picks_distinct_images_among_identical_embeddings():
    x = unit(np.random.default_rng(4).normal(size=(5, 8)))
    doubled = np.concatenate([x, x])  # e.g. exact duplicates kept (curate.drop without exact_duplicates)
    picks = select(doubled, 6, "kcenter")
    assert len(set(picks.tolist())) == 6
