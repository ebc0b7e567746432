"""RankMe, alignment and uniformity against their papers' formulas, on random and on collapsed embeddings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssl_core.label_free import alignment, rankme, singular_values, uniformity


def naive_rankme(z: np.ndarray, eps: float = 1e-7) -> float:
    """Garrido et al. 2023, eq. 1, with numpy's SVD."""
    s = np.linalg.svd(z.astype(np.float64), compute_uv=False)
    p = s / np.sum(np.abs(s)) + eps
    return math.exp(-sum(pk * math.log(pk) for pk in p))


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def naive_alignment(a: np.ndarray, b: np.ndarray, alpha: float = 2.0) -> float:
    """Wang & Isola 2020: E ||f(x) - f(y)||_2^alpha over positive pairs, by a loop."""
    a, b = unit(a), unit(b)
    return float(np.mean([np.linalg.norm(a[i] - b[i]) ** alpha for i in range(len(a))]))


def naive_uniformity(x: np.ndarray, t: float = 2.0) -> float:
    """Wang & Isola 2020: log E exp(-t ||f(x) - f(y)||^2) over all distinct pairs, by a double loop."""
    x = unit(x)
    potentials = [math.exp(-t * float(np.sum((x[i] - x[j]) ** 2))) for i in range(len(x)) for j in range(i + 1, len(x))]
    return math.log(sum(potentials) / len(potentials))


@pytest.fixture
def random_embeddings() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(200, 32))


def test_rankme_matches_the_formula(random_embeddings: np.ndarray) -> None:
    assert rankme(torch.from_numpy(random_embeddings)) == pytest.approx(naive_rankme(random_embeddings), rel=1e-9)


def test_rankme_is_near_full_rank_for_random_and_near_one_for_collapsed(random_embeddings: np.ndarray) -> None:
    # Isotropic Gaussian rows use every direction: the effective rank is close to the dimension.
    assert rankme(torch.from_numpy(random_embeddings)) > 0.9 * 32
    # Every row the same vector (complete collapse): one nonzero singular value.
    collapsed = np.tile(random_embeddings[:1], (200, 1))
    assert rankme(torch.from_numpy(collapsed)) == pytest.approx(1.0, abs=1e-3)
    # Rows on a 3-d subspace: about 3.
    low_rank = random_embeddings[:, :3] @ np.random.default_rng(1).normal(size=(3, 32))
    assert 2.0 < rankme(torch.from_numpy(low_rank)) <= 3.0 + 1e-3


def test_alignment_matches_the_formula(random_embeddings: np.ndarray) -> None:
    other_view = random_embeddings + 0.3 * np.random.default_rng(2).normal(size=random_embeddings.shape)
    ours = alignment(torch.from_numpy(random_embeddings), torch.from_numpy(other_view))
    assert ours == pytest.approx(naive_alignment(random_embeddings, other_view), rel=1e-9)
    # Identical views are perfectly aligned; independent random views on the sphere are ~2 apart in squared distance.
    assert alignment(torch.from_numpy(random_embeddings), torch.from_numpy(random_embeddings)) == pytest.approx(0.0)
    independent = np.random.default_rng(3).normal(size=random_embeddings.shape)
    assert alignment(torch.from_numpy(random_embeddings), torch.from_numpy(independent)) == pytest.approx(2.0, abs=0.1)


def test_uniformity_matches_the_formula_and_ranks_collapse_last(random_embeddings: np.ndarray) -> None:
    x = random_embeddings[:60]
    assert uniformity(torch.from_numpy(x)) == pytest.approx(naive_uniformity(x), rel=1e-9)
    collapsed = np.tile(x[:1], (60, 1)) + 1e-9
    # A collapsed embedding has every pair at distance 0: log E exp(0) = 0, the worst value.
    assert uniformity(torch.from_numpy(collapsed)) == pytest.approx(0.0, abs=1e-6)
    # Spread over the sphere: much lower (random 32-d unit vectors are ~sqrt(2) apart: about -t * 2 = -4).
    assert uniformity(torch.from_numpy(x)) < -3.5


@pytest.mark.parametrize("shape", [(2000, 64), (64, 2000), (300, 300)])
def test_singular_values_from_the_gram_matrix_match_an_svd(shape: tuple[int, int]) -> None:
    """Tall (a kNN bank), wide and square, with a spread of scales: within 1e-8 of the largest, largest first."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    x = x * torch.logspace(0, -6, shape[1], dtype=torch.float64)  # columns from 1 down to 1e-6
    x = x.float().double()  # what an embedding holds: float32 values
    expected = torch.linalg.svdvals(x)
    ours = singular_values(x.float())
    assert ours.dtype == torch.float64 and ours.shape == expected.shape
    assert torch.all(ours[:-1] >= ours[1:])
    assert (ours - expected).abs().max() <= 1e-8 * expected[0]
