"""Exact duplicates, near-duplicate groups and train/test leakage.

Exact duplicates share a hash of their decoded pixels (:func:`ssl_core.curation.scan.pixel_digest`),
so a PNG and a lossless WebP of the same picture are one group, while two JPEG
encodings of it are not: those are near duplicates. Near duplicates are grouped
by star clustering (Aslam et al. 2004, "The star clustering algorithm"): the best
image not yet grouped becomes a centre, and every ungrouped image similar to it
joins it. Each member is then a near duplicate of its group's centre. Connected
components, the other common choice, chain: at 32 px a few borderline pairs join
unrelated pictures into one large group (measured in docs/curation.md).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def exact_duplicate_groups(digests: Sequence[str]) -> list[list[int]]:
    """Indices of images with identical pixels, groups of two or more, ordered by their first index."""
    by_digest: dict[str, list[int]] = defaultdict(list)
    for index, digest in enumerate(digests):
        by_digest[digest].append(index)
    return sorted((group for group in by_digest.values() if len(group) > 1), key=lambda group: group[0])


@dataclass(frozen=True)
class NearDuplicateGroup:
    """A centre (first) and the images similar to it; ``min_similarity`` is the least similar member's."""

    indices: list[int]
    min_similarity: float


def near_duplicate_groups(
    priority: np.ndarray, first: np.ndarray, second: np.ndarray, similarity: np.ndarray, digests: Sequence[str]
) -> list[NearDuplicateGroup]:
    """Star clusters of the similar pairs, leaving out groups whose images are all pixel-identical.

    Args:
        priority: (N,) rank of each image as a centre, lowest first (e.g. largest, then sharpest).
        first, second, similarity: the pairs, as from :func:`ssl_core.curation.neighbors.pairs_above`.
        digests: pixel digest per image; a group of one digest is an exact duplicate group only.
    """
    neighbours: dict[int, dict[int, float]] = defaultdict(dict)
    for a, b, s in zip(first.tolist(), second.tolist(), similarity.tolist(), strict=True):
        neighbours[a][b] = neighbours[b][a] = s
    grouped: set[int] = set()
    groups = []
    for centre in sorted(neighbours, key=lambda i: (priority[i], i)):
        if centre in grouped:
            continue
        members = {b: s for b, s in neighbours[centre].items() if b not in grouped}
        grouped.add(centre)
        grouped.update(members)
        if members and len({digests[i] for i in (centre, *members)}) > 1:
            groups.append(NearDuplicateGroup([centre, *sorted(members)], round(min(members.values()), 4)))
    return sorted(groups, key=lambda group: group.indices[0])


@dataclass(frozen=True)
class Leak:
    """A test image and its most similar training image."""

    train: int
    test: int
    similarity: float


def find_leaks(
    train_indices: np.ndarray,
    test_indices: np.ndarray,
    best_similarity: np.ndarray,
    best_train: np.ndarray,
    threshold: float,
) -> list[Leak]:
    """Test images whose most similar training image is at least ``threshold`` similar, most similar first.

    Args:
        train_indices, test_indices: dataset indices of the two splits.
        best_similarity, best_train: per test image, its nearest training image's
            similarity and position in ``train_indices`` (a k=1 search of the test
            embeddings in an index of the training ones).
    """
    leaks = [
        Leak(int(train_indices[position]), int(test_index), round(float(similarity), 4))
        for test_index, similarity, position in zip(test_indices, best_similarity, best_train, strict=True)
        if position >= 0 and similarity >= threshold
    ]
    return sorted(leaks, key=lambda leak: (-leak.similarity, leak.test))
