"""Outliers: images far from everything else in embedding space.

An image's outlier score is its mean cosine distance to its k nearest other images
(the k-NN distance score of Ramaswamy et al. 2000, "Efficient algorithms for mining
outliers from large data sets"). It is flagged when the score lies ``z`` robust
standard deviations above the median (median absolute deviation, scaled by 1.4826
to match a normal distribution's standard deviation), so the threshold adapts to
how spread out a given embedder's space is.
"""

from __future__ import annotations

import numpy as np


def outlier_scores(similarities: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(N,) mean cosine distance to the nearest other images, from a self-search of (N, k) neighbours."""
    rows = np.arange(len(ids))[:, None]
    others = (ids >= 0) & (ids != rows)
    distance = np.where(others, 1.0 - similarities, 0.0).sum(axis=1)
    return (distance / np.maximum(others.sum(axis=1), 1)).astype(np.float32)


def robust_z(scores: np.ndarray) -> np.ndarray:
    """(score - median) / (1.4826 * MAD); zero spread gives z = 0 everywhere."""
    median = float(np.median(scores))
    spread = 1.4826 * float(np.median(np.abs(scores - median)))
    return (scores - median) / spread if spread > 0 else np.zeros_like(scores)


def flag_outliers(scores: np.ndarray, z: float) -> np.ndarray:
    """Indices whose robust z-score is at least ``z``, worst first."""
    flagged = np.flatnonzero(robust_z(scores) >= z)
    return flagged[np.argsort(-scores[flagged], kind="stable")]
