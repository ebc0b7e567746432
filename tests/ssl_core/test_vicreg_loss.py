"""VICRegLoss against Algorithm 1 written out and lightly, and its invariants."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_core.losses import VICRegLoss

# These tensors are too small to gain from a second thread (see the fixture).
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def lightly_loss():
    """lightly.loss, imported once: the import, not the comparison, takes about a second."""
    return pytest.importorskip("lightly.loss")


def reference_vicreg(
    z0: torch.Tensor, z1: torch.Tensor, lambda_: float, mu: float, nu: float, gamma: float = 1.0, eps: float = 1e-4
) -> float:
    """Algorithm 1 element by element, in float64 Python arithmetic.

    One change from the printed pseudo-code: the two branches' variance terms are averaged,
    not summed, as in the official code and lightly (see VICRegLoss's docstring).
    """
    n, d = z0.shape
    a, b = z0.tolist(), z1.tolist()
    invariance = sum((a[k][j] - b[k][j]) ** 2 for k in range(n) for j in range(d)) / (n * d)

    def variance_and_covariance(z: list[list[float]]) -> tuple[float, float]:
        means = [sum(z[k][j] for k in range(n)) / n for j in range(d)]
        centered = [[z[k][j] - means[j] for j in range(d)] for k in range(n)]
        hinge = 0.0
        off_diagonal = 0.0
        for i in range(d):
            for j in range(d):
                c_ij = sum(centered[k][i] * centered[k][j] for k in range(n)) / (n - 1)
                if i == j:
                    hinge += max(0.0, gamma - math.sqrt(c_ij + eps))
                else:
                    off_diagonal += c_ij**2
        return hinge / d, off_diagonal / d

    v0, c0 = variance_and_covariance(a)
    v1, c1 = variance_and_covariance(b)
    return lambda_ * invariance + mu * (v0 + v1) / 2 + nu * (c0 + c1)


def whitened(n: int, d: int, seed: int) -> torch.Tensor:
    """(n, d) data with zero mean and identity biased covariance: decorrelated columns, each
    of unbiased variance n / (n - 1) > 1, so every std is above gamma = 1."""
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(dim=0)
    covariance = z.T @ z / n  # (d, d)
    return (z @ torch.linalg.inv(torch.linalg.cholesky(covariance)).T).float()


def views(n: int, d: int, seed: int, scale: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """Two correlated (n, d) views; scale < 1 puts many stds under gamma = 1, so the hinge is active."""
    generator = torch.Generator().manual_seed(seed)
    z0 = scale * torch.randn(n, d, generator=generator)
    return z0, z0 + 0.5 * scale * torch.randn(n, d, generator=generator)


@pytest.mark.parametrize(
    "lambda_, mu, nu, gamma, eps",
    [(25.0, 25.0, 1.0, 1.0, 1e-4), (1.0, 0.0, 0.0, 1.0, 1e-4), (0.0, 1.0, 0.0, 2.0, 1e-2), (0.0, 0.0, 1.0, 1.0, 1e-4)],
)
def test_loss_matches_paper_algorithm(lambda_, mu, nu, gamma, eps):
    z0, z1 = views(8, 6, seed=0)
    loss = VICRegLoss(lambda_, mu, nu, gamma, eps)(z0, z1)
    assert loss.item() == pytest.approx(reference_vicreg(z0, z1, lambda_, mu, nu, gamma, eps), abs=1e-5)


@pytest.mark.parametrize("n, d", [(2, 3), (16, 32), (64, 128)])
def test_loss_matches_lightly_with_default_weights(lightly_loss, n, d):
    z0, z1 = views(n, d, seed=1)
    expected = lightly_loss.VICRegLoss(gather_distributed=False)(z0, z1)
    assert VICRegLoss()(z0, z1).item() == pytest.approx(expected.item(), abs=1e-5)


@pytest.mark.parametrize("lambda_, mu, nu, eps", [(5.0, 10.0, 0.5, 1e-3), (0.0, 1.0, 3.0, 1e-4), (2.0, 0.0, 0.0, 1e-2)])
def test_loss_matches_lightly_with_other_weights(lightly_loss, lambda_, mu, nu, eps):
    z0, z1 = views(32, 16, seed=2, scale=0.5)
    expected = lightly_loss.VICRegLoss(lambda_param=lambda_, mu_param=mu, nu_param=nu, eps=eps)(z0, z1)
    loss = VICRegLoss(lambda_=lambda_, mu=mu, nu=nu, eps=eps)(z0, z1)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)


def test_loss_is_symmetric_in_the_two_views():
    z0, z1 = views(16, 12, seed=3)
    loss = VICRegLoss()
    torch.testing.assert_close(loss(z0, z1), loss(z1, z0))


@pytest.mark.parametrize("term", ["invariance", "variance", "covariance"])
def test_identical_whitened_embeddings_zero_every_term(term):
    """z0 = z1 with decorrelated columns of std > 1: no disagreement, no hinge, no covariance."""
    weights = {"invariance": (1.0, 0.0, 0.0), "variance": (0.0, 1.0, 0.0), "covariance": (0.0, 0.0, 1.0)}[term]
    z = whitened(64, 8, seed=4)
    assert VICRegLoss(*weights)(z, z.clone()).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("mu, gamma, eps", [(25.0, 1.0, 1e-4), (2.0, 3.0, 1e-2)])
def test_collapsed_embeddings_give_mu_times_gamma_minus_sqrt_eps(mu, gamma, eps):
    """All rows equal: variance 0, so each hinge is gamma - sqrt(eps); no covariance, no disagreement."""
    z = torch.randn(1, 8).expand(16, 8)
    loss = VICRegLoss(mu=mu, gamma=gamma, eps=eps)(z, z.clone())
    assert loss.item() == pytest.approx(mu * (gamma - math.sqrt(eps)), abs=1e-5)


def test_variance_terms_of_the_two_branches_are_averaged():
    """One branch collapsed, the other whitened: half the collapsed hinge, as in the official code."""
    collapsed = torch.zeros(64, 8)
    loss = VICRegLoss(lambda_=0.0, mu=1.0, nu=0.0)(collapsed, whitened(64, 8, seed=5))
    assert loss.item() == pytest.approx((1.0 - math.sqrt(1e-4)) / 2, abs=1e-6)


def test_redundant_dimensions_give_the_closed_form_covariance():
    """Column 1 copies column 0 of whitened data: C_01 = C_10 = n / (n - 1), every other C_ij = 0."""
    n, d = 64, 4
    z = whitened(n, d, seed=6)
    z[:, 1] = z[:, 0]
    per_branch = 2 * (n / (n - 1)) ** 2 / d
    assert VICRegLoss(lambda_=0.0, mu=0.0, nu=1.0)(z, z.clone()).item() == pytest.approx(2 * per_branch, abs=1e-4)


def test_loss_ignores_bf16_autocast():
    z0, z1 = views(32, 64, seed=7)
    expected = VICRegLoss()(z0, z1)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = VICRegLoss()(z0, z1)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected)


def test_gradient_reaches_both_views():
    z0, z1 = (z.requires_grad_() for z in views(8, 6, seed=8))
    VICRegLoss()(z0, z1).backward()
    assert z0.grad.abs().sum() > 0 and z1.grad.abs().sum() > 0


def test_eps_keeps_the_gradient_finite_at_collapse():
    """sqrt'(0) is infinite: without eps a collapsed batch would give NaN gradients."""
    z = torch.ones(8, 6, requires_grad=True)
    VICRegLoss()(z, z.detach() + 1.0).backward()
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lambda_": -1.0}, "lambda_ must be >= 0, got -1.0"),
        ({"mu": -0.5}, "mu must be >= 0, got -0.5"),
        ({"nu": -2.0}, "nu must be >= 0, got -2.0"),
        ({"gamma": 0.0}, "gamma must be > 0, got 0.0"),
        ({"eps": 0.0}, "eps must be > 0, got 0.0"),
        ({"eps": -1e-4}, "eps must be > 0, got -0.0001"),
    ],
)
def test_constructor_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VICRegLoss(**kwargs)


def test_forward_rejects_mismatched_shapes_and_single_rows():
    with pytest.raises(ValueError, match=r"same \(n, d\) shape, got \(4, 8\) and \(4, 9\)"):
        VICRegLoss()(torch.randn(4, 8), torch.randn(4, 9))
    with pytest.raises(ValueError, match="n >= 2 rows, got n=1"):
        VICRegLoss()(torch.randn(1, 8), torch.randn(1, 8))
