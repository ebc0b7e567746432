"""Exact duplicate groups, star clustering of near duplicates, and leaks, against their definitions."""

from __future__ import annotations

import numpy as np

from ssl_core.curation.duplicates import (
    Leak,
    NearDuplicateGroup,
    exact_duplicate_groups,
    find_leaks,
    near_duplicate_groups,
)


def pairs(*edges: tuple[int, int, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    first, second, similarity = zip(*edges, strict=True)
    return np.array(first), np.array(second), np.array(similarity)


def star_clusters(priority, first, second, similarity, digests) -> list[NearDuplicateGroup]:
    """Aslam et al.'s star clustering, from its definition: the best image not yet grouped becomes a centre and
    takes every ungrouped image similar to it; groups of a single digest are then left out."""
    similar = {}
    for a, b, s in zip(first.tolist(), second.tolist(), similarity.tolist(), strict=True):
        similar[a, b] = similar[b, a] = s
    ungrouped = set(first.tolist()) | set(second.tolist())
    groups = []
    while ungrouped:
        centre = min(ungrouped, key=lambda i: (priority[i], i))
        members = sorted(j for j in ungrouped if (centre, j) in similar)
        ungrouped -= {centre, *members}
        if members and len({digests[i] for i in [centre, *members]}) > 1:
            groups.append(NearDuplicateGroup([centre, *members], round(min(similar[centre, j] for j in members), 4)))
    return sorted(groups, key=lambda group: group.indices[0])


def test_exact_duplicate_groups():
    digests = ["a", "b", "a", "c", "b", "a", "d"]
    assert exact_duplicate_groups(digests) == [[0, 2, 5], [1, 4]]  # singletons "c", "d" left out
    assert exact_duplicate_groups(["x", "y", "z"]) == []
    assert exact_duplicate_groups(["q", "p", "p", "q"]) == [[0, 3], [1, 2]]  # ordered by first index


def test_a_chain_is_not_one_group():
    # a=0 - b=1 - c=2, with no edge a-c.
    first, second, similarity = pairs((0, 1, 0.9), (1, 2, 0.95))
    digests = ["a", "b", "c"]
    # b first: the star centred on b holds both its neighbours.
    assert near_duplicate_groups(np.array([1, 0, 2]), first, second, similarity, digests) == [
        NearDuplicateGroup([1, 0, 2], 0.9)
    ]
    # a first: a takes only b, its direct neighbour; c's only neighbour is then taken, so c is left alone.
    assert near_duplicate_groups(np.array([0, 1, 2]), first, second, similarity, digests) == [
        NearDuplicateGroup([0, 1], 0.9)
    ]
    # c first: c takes b, then a has no ungrouped neighbour.
    assert near_duplicate_groups(np.array([2, 1, 0]), first, second, similarity, digests) == [
        NearDuplicateGroup([2, 1], 0.95)
    ]


def test_ties_in_priority_go_to_the_lower_index():
    first, second, similarity = pairs(
        (3, 5, 0.91234567),
    )
    assert near_duplicate_groups(np.zeros(6), first, second, similarity, list("abcdef")) == [
        NearDuplicateGroup([3, 5], 0.9123)
    ]


def test_groups_of_a_single_digest_are_left_out():
    first, second, similarity = pairs((0, 1, 1.0), (2, 3, 0.9), (2, 4, 0.88))
    digests = ["same", "same", "x", "x", "y"]
    # 0-1 are pixel-identical: an exact duplicate group, not a near one; 2-3-4 mixes two digests.
    assert near_duplicate_groups(np.arange(5), first, second, similarity, digests) == [
        NearDuplicateGroup([2, 3, 4], 0.88)
    ]


def test_star_clustering_equals_its_definition_on_random_graphs():
    rng = np.random.default_rng(0)
    for trial in range(30):
        num = 40
        first, second = rng.integers(num, size=(2, 60))
        keep = first < second
        first, second = np.unique(np.stack([first[keep], second[keep]]), axis=1)  # each pair once, i < j
        similarity = rng.uniform(0.85, 1.0, size=len(first))
        priority = rng.permutation(num) if trial % 2 else rng.integers(5, size=num)  # with ties on odd trials
        digests = [str(d) for d in rng.integers(30, size=num)]  # some images pixel-identical
        groups = near_duplicate_groups(priority, first, second, similarity, digests)
        assert groups == star_clusters(priority, first, second, similarity, digests)
        indices = [i for group in groups for i in group.indices]
        assert len(indices) == len(set(indices))  # every image in at most one group
        edges = set(zip(first.tolist(), second.tolist(), strict=True))
        for group in groups:  # a star: every member linked to its centre directly
            centre, *members = group.indices
            assert all((min(centre, m), max(centre, m)) in edges for m in members)


def test_find_leaks_threshold_and_order():
    train_indices = np.array([10, 11, 12, 13])
    test_indices = np.array([20, 21, 22, 23, 24, 25])
    best_similarity = np.array([0.9, 0.84999, 0.85, 0.97, 0.9, 0.99])
    best_train = np.array([2, 0, 3, 1, 0, -1])  # the last test image has no training neighbour
    leaks = find_leaks(train_indices, test_indices, best_similarity, best_train, threshold=0.85)
    assert leaks == [
        Leak(train=11, test=23, similarity=0.97),
        Leak(train=12, test=20, similarity=0.9),  # equal similarities: by test index
        Leak(train=10, test=24, similarity=0.9),
        Leak(train=13, test=22, similarity=0.85),  # the threshold itself is a leak
    ]
    assert find_leaks(train_indices, test_indices, best_similarity, best_train, threshold=0.995) == []
