"""Outlier scores and robust z-scores, against brute force and their definitions."""

from __future__ import annotations

import numpy as np
import pytest

from ssl_core.curation.neighbors import build_index, search
from ssl_core.curation.outliers import flag_outliers, outlier_scores, robust_z
from tasks.params import OutlierParams

K = OutlierParams().neighbors
Z = OutlierParams().z  # the curate stage's defaults


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def clusters_and_a_stray(seed: int = 0) -> np.ndarray:
    """(301, 32): 300 unit vectors in 6 clusters, then one random direction far from them all."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(6, 32)))
    x = unit(centres[rng.integers(6, size=300)] + 0.1 * rng.normal(size=(300, 32)))
    return np.concatenate([x, unit(rng.normal(size=(1, 32)))])


def brute_force_scores(x: np.ndarray, k: int) -> np.ndarray:
    """Mean cosine distance from each vector to its k nearest other vectors."""
    distance = 1.0 - x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(distance, np.inf)  # itself is not a neighbour
    return np.sort(distance, axis=1)[:, :k].mean(axis=1)


def test_scores_equal_brute_force():
    x = clusters_and_a_stray()
    similarities, ids = search(build_index(x), x, K + 1)  # +1: itself, as the curate stage searches
    np.testing.assert_allclose(outlier_scores(similarities, ids), brute_force_scores(x, K), atol=1e-5)


def test_missing_neighbours_and_self_are_not_counted():
    ids = np.array([[0, 1, 2], [1, -1, -1], [0, 1, 2]])  # row 1: only itself; row 2: itself not first
    similarities = np.array([[1.0, 0.8, 0.6], [1.0, 0.0, 0.0], [0.5, 0.7, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(outlier_scores(similarities, ids), [0.3, 0.0, 0.4], atol=1e-6)


def test_a_stray_point_is_flagged_and_cluster_members_are_not():
    x = clusters_and_a_stray()
    similarities, ids = search(build_index(x), x, K + 1)
    scores = outlier_scores(similarities, ids)
    assert flag_outliers(scores, Z).tolist() == [len(x) - 1]


def test_robust_z_by_definition():
    scores = np.random.default_rng(1).gamma(2.0, size=101)
    median = np.median(scores)
    mad = np.median(np.abs(scores - median))
    np.testing.assert_allclose(robust_z(scores), (scores - median) / (1.4826 * mad))
    assert robust_z(scores)[np.argsort(scores)[50]] == 0.0  # the median scores 0


@pytest.mark.parametrize("scores", [np.full(10, 0.3), np.array([0.2, 0.2, 0.2, 0.2, 0.9])])
def test_robust_z_of_no_spread_is_zero(scores):
    # The second: a MAD of 0 (most scores equal) gives no scale either.
    z = robust_z(scores)
    np.testing.assert_array_equal(z, np.zeros_like(scores))
    assert len(flag_outliers(scores, 0.5)) == 0


def test_flag_outliers_worst_first():
    scores = np.array([0.1, 0.9, 0.12, 0.11, 0.6, 0.1, 0.13, 0.75, 0.09])
    z = robust_z(scores)
    flagged = flag_outliers(scores, 3.0)
    assert set(flagged.tolist()) == set(np.flatnonzero(z >= 3.0).tolist()) == {1, 4, 7}
    assert flagged.tolist() == [1, 7, 4]  # highest score first
