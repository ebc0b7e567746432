"""Choosing which images to label, and measuring how well a subset represents the set.

Strategies, over L2-normalized embeddings (cosine distance = 1 - similarity):

- ``kcenter``: k-center greedy, the farthest-point traversal of Gonzalez 1985, as
  the core-set active-learning selection of Sener & Savarese 2018: each pick is the
  image farthest from everything picked so far, so the subset covers the space,
  rare corners included.
- ``typicality``: TypiClust (Hacohen et al. 2022, "Active learning on a budget"):
  k-means into as many clusters as images to pick, then from each cluster its most
  typical image, the one whose nearest neighbours are closest. Better than coverage
  for small budgets, where outliers waste labels.
- ``random``: the baseline every strategy must beat.

:func:`subset_metrics` gives LightlyOne's two views of a subset: how diverse it is
(mean distance from each picked image to its nearest other pick; higher is more
diverse) and how well it covers the whole set (mean and max distance from every
image to its nearest pick; lower is better).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ssl_core.curation.neighbors import import_faiss
from ssl_core.curation.settings import SELECTION_STRATEGIES

STRATEGIES = SELECTION_STRATEGIES


def select(embeddings: np.ndarray, size: int, strategy: str, seed: int = 0, neighbors: int = 20) -> np.ndarray:
    """Indices of ``size`` images chosen by ``strategy`` (one of :data:`STRATEGIES`), in pick order."""
    if not 1 <= size <= len(embeddings):
        raise ValueError(f"selection size {size} must be between 1 and the number of images, {len(embeddings)}.")
    if strategy == "kcenter":
        return kcenter_greedy(embeddings, size, seed)
    if strategy == "typicality":
        return typiclust(embeddings, size, seed, neighbors)
    if strategy == "random":
        return np.random.default_rng(seed).choice(len(embeddings), size=size, replace=False)
    raise ValueError(f"Unknown selection strategy {strategy!r}; choose from {STRATEGIES}.")


def kcenter_greedy(embeddings: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Farthest-point traversal from a seeded random start: O(N * size * D), no N x N matrix."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    picked = [int(np.random.default_rng(seed).integers(len(x)))]
    distance_to_picked = 1.0 - x @ x[picked[0]]  # (N,)
    distance_to_picked[picked[0]] = -np.inf  # never picked twice, even among identical images
    for _ in range(size - 1):
        farthest = int(np.argmax(distance_to_picked))
        picked.append(farthest)
        np.minimum(distance_to_picked, 1.0 - x @ x[farthest], out=distance_to_picked)
        distance_to_picked[farthest] = -np.inf
    return np.array(picked, dtype=np.int64)


def typiclust(embeddings: np.ndarray, size: int, seed: int = 0, neighbors: int = 20) -> np.ndarray:
    """TypiClust: per k-means cluster, the image with the highest typicality.

    k-means is scikit-learn's, seeded with k-means++ as in the paper's code (faiss's
    random-start k-means split large clusters and merged small ones in our tests).
    Typicality is the inverse mean distance to the image's ``neighbors`` nearest
    images of its own cluster, as in the paper; clusters are taken largest first.
    """
    from sklearn.cluster import KMeans

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    assignment = KMeans(n_clusters=size, init="k-means++", n_init=1, random_state=seed).fit_predict(x)
    picks = []
    for cluster in sorted(np.unique(assignment), key=lambda c: -int(np.sum(assignment == c))):
        members = np.flatnonzero(assignment == cluster)
        similarity = x[members] @ x[members].T  # clusters are ~N/size images: small
        k = min(neighbors, len(members) - 1)
        if k == 0:
            picks.append(int(members[0]))
            continue
        nearest = -np.sort(-similarity, axis=1)[:, 1 : k + 1]  # skip itself
        picks.append(int(members[np.argmax(nearest.mean(axis=1))]))
    # k-means may leave clusters empty: fill up with the farthest remaining images.
    if len(picks) < size:
        rest = np.setdiff1d(np.arange(len(x)), picks)
        distance = 1.0 - (x[rest] @ x[picks].T).max(axis=1)
        picks.extend(int(i) for i in rest[np.argsort(-distance)[: size - len(picks)]])
    return np.array(picks, dtype=np.int64)


@dataclass(frozen=True)
class SubsetMetrics:
    """LightlyOne-style subset metrics, in cosine distance (:data:`SUBSET_METRIC_MEANINGS` says how to read each)."""

    mean_nn_distance: float
    coverage_mean_distance: float
    coverage_max_distance: float


SUBSET_METRIC_MEANINGS = {
    "mean_nn_distance": "diversity: distance from each pick to its nearest other pick (higher is better)",
    "coverage_mean_distance": "coverage: mean distance from an image to its nearest pick (lower is better)",
    "coverage_max_distance": "coverage: distance of the worst-covered image (lower is better)",
}


def subset_metrics(embeddings: np.ndarray, subset: np.ndarray) -> SubsetMetrics:
    """Diversity and coverage of ``subset`` (indices) within ``embeddings``, with an exact faiss search."""
    faiss = import_faiss()
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x[subset])
    within, _ = index.search(x[subset], min(2, len(subset)))
    to_nearest, _ = index.search(x, 1)
    coverage = np.clip(1.0 - to_nearest[:, 0], 0.0, 2.0)
    return SubsetMetrics(
        mean_nn_distance=round(float(np.mean(1.0 - within[:, -1])), 4) if len(subset) > 1 else 0.0,
        coverage_mean_distance=round(float(coverage.mean()), 4),
        coverage_max_distance=round(float(coverage.max()), 4),
    )
