"""Label-free measures of an embedding: how much it spreads, and how it treats two views of an image.

- RankMe (Garrido et al. 2023, "RankMe: Assessing the downstream performance of
  pretrained self-supervised representations by their rank", ICML,
  arXiv:2210.02885): the effective rank of the embedding matrix, exp of the
  entropy of its normalized singular values. Near 1 for a collapsed embedding, up
  to the dimension for one that uses every direction; the paper shows it tracks
  downstream accuracy across SSL methods and hyperparameters.
- Alignment and uniformity (Wang & Isola 2020, "Understanding contrastive
  representation learning through alignment and uniformity on the hypersphere",
  ICML, arXiv:2005.10242), on L2-normalized embeddings: alignment is the mean
  squared distance between the two views of an image (lower is better); uniformity
  is the log of the mean Gaussian potential exp(-t ||x - y||^2) over all pairs of
  images (lower, i.e. more negative, is better).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def rankme(embeddings: torch.Tensor, eps: float = 1e-7) -> float:
    """Effective rank of (N, D) embeddings: exp(-sum p_k log p_k), p_k = s_k / ||s||_1 + eps (the paper's eq. 1)."""
    singular_values = torch.linalg.svdvals(embeddings.double())  # (min(N, D),)
    p = singular_values / singular_values.sum().clamp_min(1e-12) + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


@torch.no_grad()
def alignment(view_a: torch.Tensor, view_b: torch.Tensor, alpha: float = 2.0) -> float:
    """E ||f(x) - f(y)||^alpha over positive pairs (row i of each view), on L2-normalized (N, D) embeddings."""
    a, b = F.normalize(view_a.double(), dim=1), F.normalize(view_b.double(), dim=1)
    return float((a - b).norm(dim=1).pow(alpha).mean())


@torch.no_grad()
def uniformity(embeddings: torch.Tensor, t: float = 2.0) -> float:
    """log E exp(-t ||f(x) - f(y)||^2) over all pairs of distinct rows, on L2-normalized (N, D) embeddings."""
    x = F.normalize(embeddings.double(), dim=1)
    squared_distances = torch.pdist(x).pow(2)  # (N (N - 1) / 2,)
    return float(squared_distances.mul(-t).exp().mean().log())
