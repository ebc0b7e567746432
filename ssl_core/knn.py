"""Weighted k-nearest-neighbour classification of frozen embeddings.

The protocol of Wu et al., "Unsupervised Feature Learning via Non-Parametric
Instance Discrimination" (2018, https://arxiv.org/abs/1805.01978), as used by the
lightly benchmarks: embeddings are L2-normalized, each query takes its k most
cosine-similar bank entries, and each neighbour votes for its class with weight
exp(similarity / temperature). Defaults k=200, temperature=0.1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class KNNResult:
    """Accuracy of a kNN classifier and its per-class breakdown."""

    top1: float
    top5: float
    per_class_top1: list[float]
    num_queries: int


def knn_predict(
    queries: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Class scores of each query from its weighted k nearest bank entries.

    Letters: q = queries, n = bank size, d = embedding dim, c = classes.

    Args:
        queries: (q, d) embeddings; normalized here.
        bank: (n, d) embeddings; normalized here.
        bank_labels: (n,) integer labels in [0, num_classes).
        num_classes: c.
        k: neighbours per query; clipped to n.
        temperature: similarity temperature of the vote weights.
        chunk_size: queries per matrix product, to bound memory at chunk_size x n.

    Returns:
        (q, c) scores; argmax is the prediction.
    """
    if bank.shape[0] == 0:
        raise ValueError("The kNN bank is empty: the train split has no labeled images.")
    queries = F.normalize(queries.float(), dim=1)
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, bank.shape[0])
    scores = []
    for chunk in queries.split(chunk_size):
        similarity = chunk @ bank.T  # (q, n)
        top_sim, top_idx = similarity.topk(k, dim=1)  # (q, k)
        weights = (top_sim / temperature).exp()  # (q, k)
        one_hot = F.one_hot(bank_labels[top_idx], num_classes).float()  # (q, k, c)
        scores.append((one_hot * weights.unsqueeze(-1)).sum(dim=1))  # (q, c)
    return torch.cat(scores)


def knn_evaluate(
    train_embeddings: torch.Tensor,
    train_labels: torch.Tensor,
    test_embeddings: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
) -> KNNResult:
    """Top-1/top-5 accuracy of :func:`knn_predict` with the train split as the bank."""
    scores = knn_predict(test_embeddings, train_embeddings, train_labels, num_classes, k, temperature)
    ranked = scores.argsort(dim=1, descending=True)  # (q, c)
    hit1 = ranked[:, 0] == test_labels
    hit5 = (ranked[:, : min(5, num_classes)] == test_labels.unsqueeze(1)).any(dim=1)
    per_class = [
        hit1[test_labels == c].float().mean().item() if (test_labels == c).any() else float("nan")
        for c in range(num_classes)
    ]
    return KNNResult(
        top1=hit1.float().mean().item(),
        top5=hit5.float().mean().item(),
        per_class_top1=per_class,
        num_queries=int(test_labels.numel()),
    )
