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
  images (lower, i.e. more negative, is better). As in the paper's reference code,
  uniformity is the mean over the two views of each image.

The views are the same for every method (:func:`standard_views`: the SimCLR views of
the lightly CIFAR-10 benchmark), so scores of models trained by different methods
compare; RankMe is computed on the deterministic eval embeddings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from ssl_core.augment import Normalization, ViewConfig, view_transform
from ssl_core.embed import compute_embeddings
from ssl_core.precision import seed_everything


@dataclass(frozen=True)
class LabelFreeScores:
    """The label-free measures of one model on one dataset.

    Attributes:
        rankme: effective rank of the eval embeddings (higher is better, at most the dimension).
        alignment: mean squared distance between two views of an image (lower is better, in [0, 4]).
        uniformity: log mean Gaussian potential over pairs of images (lower is better, in [-4, 0]).
    """

    rankme: float
    alignment: float
    uniformity: float


def label_free_scores(embeddings: torch.Tensor, view_a: torch.Tensor, view_b: torch.Tensor) -> LabelFreeScores:
    """RankMe of (N, D) ``embeddings``; alignment and uniformity of the (P, D) views, row i of each one image."""
    return LabelFreeScores(
        rankme=rankme(embeddings),
        alignment=alignment(view_a, view_b),
        uniformity=(uniformity(view_a) + uniformity(view_b)) / 2,
    )


def standard_views(image_size: int, normalization: Normalization) -> Callable[[Image.Image], torch.Tensor]:
    """The views alignment is measured on: SimCLR's, as the lightly benchmark uses them, for every method."""
    return view_transform(ViewConfig(image_size=image_size), normalization)


def embed_two_views(
    model: nn.Module,
    views: Dataset,
    batch_size: int,
    num_workers: int,
    device: str | torch.device,
    precision: str,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independently drawn views of every image of ``views`` (a dataset with a random transform), embedded.

    Each pass is seeded (``seed``, then ``seed + 1``), so the views, and the scores, repeat exactly.

    Returns:
        (P, D) and (P, D) L2-normalized embeddings; row i of both is the same image.
    """
    passes = []
    for offset in (0, 1):
        seed_everything(seed + offset)
        passes.append(compute_embeddings(model, views, batch_size, num_workers, device, precision)[0])
    return passes[0], passes[1]


def sample_indices(size: int, count: int, seed: int) -> list[int]:
    """``count`` distinct indices of ``range(size)`` (all of them if fewer), drawn with ``seed``, sorted."""
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(size, generator=generator)[:count].tolist())


@torch.no_grad()
def singular_values(embeddings: torch.Tensor) -> torch.Tensor:
    """The (min(N, D),) singular values of (N, D) embeddings, largest first, in float64.

    Square roots of the eigenvalues of the smaller Gram matrix (D x D for a kNN bank of N >> D
    rows) rather than an SVD of the whole matrix, which costs several times more (the benchmarks
    compute RankMe after every epoch). Squaring costs precision: values under about 1e-8 of the
    largest are rounding noise, below the 1e-7 that RankMe adds to each normalized value anyway.
    """
    x = embeddings.double()
    gram = x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T  # (min(N, D), min(N, D))
    return torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().flip(0)  # eigvalsh: ascending


def effective_rank(singular: torch.Tensor, eps: float = 1e-7) -> float:
    """exp(-sum p_k log p_k) with p_k = s_k / ||s||_1 + eps: RankMe's eq. 1 on given singular values."""
    p = singular / singular.sum().clamp_min(1e-12) + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


def rankme(embeddings: torch.Tensor, eps: float = 1e-7) -> float:
    """Effective rank of (N, D) embeddings (the paper's eq. 1): near 1 when collapsed, at most min(N, D)."""
    return effective_rank(singular_values(embeddings), eps)


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
