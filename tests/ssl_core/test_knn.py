"""Weighted kNN against a per-query loop, plus toy cases whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_core.knn import knn_evaluate, knn_predict


def reference_knn(queries, bank, bank_labels, num_classes, k, temperature):
    """For each query: cosine similarities, sort, keep top k, add exp(sim / t) to each neighbour's class."""
    scores = torch.zeros(len(queries), num_classes, dtype=torch.float64)
    for i, query in enumerate(queries):
        sims = [
            (F.cosine_similarity(query, b, dim=0).item(), int(label))
            for b, label in zip(bank, bank_labels, strict=True)
        ]
        sims.sort(key=lambda pair: pair[0], reverse=True)
        for sim, label in sims[:k]:
            scores[i, label] += math.exp(sim / temperature)
    return scores


@pytest.mark.parametrize("k", [1, 5, 20])
def test_matches_per_query_loop(k):
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(7, 6, generator=generator)
    bank = torch.randn(30, 6, generator=generator)
    labels = torch.randint(0, 4, (30,), generator=generator)
    scores = knn_predict(queries, bank, labels, num_classes=4, k=k, temperature=0.1, chunk_size=3)
    torch.testing.assert_close(scores.double(), reference_knn(queries, bank, labels, 4, k, 0.1), rtol=1e-5, atol=1e-5)


def test_k_larger_than_bank_is_clipped():
    generator = torch.Generator().manual_seed(1)
    queries, bank = torch.randn(3, 4, generator=generator), torch.randn(5, 4, generator=generator)
    labels = torch.tensor([0, 1, 1, 2, 0])
    scores = knn_predict(queries, bank, labels, num_classes=3, k=200, temperature=0.5)
    torch.testing.assert_close(scores, knn_predict(queries, bank, labels, num_classes=3, k=5, temperature=0.5))
    torch.testing.assert_close(scores.double(), reference_knn(queries, bank, labels, 3, 5, 0.5), rtol=1e-5, atol=1e-5)


def test_empty_bank_raises():
    with pytest.raises(ValueError, match="empty"):
        knn_predict(torch.randn(2, 4), torch.empty(0, 4), torch.empty(0, dtype=torch.long), num_classes=2)


def test_separable_clusters_are_classified_perfectly():
    generator = torch.Generator().manual_seed(2)
    centers = torch.tensor([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])

    def sample(n):
        labels = torch.arange(n) % 2
        return centers[labels] + torch.randn(n, 3, generator=generator), labels

    train_x, train_y = sample(40)
    test_x, test_y = sample(20)
    result = knn_evaluate(train_x, train_y, test_x, test_y, num_classes=2, k=10)
    assert result.top1 == 1.0
    assert result.top5 == 1.0
    assert result.per_class_top1 == [1.0, 1.0]
    assert result.num_queries == 20


def test_per_class_top1_on_hand_made_example():
    # Bank: class 0 along x, class 1 along y, class 2 along z; k=1 picks the nearest axis.
    bank = torch.eye(3)
    bank_labels = torch.tensor([0, 1, 2])
    queries = torch.tensor(
        [
            [1.0, 0.1, 0.0],  # -> 0, true 0: hit
            [0.9, 0.0, 0.1],  # -> 0, true 0: hit
            [0.1, 1.0, 0.0],  # -> 1, true 1: hit
            [1.0, 0.2, 0.0],  # -> 0, true 1: miss
        ]
    )
    labels = torch.tensor([0, 0, 1, 1])
    result = knn_evaluate(bank, bank_labels, queries, labels, num_classes=3, k=1)
    assert result.top1 == pytest.approx(0.75)
    assert result.per_class_top1[:2] == [1.0, 0.5]
    assert math.isnan(result.per_class_top1[2])  # no test image of class 2
    assert result.top5 == 1.0  # with 3 classes every label is in the top 5
