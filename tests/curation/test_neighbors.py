"""Neighbour search with faiss, against brute-force numpy on small data."""

from __future__ import annotations

import numpy as np
import pytest

from ssl_core.curation.neighbors import SearchSettings, build_index, import_faiss, pairs_above, search


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def clustered(num: int, dim: int, clusters: int, spread: float, seed: int) -> np.ndarray:
    """(num, dim) unit vectors scattered around ``clusters`` random directions."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    return unit(centres[rng.integers(clusters, size=num)] + spread * rng.normal(size=(num, dim)))


def brute_force_pairs(similarities: np.ndarray, ids: np.ndarray, threshold: float) -> dict[tuple[int, int], float]:
    """{(i, j), i < j: the higher score of its two directions} over the neighbour lists, by definition."""
    pairs: dict[tuple[int, int], float] = {}
    for row in range(len(ids)):
        for j, s in zip(ids[row].tolist(), similarities[row].tolist(), strict=True):
            if j < 0 or j == row or s < threshold:
                continue
            key = (min(row, j), max(row, j))
            pairs[key] = max(pairs.get(key, -np.inf), s)
    return pairs


def test_exact_index_matches_brute_force():
    x = clustered(300, 24, clusters=6, spread=0.5, seed=0)
    index = build_index(x, SearchSettings(chunk_size=64))  # several add chunks
    assert isinstance(index, import_faiss().IndexFlatIP) and index.ntotal == len(x)
    chunks = []
    similarities, ids = search(index, x, 8, chunk_size=70, on_chunk=chunks.append)
    assert chunks == [70, 70, 70, 70, 20]

    gram = x.astype(np.float64) @ x.T.astype(np.float64)  # (N, N)
    expected_ids = np.argsort(-gram, axis=1, kind="stable")[:, :8]
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(similarities, np.take_along_axis(gram, expected_ids, axis=1), atol=1e-5)
    assert np.all(np.diff(similarities, axis=1) <= 0)  # most similar first
    np.testing.assert_array_equal(ids[:, 0], np.arange(len(x)))  # each vector's nearest is itself


def test_search_clips_k_to_the_index_size():
    x = clustered(5, 8, clusters=2, spread=0.3, seed=1)
    similarities, ids = search(build_index(x), x, k=10)
    assert similarities.shape == ids.shape == (5, 5)
    assert np.all(ids >= 0)  # no -1 padding: every row ranks all 5 vectors
    np.testing.assert_array_equal(np.sort(ids, axis=1), np.tile(np.arange(5), (5, 1)))


def test_large_sets_use_ivf_and_still_find_planted_duplicates():
    faiss = import_faiss()
    rng = np.random.default_rng(2)
    x = clustered(2000, 32, clusters=20, spread=0.4, seed=2)
    # 40 planted near duplicates: a copy of a random vector with a little noise.
    originals = rng.choice(len(x) - 40, size=40, replace=False)
    x[-40:] = unit(x[originals] + 0.02 * rng.normal(size=(40, 32)))
    copies = np.arange(len(x) - 40, len(x))

    settings = SearchSettings(exact_up_to=500, nprobe=8)
    index = build_index(x, settings)
    ivf = faiss.extract_index_ivf(index)
    assert not isinstance(index, faiss.IndexFlatIP)
    assert ivf.nlist == int(4 * np.sqrt(len(x))) and ivf.nprobe == 8 and index.ntotal == len(x)

    similarities, ids = search(index, x, 5)
    first, second, _ = pairs_above(similarities, ids, threshold=0.95)
    found = set(zip(first.tolist(), second.tolist(), strict=True))
    planted = {(int(min(a, b)), int(max(a, b))) for a, b in zip(originals, copies, strict=True)}
    assert planted <= found
    # The quantized scores stay close to the exact cosine similarities.
    exact = np.einsum("nd,nkd->nk", x, x[np.maximum(ids, 0)])
    assert np.abs(similarities - exact)[ids >= 0].max() < 0.02


def test_pairs_above_equals_brute_force():
    x = clustered(120, 16, clusters=4, spread=0.6, seed=3)
    similarities, ids = search(build_index(x), x, 6)
    # Scores differing between the two directions, as the quantized index gives, and missing neighbours.
    similarities = similarities + np.random.default_rng(3).normal(scale=0.01, size=similarities.shape).astype(
        np.float32
    )
    ids[::7, -1] = -1
    threshold = float(np.median(similarities[:, 1:]))
    first, second, similarity = pairs_above(similarities, ids, threshold)

    expected = brute_force_pairs(similarities, ids, threshold)
    assert len(expected) > 50
    assert np.all(first < second)
    assert list(zip(first.tolist(), second.tolist(), strict=True)) == sorted(expected)  # once each, in order
    np.testing.assert_array_equal(similarity, np.array([expected[pair] for pair in sorted(expected)], np.float32))


def test_pairs_above_by_hand():
    ids = np.array([[0, 1, 2], [1, 0, -1], [2, 2, 0]])
    similarities = np.array([[1.0, 0.9, 0.5], [1.0, 0.95, 0.99], [1.0, 0.97, 0.5]], dtype=np.float32)
    first, second, similarity = pairs_above(similarities, ids, threshold=0.5)
    # (0, 1) seen from both ends keeps 0.95; -1 and self entries (even a repeated self) are dropped;
    # 0.5 reaches a threshold of 0.5.
    assert first.tolist() == [0, 0] and second.tolist() == [1, 2]
    assert similarity.tolist() == pytest.approx([0.95, 0.5])
    first, _, _ = pairs_above(similarities, ids, threshold=0.96)
    assert len(first) == 0
