"""NTXentLoss against SimCLR's eq. 1 written out loop by loop, and against lightly."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_core.losses import NTXentLoss


def reference_ntx_ent(z0: torch.Tensor, z1: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR eq. 1: mean over 2N anchors of -log(exp(sim(i, pos)/t) / sum_{k != i} exp(sim(i, k)/t))."""
    z = torch.cat([z0, z1]).double()
    n2 = z.shape[0]
    n = n2 // 2

    def sim(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(a @ b / (a.norm() * b.norm()))

    total = 0.0
    for i in range(n2):
        positive = (i + n) % n2
        numerator = math.exp(sim(z[i], z[positive]) / temperature)
        denominator = sum(math.exp(sim(z[i], z[k]) / temperature) for k in range(n2) if k != i)
        total += -math.log(numerator / denominator)
    return torch.tensor(total / n2)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_matches_paper_equation(temperature):
    generator = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(6, 8, generator=generator), torch.randn(6, 8, generator=generator)
    loss = NTXentLoss(temperature)(z0, z1)
    assert loss.item() == pytest.approx(reference_ntx_ent(z0, z1, temperature).item(), abs=1e-5)


def test_matches_lightly():
    lightly_loss = pytest.importorskip("lightly.loss")
    generator = torch.Generator().manual_seed(1)
    z0, z1 = torch.randn(16, 32, generator=generator), torch.randn(16, 32, generator=generator)
    expected = lightly_loss.NTXentLoss(temperature=0.5)(z0, z1)
    assert NTXentLoss(0.5)(z0, z1).item() == pytest.approx(expected.item(), abs=1e-5)


def test_symmetric_in_the_two_views():
    z0, z1 = torch.randn(8, 16), torch.randn(8, 16)
    loss = NTXentLoss(0.5)
    torch.testing.assert_close(loss(z0, z1), loss(z1, z0))


def test_invariant_to_input_scale():
    z0, z1 = torch.randn(8, 16), torch.randn(8, 16)
    loss = NTXentLoss(0.5)
    torch.testing.assert_close(loss(z0, z1), loss(3.0 * z0, 0.01 * z1))


def test_aligned_views_score_lower_than_random_ones():
    torch.manual_seed(2)
    z0 = torch.randn(8, 16)
    loss = NTXentLoss(0.5)
    assert loss(z0, z0.clone()) < loss(z0, torch.randn(8, 16))


def test_gradient_reaches_both_views():
    z0, z1 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    NTXentLoss(0.5)(z0, z1).backward()
    assert z0.grad.abs().sum() > 0 and z1.grad.abs().sum() > 0


@pytest.mark.parametrize("temperature", [0.0, -0.5])
def test_non_positive_temperature_raises(temperature):
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(temperature)
